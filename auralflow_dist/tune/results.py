"""What a sweep leaves behind: the table of trials, the metric plot and the best configs.

``results.csv``/``.parquet`` hold one row per trial (errors included, so a crashed trial is a
row with its reason, not a silence), ``metric_per_trial.png`` the metric over epochs, and
``best/`` the winning trial's ``model.json`` and ``trainer.json`` for `auralflow train`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
from ray.tune import ExperimentAnalysis, ResultGrid

from auralflow_dist import storage, tables
from auralflow_dist.config import ModelConfig, TrainerConfig
from auralflow_dist.session import BEST, write_model_config, write_trainer_config
from auralflow_dist.train.memory import describe_oom
from auralflow_dist.tune.space import Space
from auralflow_dist.visualize import figure_png

RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
PLOT = "metric_per_trial.png"
STATUSES = ("ok", "stopped", "errored")
_OWN_ERROR = re.compile(r"auralflow_dist\.errors\.\w+: ")
# Where Ray's account of a dead worker turns into generic advice (a paragraph of it).
_RAY_ADVICE = re.compile(r"\s*(Some common causes include|Refer to the documentation)\b.*$")


@dataclass
class TrialOutcome:
    """One trial as the table shows it; ``history`` is ``(epoch, metric)`` per report."""

    trial_id: str
    status: str
    config: dict[str, Any]
    epochs: int = 0
    final: float | None = None
    best: float | None = None
    error: str | None = None
    history: list[tuple[int, float]] = field(default_factory=list)


def error_line(err: BaseException) -> str:
    """The reason a trial failed, in one line: the trial's own exception, not Ray's wrapping.

    Our own errors lose their class names: their message is the whole story. Ray's paragraph
    on an OOM kill becomes what was killed and what to lower; its advice on a dead worker goes.
    """
    cause = getattr(err, "cause", None) or err
    oom = describe_oom(str(cause))
    if oom is not None:
        return oom
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    line = lines[-1] if lines else type(cause).__name__
    return _RAY_ADVICE.sub("", _OWN_ERROR.sub("", line))[:500]


def outcomes(grid: ResultGrid, metric: str, mode: str, max_epochs: int) -> list[TrialOutcome]:
    """Every trial of ``grid``: ok (trained to its end), stopped (by the scheduler) or errored."""
    # A trial that failed before its first result has no config in its Result: Tune's
    # experiment state has every trial's (for PBT, the latest).
    configs = ExperimentAnalysis(
        grid.experiment_path, storage_filesystem=grid.filesystem
    ).get_all_configs()
    found = []
    for result in grid:
        trial_id = result.path.rstrip("/").rsplit("/", 1)[-1]
        frame = result.metrics_dataframe
        history = []
        if frame is not None and metric in frame and "epoch" in frame:
            rows = frame[["epoch", metric]].dropna()
            # A trial restarted from its checkpoint reports some epochs again: the last counts.
            by_epoch = {int(e): float(v) for e, v in rows.itertuples(index=False)}
            history = sorted(by_epoch.items())
        config = configs.get(trial_id) or result.config or {}
        outcome = TrialOutcome(trial_id, "ok", dict(config), history=history)
        last = result.metrics or {}
        if history:
            values = [v for _, v in history]
            outcome.epochs = history[-1][0]
            outcome.final = values[-1]
            outcome.best = max(values) if mode == "max" else min(values)
        if result.error is not None:
            outcome.status, outcome.error = "errored", error_line(result.error)
        elif outcome.epochs < max_epochs and not last.get("stopped_early"):
            outcome.status = "stopped"
        found.append(outcome)
    return found


def best_outcome(found: Sequence[TrialOutcome], mode: str) -> TrialOutcome | None:
    """The trial with the best metric at any epoch, errored trials aside."""
    scored = [
        o for o in found if o.status != "errored" and o.best is not None and math.isfinite(o.best)
    ]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda o: o.best)


def table(
    found: Sequence[TrialOutcome], space: Space, metric: str, mode: str
) -> list[dict[str, Any]]:
    """One row per trial, best first, errored last; swept values as ``section.field`` columns."""
    sign = -1 if mode == "max" else 1

    def order(o: TrialOutcome) -> tuple:
        return (o.status == "errored", o.best is None, sign * (o.best or 0.0), o.trial_id)

    return [
        {
            "trial_id": o.trial_id,
            "status": o.status,
            "epochs": int(o.epochs),
            f"final_{metric}": _number(o.final),
            f"best_{metric}": _number(o.best),
            **space.flat(o.config),
            "error": o.error,
        }
        for o in sorted(found, key=order)
    ]


def _number(value: float | None) -> float | None:
    return None if value is None else float(value)


def plot(found: Sequence[TrialOutcome], metric: str, best: str | None) -> bytes:
    """The metric over epochs, one line per trial; the best one drawn thick."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    drawn = [o for o in found if o.history]
    for o in drawn:
        epochs, values = zip(*o.history, strict=True)
        thick = o.trial_id == best
        ax.plot(
            epochs,
            values,
            "o-",
            linewidth=2.5 if thick else 1.0,
            markersize=3,
            alpha=1.0 if thick else 0.7,
            label=f"{o.trial_id} ({o.status})",
        )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if 0 < len(drawn) <= 20:
        ax.legend(fontsize=7)
    ax.set_title(f"{metric} per trial")
    return figure_png(fig)


def write_results(
    sweep_url: str,
    found: Sequence[TrialOutcome],
    space: Space,
    metric: str,
    mode: str,
    best: str | None,
) -> str:
    """Write the table (CSV and Parquet) and the plot; returns the CSV's URL."""
    csv_url = storage.join(sweep_url, RESULTS_CSV)
    tables.write_rows(
        csv_url,
        table(found, space, metric, mode),
        parquet_url=storage.join(sweep_url, RESULTS_PARQUET),
    )
    storage.write_bytes(storage.join(sweep_url, PLOT), plot(found, metric, best))
    return csv_url


def export_best(sweep_url: str, model: ModelConfig, trainer: TrainerConfig) -> str:
    """``best/model.json`` and ``best/trainer.json``: a session `auralflow train` starts from."""
    url = storage.join(sweep_url, BEST)
    write_model_config(url, model, overwrite=True)
    write_trainer_config(url, trainer)
    return url
