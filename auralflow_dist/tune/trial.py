"""One Tune trial: a driver that runs a ``TorchTrainer`` and hands its epochs to Tune.

The driver is a class trainable because its life has edges that matter: each ``step`` returns
one epoch relayed from the Train run (a Train callback runs in the Train controller, another
process, so a queue carries the reports); ``cleanup`` aborts the Train run when Tune stops or
pauses the trial early, so the run's workers and placement group go with it instead of holding
their CPUs and GPUs; and PBT's ``save``/``restore`` hand a Train checkpoint from one trial to
another. A handed-over checkpoint is a copy inside the trial's session (``handover/``), so the
Train run's own checkpoint retention cannot delete it under a trial that starts from it.

Without PBT a trial has one Train run, ``run``: a resumed sweep starts it again under that name
and Ray Train continues it from its latest checkpoint, as `auralflow train --resume` does. With
PBT every start is a new run (``run_001``, ...) from the handed-over checkpoint (``init_from``).
"""

from __future__ import annotations

import posixpath
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray
import ray.tune
from ray.train import Checkpoint, Result, UserCallback
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.util import remove_placement_group
from ray.util.queue import Empty, Queue

from auralflow_dist import storage
from auralflow_dist.config import ModelConfig, TrainerConfig
from auralflow_dist.errors import AuralflowError
from auralflow_dist.session import write_model_config, write_trainer_config
from auralflow_dist.train.trainer import run_training
from auralflow_dist.tune.space import Space

RUN = "run"
HANDOVER = "handover"
KEEP_HANDOVERS = 3  # PBT clones a trial's last save: older copies are never read again
STOP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its sampled values; shipped once via the object store."""

    sweep_url: str
    table: pa.Table
    space: Space
    model: ModelConfig
    trainer: TrainerConfig
    handover: bool
    s3: storage.S3Settings


def trial_session(sweep_url: str, trial_id: str) -> str:
    return storage.join(sweep_url, "trials", trial_id)


class _Relay(UserCallback):
    """Runs in the Train controller: passes rank 0's metrics and the controller itself (to
    abort the run by) to the trial, never blocking the controller."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None
    ) -> None:
        self._queue.put_nowait((dict(metrics[0]), ray.get_runtime_context().current_actor))


class _FreeGroupOnFailedShutdown(WorkerGroupCallback):
    """Runs in the Train controller: frees the run's placement group when its shutdown fails.

    Ray Train 2.60 removes the group only after every shutdown hook succeeded, and Torch's hook
    lets through the OutOfMemoryError of a worker that Ray's memory monitor killed (it catches
    only a plain actor death). The group, owned by the sweep's driver, then kept its CPUs for the
    rest of the sweep, and the next trial's decoding tasks waited for a CPU forever. Removing it
    also ends the group's remaining workers.
    """

    def __init__(self) -> None:
        self._group: Any = None

    def after_worker_group_start(self, worker_group: Any) -> None:
        self._group = worker_group.get_worker_group_state().placement_group_handle.placement_group

    @contextmanager
    def on_worker_group_shutdown(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            if self._group is not None:
                remove_placement_group(self._group)
            raise


class _TrainRun:
    """A Train run fitting in a background thread, its reports arriving in order."""

    def __init__(
        self,
        session: str,
        name: str,
        setup: TrialSetup,
        model: ModelConfig,
        trainer: TrainerConfig,
        init_from: str | None,
    ) -> None:
        self.url = storage.join(session, "checkpoints", name)
        self._queue = Queue(actor_options={"num_cpus": 0})
        self._controller: Any = None
        self._result: Result | None = None
        self._error: BaseException | None = None

        def fit() -> None:
            try:
                self._result = run_training(
                    session,
                    name,
                    setup.table,
                    model,
                    trainer,
                    callbacks=[_Relay(self._queue), _FreeGroupOnFailedShutdown()],
                    init_from=init_from,
                )
            except BaseException as err:  # raised in the trial's thread by next_metrics
                self._error = err

        self._thread = threading.Thread(target=fit, name=f"train-{name}", daemon=True)
        self._thread.start()

    def next_metrics(self) -> dict[str, Any] | None:
        """The next epoch's metrics; None once the run has ended; its error, if it failed."""
        while True:
            alive = self._thread.is_alive()
            try:
                metrics, self._controller = self._queue.get(timeout=0.5)
                return metrics
            except Empty:
                if alive:
                    continue
            # The thread had ended before that empty read: nothing more can come.
            if self._error is not None:
                raise self._error
            return None

    @property
    def final_metrics(self) -> dict[str, Any]:
        """What the run last reported, also when it had reported it before a restart."""
        return dict(self._result.metrics or {}) if self._result else {}

    def latest_checkpoint(self) -> str:
        """The newest checkpoint of the run (never deleted by Train's retention)."""
        found = [
            u
            for u in storage.listdir(self.url)
            if posixpath.basename(u).startswith("checkpoint_epoch_")
        ]
        if not found:
            raise AuralflowError(f"{self.url}: no checkpoint to hand over yet")
        return max(found)

    def stop(self, abort: bool) -> None:
        """Wait for the run to end; ``abort`` ends it first (workers, placement group)."""
        if abort and self._thread.is_alive():
            if self._controller is None:
                # Not reported yet, so no handle: the trial's process takes the run along, and
                # Ray Train's placement-group cleaner frees its resources.
                self._queue.shutdown()
                return
            self._controller.abort.remote()
        self._thread.join(STOP_TIMEOUT_S)
        self._queue.shutdown()


class TrialDriver(ray.tune.Trainable):
    """Tune's trainable for a sweep trial; bound to a `TrialSetup` by ``tune.with_parameters``."""

    def setup(self, config: dict[str, Any], setup: TrialSetup) -> None:
        storage.configure(setup.s3)
        self._setup = setup
        self._session = trial_session(setup.sweep_url, self.trial_id)
        # An invalid combination of sampled values (a window above num_fft) fails here.
        self._model, self._trainer = setup.space.configs(config, setup.model, setup.trainer)
        write_model_config(self._session, self._model, overwrite=True)
        write_trainer_config(self._session, self._trainer)
        self._init_from: str | None = None
        self._run: _TrainRun | None = None
        self._finished = False

    def step(self) -> dict[str, Any]:
        if self._run is None:  # started here, after a restore has set init_from
            name = self._next_run() if self._setup.handover else RUN
            self._run = _TrainRun(
                self._session, name, self._setup, self._model, self._trainer, self._init_from
            )
        metrics = self._run.next_metrics()
        ended = metrics is None
        if metrics is None:
            # The run had finished before a restart: the trial ends with its last report.
            metrics = self._run.final_metrics
            if not metrics:
                raise AuralflowError(f"{self._run.url}: the Train run ended without a report")
        if metrics.get("diverged"):
            raise AuralflowError(
                f"the loss became NaN/inf in epoch {metrics.get('epoch')} "
                "(try a lower trainer.lr or trainer.clip_grad)"
            )
        self._finished = (
            ended
            or metrics.get("epoch", 0) >= self._trainer.optim.max_epochs
            or bool(metrics.get("stopped_early"))
        )
        return {**metrics, "done": self._finished}

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, str]:
        """PBT's copy of this trial's state: the run's newest checkpoint, copied in storage."""
        assert self._run is not None, "Tune saves a trial only after a result"
        root = storage.join(self._session, HANDOVER)
        # Named by time, not iteration: a trial that cloned another took over its iteration count.
        target = storage.join(root, f"save_{time.time_ns():020d}")
        _copy_tree(self._run.latest_checkpoint(), target)
        for old in storage.listdir(root)[:-KEEP_HANDOVERS]:
            storage.remove(old, missing_ok=True)
        return {"train_checkpoint": target}

    def load_checkpoint(self, checkpoint: dict[str, str]) -> None:
        self._init_from = checkpoint["train_checkpoint"]

    def cleanup(self) -> None:
        if self._run is not None:
            self._run.stop(abort=not self._finished)

    def _next_run(self) -> str:
        """A Train run name not used yet in this trial's session."""
        root = storage.join(self._session, "checkpoints")
        taken = (
            {posixpath.basename(u) for u in storage.listdir(root)}
            if storage.exists(root)
            else set()
        )
        number = 1
        while f"{RUN}_{number:03d}" in taken:
            number += 1
        return f"{RUN}_{number:03d}"


def _copy_tree(source: str, target: str) -> None:
    """Copy a checkpoint folder file by file within its storage (server-side on S3)."""
    fs, _ = storage.filesystem(source)
    storage.makedirs(target)
    for url in storage.find_files(source):
        destination = storage.join(target, url[len(source.rstrip("/")) + 1 :])
        try:
            fs.copy(storage.filesystem(url)[1], storage.filesystem(destination)[1])
        except OSError as err:
            raise AuralflowError(storage.redact(f"{url}: copy to {target} failed ({err})")) from err
