"""A hyperparameter sweep: Ray Tune trials over the training loop, then its results.

Layout of a sweep folder (local or ``s3://``)::

    sweep.json            the space, the base configs and the settings (what --resume reuses)
    tune/                 Tune's experiment state and per-trial results
    trials/<trial_id>/    each trial's session: model.json, trainer.json, checkpoints/, images,
                          and with PBT handover/ (checkpoints other trials clone)
    results.csv|.parquet  one row per trial;  metric_per_trial.png
    best/                 the best trial's model.json and trainer.json, for `auralflow train`
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

import ray
import ray.tune
from ray.air.execution._internal.actor_manager import RayActorManager
from ray.exceptions import OutOfMemoryError, RayActorError
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from auralflow_dist import storage
from auralflow_dist.config import (
    ModelConfig,
    SweepConfig,
    TrainerConfig,
    from_dict,
    replace,
    require,
    to_json,
)
from auralflow_dist.data.manifest import load_manifest
from auralflow_dist.errors import AuralflowError, ConfigError
from auralflow_dist.runtime import connect
from auralflow_dist.session import MODEL_JSON, read_model_config, read_trainer_config
from auralflow_dist.tune import results
from auralflow_dist.tune.space import Space, parse_space, read_space
from auralflow_dist.tune.trial import KEEP_HANDOVERS, TrialDriver, TrialSetup

SWEEP_JSON = "sweep.json"
EXPERIMENT = "tune"
# The trial driver only starts and watches a Train run; Tune needs a non-zero request.
DRIVER_CPUS = 0.01


@dataclass
class SweepSummary:
    sweep_url: str
    trials: int
    ok: int
    stopped: int
    errored: int
    metric: str
    best_trial: str | None
    best_value: float | None
    best_url: str | None
    results_url: str

    def text(self) -> str:
        counts = (
            f"{self.trials} trial(s): {self.ok} ok, {self.stopped} stopped early, "
            f"{self.errored} errored"
        )
        best = (
            f"best {self.best_trial} ({self.metric} {self.best_value:+.3f}), its configs in "
            f"{self.best_url}"
            if self.best_trial
            else "no best trial"
        )
        return f"{counts}; {best}; table in {self.results_url}"


@dataclass
class _Plan:
    """What a sweep runs with; stored as ``sweep.json`` so ``--resume`` needs nothing else."""

    sweep: SweepConfig
    space: Space
    model: ModelConfig
    trainer: TrainerConfig

    def to_json(self) -> str:
        settings = {
            k: v
            for k, v in dataclasses.asdict(self.sweep).items()
            if k not in ("resume", "address")
        }
        return (
            json.dumps(
                {
                    "sweep": settings,
                    "space": self.space.to_dict(),
                    "model": json.loads(to_json(self.model)),
                    "trainer": json.loads(to_json(self.trainer)),
                },
                indent=2,
            )
            + "\n"
        )

    @classmethod
    def read(cls, url: str, given: SweepConfig) -> _Plan:
        data = json.loads(storage.read_bytes(url))
        sweep = from_dict(SweepConfig, {**data["sweep"], "resume": True, "address": given.address})
        return cls(
            sweep,
            parse_space(data["space"], url),
            from_dict(ModelConfig, data["model"]),
            from_dict(TrainerConfig, data["trainer"]),
        )


def run_sweep(sweep: SweepConfig) -> SweepSummary:
    """Run (or with ``resume`` continue) the sweep; errors only if no trial finished at all.

    Everything that can be wrong with the flags, the space or the base configs fails before Ray
    starts or anything is written.
    """
    sweep = dataclasses.replace(
        sweep,
        sweep_url=_absolute(sweep.sweep_url),
        dataset_url=_absolute(sweep.dataset_url),
        space=sweep.space and _absolute(sweep.space),
        base=sweep.base and _absolute(sweep.base),
    ).validate()
    fs, root = storage.to_pyarrow_fs(sweep.sweep_url)
    experiment = posixpath.join(root, EXPERIMENT)
    restorable = ray.tune.Tuner.can_restore(experiment, storage_filesystem=fs)
    if restorable and not sweep.resume:
        raise AuralflowError(
            f"{storage.join(sweep.sweep_url, EXPERIMENT)}: a sweep already ran "
            "here; pass --resume to continue it, or choose another folder"
        )
    stored = storage.join(sweep.sweep_url, SWEEP_JSON)
    resuming = sweep.resume and storage.exists(stored)
    if resuming:
        print(f"[tune] using the space and settings stored in {stored}", flush=True)
    plan = _Plan.read(stored, sweep) if resuming else _new_plan(sweep)
    table = load_manifest(plan.sweep.dataset_url)
    connect(sweep.address, sweep.reserved_cpus)
    if not resuming:
        _concurrency(plan)  # may refuse the plan (a PBT population too big): before any write
        storage.write_bytes(stored, plan.to_json().encode())
    setup = TrialSetup(
        sweep_url=plan.sweep.sweep_url,
        table=table,
        space=plan.space,
        model=plan.model,
        trainer=plan.trainer,
        handover=plan.sweep.scheduler == "pbt",
        s3=storage.current_settings(),
    )
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(TrialDriver, setup=setup), {"cpu": DRIVER_CPUS}
    )
    if restorable:
        print(f"[tune] resuming {sweep.sweep_url}: finished trials are kept", flush=True)
        tuner = ray.tune.Tuner.restore(
            experiment,
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
            storage_filesystem=fs,
        )
    else:
        tuner = _tuner(plan, trainable, fs, root)
    _fail_oom_killed_trials_alone()
    return _summarise(plan, tuner.fit())


def _fail_oom_killed_trials_alone() -> None:
    """Have Tune take a trial process killed by Ray's memory monitor as that trial's death.

    Tune 2.60 handles a trial actor's death (RayActorError) and a failed step (RayTaskError)
    but re-raises any other error, so the monitor's OutOfMemoryError ended the whole sweep with
    no results.csv. Passed on as the actor's death, it fails that trial only (its reason kept).
    """
    original = RayActorManager._actor_task_failed
    if getattr(original, "passes_oom_on", False):
        return

    def failed(self: RayActorManager, tracked_actor_task: Any, exception: Exception) -> None:
        if isinstance(exception, OutOfMemoryError):
            exception = RayActorError(error_msg=str(exception))
        original(self, tracked_actor_task=tracked_actor_task, exception=exception)

    failed.passes_oom_on = True  # type: ignore[attr-defined]
    RayActorManager._actor_task_failed = failed  # type: ignore[method-assign]


def _absolute(url: str) -> str:
    """Local paths made absolute: trials run in other working directories."""
    return url if "://" in url or "::" in url else os.path.abspath(url)


def _new_plan(sweep: SweepConfig) -> _Plan:
    if sweep.space is None:
        raise ConfigError("space", "a new sweep needs a search space file (.json or .yaml)")
    space = read_space(sweep.space)
    model, trainer = _base_configs(sweep)
    space.check(model, trainer)
    if sweep.scheduler == "pbt":
        space.mutations()  # raises where nothing can mutate
    space.param_space(sweep.search)  # raises where the search cannot take the space
    require(
        sweep.grace_period <= trainer.optim.max_epochs,
        "grace_period",
        f"must not exceed the trials' {trainer.optim.max_epochs} epochs",
    )
    return _Plan(sweep, space, model, trainer)


def _base_configs(sweep: SweepConfig) -> tuple[ModelConfig, TrainerConfig]:
    """``--base`` (or the sweep folder's own) model.json/trainer.json, else the defaults; the
    sweep's flags fix the per-trial cluster shape and epochs."""
    source = sweep.base or sweep.sweep_url
    given = sweep.base is not None or storage.exists(storage.join(source, MODEL_JSON))
    model = read_model_config(source) if given else ModelConfig()
    if sweep.model_type:
        model = replace(model, model_type=sweep.model_type)
    trainer = read_trainer_config(source) or TrainerConfig()
    trainer = replace(
        trainer,
        workers_min=sweep.workers_per_trial,
        workers_max=sweep.workers_per_trial,
        gpus_per_worker=sweep.gpus_per_worker,
        max_epochs=sweep.max_epochs or trainer.optim.max_epochs,
        storage=None,
    )
    return model, trainer


def _trial_name(trial: Any) -> str:
    return trial.trial_id


def _tuner(plan: _Plan, trainable: Any, fs: Any, root: str) -> ray.tune.Tuner:
    s = plan.sweep
    # Tune sees only the drivers' tiny requests, so the search itself must hold trials back.
    limit = _concurrency(plan)
    print(
        f"[tune] up to {limit} trial(s) at once, {s.workers_per_trial} worker(s) each", flush=True
    )
    if s.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch  # imports optuna: only when asked

        search: Any = ConcurrencyLimiter(OptunaSearch(seed=s.seed), max_concurrent=limit)
    else:
        search = BasicVariantGenerator(max_concurrent=limit, random_state=s.seed)
    tune_config = ray.tune.TuneConfig(
        metric=s.metric,
        mode=s.mode,
        search_alg=search,
        scheduler=_scheduler(plan),
        num_samples=s.num_samples,
        reuse_actors=False,  # a trial's cleanup ends its Train run; reuse would skip it
        trial_name_creator=_trial_name,
        trial_dirname_creator=_trial_name,
    )
    run_config = ray.tune.RunConfig(
        name=EXPERIMENT,
        storage_path=root,
        storage_filesystem=fs,
        failure_config=ray.tune.FailureConfig(max_failures=0),
        # Only PBT saves trials, each save naming a handover copy, of which the trial keeps
        # as many (Tune's default would also save every trial at its end: a useless copy).
        checkpoint_config=ray.tune.CheckpointConfig(
            num_to_keep=KEEP_HANDOVERS, checkpoint_at_end=False
        ),
        verbose=1,
    )
    return ray.tune.Tuner(
        trainable,
        param_space=plan.space.param_space(s.search),
        tune_config=tune_config,
        run_config=run_config,
    )


def _scheduler(plan: _Plan) -> Any:
    s = plan.sweep
    if s.scheduler == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            max_t=plan.trainer.optim.max_epochs,
            grace_period=s.grace_period,
            reduction_factor=2,
        )
    if s.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr="epoch",
            perturbation_interval=s.perturbation_interval,
            hyperparam_mutations=plan.space.mutations(),
        )
    return FIFOScheduler()


def _concurrency(plan: _Plan) -> int:
    """``--max-concurrent``, else as many trials as the cluster has room for.

    PBT compares a population training side by side: a trial waiting for a free slot would
    never be compared, so the whole population must fit at once.
    """
    s, trainer = plan.sweep, plan.trainer
    fits = s.max_concurrent
    if not fits:
        need = {
            "CPU": s.workers_per_trial * trainer.cluster.cpus_per_worker + trainer.data.decode_cpus
        }
        if s.gpus_per_worker > 0:
            need["GPU"] = s.workers_per_trial * s.gpus_per_worker
        have = ray.cluster_resources()
        fits = max(1, min(int(have.get(k, 0) // v) for k, v in need.items()))
    if s.scheduler == "pbt" and s.num_samples > fits:
        raise ConfigError(
            "num_samples",
            f"pbt trains its whole population at once, and "
            f"{fits} trial(s) of {s.workers_per_trial} worker(s) fit "
            "(--max-concurrent): lower --num-samples or --workers-per-trial",
        )
    return fits


def _summarise(plan: _Plan, grid: ray.tune.ResultGrid) -> SweepSummary:
    s = plan.sweep
    found = results.outcomes(grid, s.metric, s.mode, plan.trainer.optim.max_epochs)
    best = results.best_outcome(found, s.mode)
    best_url = None
    if best is not None:
        model, trainer = plan.space.configs(best.config, plan.model, plan.trainer)
        best_url = results.export_best(s.sweep_url, model, trainer)
    csv_url = results.write_results(
        s.sweep_url, found, plan.space, s.metric, s.mode, best.trial_id if best else None
    )
    count = {status: sum(o.status == status for o in found) for status in results.STATUSES}
    summary = SweepSummary(
        sweep_url=s.sweep_url,
        trials=len(found),
        ok=count["ok"],
        stopped=count["stopped"],
        errored=count["errored"],
        metric=s.metric,
        best_trial=best.trial_id if best else None,
        best_value=best.best if best else None,
        best_url=best_url,
        results_url=csv_url,
    )
    if best is None:
        first = next((o for o in found if o.error), None)
        reason = f" (e.g. {first.trial_id}: {first.error})" if first else ""
        raise AuralflowError(
            f"no trial of the sweep finished{reason}; see {csv_url} and the "
            f"trials' folders under {storage.join(s.sweep_url, 'trials')}"
        )
    return summary
