"""``train --targets``: one model per target, every target's Ray Train run side by side.

Each target trains in ``SESSION/<target>/`` with the usual session layout (its ``model.json`` is
the session's, with the target changed), so that ``SESSION`` is then a separator bundle for
``separate`` and ``test``. The runs are Ray tasks that each drive one ``TorchTrainer`` (the way
Ray documents concurrent Train runs, and what Tune does per trial): they share the cluster's
resources, and a run whose workers do not fit yet waits for the others. A target that fails is
reported in one line and the others go on; ``--resume`` continues each target where it stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ray

from auralflow_dist import storage
from auralflow_dist.config import ModelConfig, TrainerConfig
from auralflow_dist.data.manifest import MIXTURE, load_manifest
from auralflow_dist.errors import AuralflowError, ConfigError
from auralflow_dist.session import write_model_config
from auralflow_dist.train import memory
from auralflow_dist.train.trainer import TrainResult, train

ALL = "all"


@dataclass
class TargetOutcome:
    """How one target's training ended: its result, or the one-line reason it failed."""

    target: str
    session: str
    result: TrainResult | None = None
    error: str = ""


def resolve_targets(spec: str, dataset_url: str) -> list[str]:
    """``all`` (every stem the manifest names) or comma-separated names the manifest has."""
    table = load_manifest(dataset_url)
    stems = sorted(
        {s for names in table.column("stem_names").to_pylist() for s in names} - {MIXTURE}
    )
    if spec.strip() == ALL:
        if not stems:
            raise ConfigError("targets", f"{dataset_url} names no stems")
        return stems
    targets = [t.strip() for t in spec.split(",") if t.strip()]
    if not targets:
        raise ConfigError("targets", "give comma-separated stem names, or 'all'")
    if len(set(targets)) != len(targets):
        raise ConfigError("targets", f"names a stem twice: {spec!r}")
    unknown = [t for t in targets if t not in stems]
    if unknown:
        raise ConfigError(
            "targets", f"{', '.join(unknown)} not among the dataset's stems ({', '.join(stems)})"
        )
    return targets


@ray.remote(num_cpus=0)
def _train_target(
    session: str,
    dataset_url: str,
    model_config: ModelConfig,
    trainer: TrainerConfig,
    resume: bool,
    s3: storage.S3Settings,
    init_weights: str | None,
) -> TrainResult:
    storage.configure(s3)
    return train(
        session, dataset_url, model_config, trainer, resume=resume, init_weights=init_weights
    )


def train_targets(
    session: str,
    dataset_url: str,
    model_config: ModelConfig,
    trainer: TrainerConfig,
    targets: Sequence[str],
    resume: bool = False,
    echo: Callable[[str], None] = print,
    init_weights: str | None = None,
) -> list[TargetOutcome]:
    """Train one model per target into ``session/<target>/``, all at once; see the module doc."""
    _check_memory_together(model_config, trainer, len(targets))
    session, dataset_url = storage.absolute(session), storage.absolute(dataset_url)
    outcomes = {t: TargetOutcome(t, storage.join(session, t)) for t in targets}
    running = {}
    for target, outcome in outcomes.items():
        config = dataclasses.replace(model_config, target=target).validate()
        try:
            write_model_config(outcome.session, config)  # a different one there is an error
        except AuralflowError as err:
            outcome.error = str(err)
            echo(f"[train {target}] failed: {outcome.error}")
            continue
        ref = _train_target.remote(
            outcome.session,
            dataset_url,
            config,
            trainer,
            resume,
            storage.current_settings(),
            init_weights,
        )
        running[ref] = target
    if len(targets) > 1:
        echo(f"[train] {len(targets)} targets side by side: {', '.join(targets)}")
    while running:
        (ref,), _ = ray.wait(list(running), num_returns=1)
        outcome = outcomes[running.pop(ref)]
        try:
            outcome.result = ray.get(ref)
            echo(f"[train {outcome.target}] done: {outcome.result.summary()}")
        except Exception as err:  # one target's failure must not stop the others
            outcome.error = _one_line(err)
            echo(f"[train {outcome.target}] failed: {outcome.error}")
    return [outcomes[t] for t in targets]


def _check_memory_together(model_config: ModelConfig, trainer: TrainerConfig, runs: int) -> None:
    """Each run checks that its own workers fit; side by side they share the node. Four CPU
    workers of the seeds' default model at batch 8 (6 GB each) filled a 24 GB machine, and Ray
    killed and retried them without end; refused here in a line instead."""
    if runs < 2:
        return
    cluster = dataclasses.replace(trainer.cluster, workers_max=runs * trainer.cluster.workers_max)
    try:
        memory.check(model_config, dataclasses.replace(trainer, cluster=cluster))
    except ConfigError as err:
        raise ConfigError(
            "targets",
            f"{runs} targets train side by side, so {err.reason}; or train fewer "
            "--targets at a time",
        ) from None


def _one_line(err: BaseException) -> str:
    """The failure's own message: a task's error wraps it in Ray's account of the task."""
    cause = getattr(err, "cause", None) or err
    if isinstance(cause, AuralflowError):
        return str(cause).splitlines()[0]
    text = [line for line in str(cause).splitlines() if line.strip()]
    return storage.redact((text[-1] if text else type(cause).__name__)[:500])


def summary_table(outcomes: Sequence[TargetOutcome]) -> str:
    """One row per target: epochs, best epoch, last validation SI-SDR, or the error."""
    rows = [("target", "status", "epochs", "best", "val SI-SDR", "session")]
    for o in outcomes:
        if o.result is None:
            rows.append((o.target, "failed", "", "", "", o.error))
            continue
        si_sdr = o.result.metrics.get("val_si_sdr", float("nan"))
        rows.append(
            (
                o.target,
                "ok",
                str(o.result.epochs),
                str(o.result.best_epoch),
                f"{si_sdr:+.2f} dB",
                storage.mask_url(o.session),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    )
