"""Build and run the Ray Train ``TorchTrainer`` for a session folder.

Checkpoints go to ``<session>/checkpoints/<run>/``; a resumed run reuses ``<run>`` (Ray Train V2
resumes a run started again under the same name), a fresh run gets a new one, so an old run's
checkpoints are never overwritten or deleted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import ray
import ray.train
from ray.train.torch import TorchTrainer

from auralflow_dist import allocator, observability, runtime, storage
from auralflow_dist.config import ModelConfig, TrainerConfig, to_dict
from auralflow_dist.data import pipeline
from auralflow_dist.data.manifest import load_manifest
from auralflow_dist.errors import AuralflowError, ConfigError
from auralflow_dist.models.registry import build_network
from auralflow_dist.session import (
    BEST,
    WEIGHTS,
    bundle_dirs,
    load_tensors,
    read_model_config,
    write_trainer_config,
)
from auralflow_dist.train import memory
from auralflow_dist.train.loop import STATUS_FILE, train_loop_per_worker

RUN_FILE = "train_run.json"


@dataclass
class TrainResult:
    session: str
    run: str
    epochs: int
    best_epoch: int
    best_val_loss: float
    metrics: dict[str, Any]
    checkpoint: str | None
    trained: int | None = None  # epochs this call trained (a resume may find none left)

    def summary(self) -> str:
        m = self.metrics
        minutes = f"{m.get('train_minutes', 0.0):.1f} min"
        if self.trained == 0:
            done = "nothing left to train: " + (
                f"the --max-minutes budget is spent ({minutes} over {self.epochs} epoch(s)); "
                "raise --max-minutes to train on"
                if m.get("out_of_time")
                else f"all {self.epochs} epoch(s) of --max-epochs are done; raise it to train on"
            )
        else:
            done = (
                f"trained {self.epochs} epoch(s) in {minutes}"
                f"{' (the --max-minutes budget)' if m.get('out_of_time') else ''}"
            )
        return (
            f"{done}; best epoch {self.best_epoch} "
            f"(val loss {self.best_val_loss:.4f}); last val SI-SDR "
            f"{m.get('val_si_sdr', float('nan')):+.2f} dB vs mixture "
            f"{m.get('val_si_sdr_mixture', float('nan')):+.2f} dB; "
            f"best model in {storage.join(self.session, BEST)}"
        )


def _run_name(session: str, resume: bool) -> str:
    url = storage.join(session, RUN_FILE)
    if resume and storage.exists(url):
        return json.loads(storage.read_bytes(url))["run"]
    name = time.strftime("run_%Y%m%d_%H%M%S")
    storage.write_bytes(url, json.dumps({"run": name}).encode())
    return name


def make_run_config(session: str, run: str, trainer: TrainerConfig) -> ray.train.RunConfig:
    fs, path = storage.to_pyarrow_fs(
        storage.join(trainer.cluster.storage or session, "checkpoints")
    )
    return ray.train.RunConfig(
        name=run,
        # Our own per-epoch line says what matters; Ray Train's per-report INFO lines drown it.
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        storage_path=path,
        storage_filesystem=fs,
        failure_config=ray.train.FailureConfig(max_failures=trainer.cluster.max_failures),
        # Train patches print() in its workers to log as well as print: every line came twice.
        worker_runtime_env=_merged(
            allocator.worker_runtime_env(), {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}
        ),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=trainer.cluster.keep_checkpoints,
            checkpoint_score_attribute="val_loss",
            checkpoint_score_order="min",
        ),
    )


def _merged(*envs: dict[str, Any]) -> dict[str, Any]:
    """Runtime envs' ``env_vars`` merged into one runtime env."""
    return {"env_vars": {k: v for env in envs for k, v in env["env_vars"].items()}}


def _scaling(trainer: TrainerConfig) -> ray.train.ScalingConfig:
    cluster = trainer.cluster
    workers: int | tuple[int, int] = (
        cluster.workers_max
        if cluster.workers_min == cluster.workers_max
        else (cluster.workers_min, cluster.workers_max)
    )
    resources = {"CPU": cluster.cpus_per_worker}
    if cluster.gpus_per_worker > 0:
        resources["GPU"] = cluster.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=workers, use_gpu=cluster.gpus_per_worker > 0, resources_per_worker=resources
    )


def _data_config() -> ray.train.DataConfig:
    """Validation whole on every worker; the training chunks split, in order.

    Ray Train replaces a dataset's execution options with these, so the pipeline's
    ``preserve_order`` (what makes a run repeatable) must be given again here.
    """
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return ray.train.DataConfig(datasets_to_split=["train"], execution_options=options)


class EpochMetricsExporter:
    """Mirrors each finished epoch into the driver's Prometheus gauges.

    Ray Train reports to its controller, not to this process, so the driver follows the
    session's ``history.csv`` (rank 0 rewrites it every epoch) on a daemon thread.
    """

    def __init__(self, session: str, pushgateway: str | None, interval: float = 5.0) -> None:
        self.session, self.pushgateway, self.interval = session, pushgateway, interval
        self._stop = threading.Event()
        self._seen = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EpochMetricsExporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        url = storage.join(self.session, "history.csv")
        try:
            rows = list(csv.DictReader(io.StringIO(storage.read_bytes(url).decode())))
        except (AuralflowError, OSError):
            return
        if len(rows) <= self._seen:
            return
        self._seen = len(rows)
        numbers = {k: float(v) for k, v in rows[-1].items() if _is_number(v)}
        observability.record_epoch(storage.mask_url(self.session), numbers)
        if self.pushgateway:
            observability.push(self.pushgateway, job="auralflow-train")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def train(
    session: str,
    dataset_url: str,
    model_config: ModelConfig,
    trainer: TrainerConfig,
    resume: bool = False,
    metrics_port: int | None = None,
    pushgateway: str | None = None,
    init_weights: str | None = None,
) -> TrainResult:
    """Train ``model_config`` on ``dataset_url`` (a dataset root or a manifest) into ``session``.

    With ``metrics_port`` the driver serves the per-epoch metrics on ``/metrics``; with
    ``pushgateway`` it pushes them there after every epoch. ``init_weights`` (a model, session
    or bundle folder: `init_weights_dir`) fine-tunes: a run with no checkpoint of its own yet
    starts from its weights, with a fresh optimizer, at epoch 1.
    """
    data, workers = trainer.data, trainer.cluster.workers_max
    per_epoch = data.max_samples // workers
    if data.batch_size > per_epoch:
        raise ConfigError(
            "batch_size",
            f"{data.batch_size} is larger than the {per_epoch} "
            f"chunks each of {workers} worker(s) gets per epoch "
            f"(--max-samples {data.max_samples}): no batch would be full",
        )
    # Before any Ray work: a worker that cannot fit is refused in a line, not killed in minutes.
    peak = memory.check(model_config, trainer)
    init_weights = init_weights_dir(init_weights, model_config) if init_weights else None
    table = load_manifest(dataset_url)
    write_trainer_config(session, trainer)
    run = _run_name(session, resume)
    status_url = storage.join(session, STATUS_FILE)
    if storage.exists(status_url):
        storage.remove(status_url)
    if metrics_port is not None:
        observability.serve(metrics_port)
    if metrics_port is not None or pushgateway:
        with EpochMetricsExporter(session, pushgateway):
            result = run_training(
                session, run, table, model_config, trainer, peak=peak, init_weights=init_weights
            )
    else:
        result = run_training(
            session, run, table, model_config, trainer, peak=peak, init_weights=init_weights
        )
    status = json.loads(storage.read_bytes(status_url)) if storage.exists(status_url) else {}
    metrics = dict(status.get("metrics") or result.metrics or {})
    if status.get("state") == "diverged":
        raise AuralflowError(
            f"training stopped at epoch {status['epoch']}: the loss became NaN/inf "
            f"(NaN/inf samples in the data, or a learning rate too high: try a lower --lr or "
            f"--clip-grad); the last good checkpoint is intact in "
            f"{storage.join(session, 'checkpoints', run)}"
        )
    return TrainResult(
        session=session,
        run=run,
        epochs=int(metrics.get("epoch", 0)),
        best_epoch=int(metrics.get("best_epoch", 0)),
        best_val_loss=float(metrics.get("best_val_loss", float("nan"))),
        metrics=metrics,
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        trained=status.get("trained"),
    )


def init_weights_dir(url: str, model_config: ModelConfig) -> str:
    """The model folder under ``url`` to fine-tune ``model_config`` from, checked to fit.

    ``url`` is a model or session (any target: Open-Unmix fine-tunes one stem's model into
    another), or a bundle, whose member of the same target is taken.
    """
    dirs = bundle_dirs(url)
    if len(dirs) > 1:
        same = [d for d in dirs if read_model_config(d).target == model_config.target]
        if not same:
            raise ConfigError("init_from", f"{url} holds no {model_config.target} model")
        dirs = same
    source = dirs[0]
    network = build_network(model_config)
    try:
        network.load_state_dict(load_tensors(source, WEIGHTS), strict=True)
    except RuntimeError as err:
        raise ConfigError(
            "init_from",
            f"the weights in {source} do not fit this session's model.json (another network "
            f"or size: {str(err).splitlines()[0][:200]})",
        ) from None
    return source


def run_training(
    session: str,
    run: str,
    table: pa.Table,
    model_config: ModelConfig,
    trainer: TrainerConfig,
    callbacks: Sequence[Any] = (),
    init_from: str | None = None,
    peak: memory.MemoryEstimate | None = None,
    init_weights: str | None = None,
) -> ray.train.Result:
    """Fit one ``TorchTrainer`` run; shared by ``train`` and by every Tune trial.

    ``init_from`` is a checkpoint directory URL to start from when the run has none of its own
    yet (PBT hands a better trial's checkpoint over this way); ``init_weights``, a model folder
    whose weights alone start such a run (`train`'s fine-tuning); ``peak``, the memory estimate
    for the start line.
    """
    session = storage.absolute(session)
    init_from = storage.absolute(init_from) if init_from else None
    runtime.quiet_data_context()
    clock_name = f"auralflow-epoch-{hashlib.sha1(f'{session}/{run}'.encode()).hexdigest()[:16]}"
    clock = pipeline.get_or_create_epoch_clock(clock_name)
    datasets = {
        "train": pipeline.build_train_dataset(table, model_config, trainer, clock_name),
        "val": pipeline.build_val_dataset(table, model_config, trainer),
    }
    loop_config = {
        "model": asdict(model_config),
        "trainer": to_dict(trainer),
        "session": session,
        "clock": clock_name,
        "init_from": init_from,
        "init_weights": storage.absolute(init_weights) if init_weights else None,
        "memory": str(peak) if peak else None,
    }
    run_config = make_run_config(session, run, trainer)
    run_config.callbacks = list(callbacks)
    torch_trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=_scaling(trainer),
        run_config=run_config,
        datasets=datasets,
        dataset_config=_data_config(),
    )
    try:
        return torch_trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise AuralflowError(f"training failed: {_root_cause(err)}") from None
    finally:
        ray.kill(clock)


def _root_cause(err: BaseException) -> str:
    """One line: Ray's OOM-kill paragraph summarised, else the error's last line."""
    oom = memory.describe_oom(str(err))
    if oom is not None:
        return oom
    text = str(err).strip().splitlines()
    tail = [line for line in text if line.strip()][-1:] or [type(err).__name__]
    return tail[0][:500]
