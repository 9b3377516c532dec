"""One row per input file, the ``_results`` table they make, and the driver's running tally.

Rows travel from the workers to the driver through Ray Data as plain columns; the driver prints
progress and updates the Prometheus series as they stream in, and writes the table at the end.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from auralflow_dist import observability, storage, tables

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
RESULTS_NAME = "_results"


@dataclass
class FileResult:
    """What happened to one input file."""

    input_url: str
    track: str  # output folder, relative to --save
    status: str = FAILED  # ok | failed | skipped
    error: str = ""
    duration_s: float = math.nan  # audio separated (after --duration trimming)
    seconds: float = math.nan  # wall-clock seconds this file took
    realtime_factor: float = math.nan  # duration_s / seconds
    sample_rate: int = 0  # of the input
    channels: int = 0
    output_sample_rate: int = 0
    target_url: str = ""
    residual_url: str = ""
    trimmed: bool = False  # --duration cut the file short
    attempts: int = 1  # > 1 when a worker died on this file and it was retried

    @classmethod
    def from_batch(cls, batch: dict[str, Any]) -> list[FileResult]:
        """Results from a Ray Data batch of columns, whose values are numpy scalars."""
        casts: dict[str, Callable[[Any], Any]] = {
            "str": str,
            "float": float,
            "int": int,
            "bool": bool,
        }
        kinds = {f.name: casts[f.type] for f in dataclasses.fields(cls)}
        count = len(batch["input_url"])
        return [cls(**{k: cast(batch[k][i]) for k, cast in kinds.items()}) for i in range(count)]


def merge_columns(results: list[FileResult]) -> dict[str, list[Any]]:
    """A batch of columns holding ``results`` (Ray Data's batch format)."""
    names = [f.name for f in dataclasses.fields(FileResult)]
    return {n: [getattr(r, n) for r in results] for n in names}


def write_table(save: str, results: list[FileResult]) -> tuple[str, str]:
    """``<save>/_results.parquet`` and ``_results.csv``, sorted by input; returns both URLs."""
    ordered = sorted(results, key=lambda r: r.input_url)
    parquet_url = storage.join(save, f"{RESULTS_NAME}.parquet")
    csv_url = storage.join(save, f"{RESULTS_NAME}.csv")
    tables.write_rows(
        csv_url,
        [dataclasses.asdict(r) for r in ordered],
        columns=[f.name for f in dataclasses.fields(FileResult)],
        parquet_url=parquet_url,
    )
    return parquet_url, csv_url


@dataclass
class SeparationSummary:
    """What a job did, for the CLI to print and for scripts to check."""

    save: str
    files: int
    ok: int
    skipped: int
    failed: int
    audio_seconds: float  # separated in this run (skipped files not counted)
    wall_seconds: float
    results_url: str
    results_csv_url: str
    duration: float | None  # --duration: every file was cut to this many seconds
    results: list[FileResult]
    concurrent_files: int = 1  # files the pool separated side by side (actors x files at once)

    @property
    def realtime_factor(self) -> float:
        """Audio seconds separated per wall-clock second, the whole job."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def describe(self) -> str:
        lines = [
            f"separated {self.ok} of {self.files} files ({self.skipped} already done, "
            f"{self.failed} failed): {self.audio_seconds / 3600:.2f} h of audio in "
            f"{self.wall_seconds:.1f} s ({self.realtime_factor:.1f}x real time)",
        ]
        if self.duration is not None:
            lines.append(
                f"only the first {self.duration:g} s of each file were separated (--duration)"
            )
        lines.append(
            f"stems under {storage.mask_url(self.save)}; results in "
            f"{storage.mask_url(self.results_csv_url)}"
        )
        return "\n".join(lines)


class Tally:
    """Counts results as they arrive; prints a progress line now and then and feeds Prometheus."""

    def __init__(
        self, total: int, job: str, echo: Callable[[str], None], interval: float = 5.0
    ) -> None:
        self.total, self.job, self.echo, self.interval = total, job, echo, interval
        self.start = time.monotonic()
        self.last_line = self.start
        self.counts = {OK: 0, SKIPPED: 0, FAILED: 0}
        self.audio_seconds = 0.0
        observability.SEP_PENDING.labels(job=job).set(total)

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def add(self, result: FileResult) -> None:
        self.counts[result.status] += 1
        observability.SEP_FILES.labels(job=self.job, status=result.status).inc()
        if result.status == OK:
            self.audio_seconds += result.duration_s
            observability.SEP_AUDIO_SECONDS.labels(job=self.job).inc(result.duration_s)
        observability.SEP_REALTIME.labels(job=self.job).set(self.audio_seconds / self.elapsed)
        observability.SEP_PENDING.labels(job=self.job).set(self.total - self.done)
        if result.status == FAILED:
            self.echo(f"failed: {storage.redact(result.error)}")
        now = time.monotonic()
        if now - self.last_line >= self.interval or self.done == self.total:
            self.last_line = now
            self.echo(self.line())

    def line(self) -> str:
        return (
            f"{self.done}/{self.total} files ({self.counts[SKIPPED]} skipped, "
            f"{self.counts[FAILED]} failed), {self.audio_seconds / 3600:.2f} h audio, "
            f"{self.audio_seconds / max(self.elapsed, 1e-9):.1f}x real time"
        )
