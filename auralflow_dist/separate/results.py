"""One row per input file, the ``_results`` table they make, and the driver's running tally.

Rows travel from the workers to the driver through Ray Data as plain columns; the driver prints
progress and updates the Prometheus series as they stream in. The table always lists every
input: while the job runs it is rewritten (atomically) within `TABLE_INTERVAL_S` of a result
coming in, with the files still to do as ``pending``, and once more when the job ends or
stops, a file never processed then being a failed row that says so. A progress line comes at
least every `HEARTBEAT_S`, even while no file finishes (one 3-hour file).
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from auralflow_dist import observability, storage, tables
from auralflow_dist.errors import StorageError
from auralflow_dist.progress import Ticker, clock, eta

if TYPE_CHECKING:
    from auralflow_dist.separate.sources import Source

OK, FAILED, SKIPPED, PENDING = "ok", "failed", "skipped", "pending"
RESULTS_NAME = "_results"
TABLE_INTERVAL_S = 30.0  # seconds between rewrites of the table while the job runs
HEARTBEAT_S = 30.0  # the most seconds between progress lines


@dataclass
class FileResult:
    """What happened to one input file."""

    input_url: str
    track: str  # output folder, relative to --save
    status: str = FAILED  # ok | failed | skipped (| pending, in a table written mid-run)
    error: str = ""
    duration_s: float = math.nan  # audio separated (after --duration trimming)
    seconds: float = math.nan  # wall-clock seconds this file took
    realtime_factor: float = math.nan  # duration_s / seconds
    sample_rate: int = 0  # of the input
    channels: int = 0
    output_sample_rate: int = 0
    outputs: str = ""  # JSON: stem name (every target, then residual) -> URL
    gains: str = ""  # JSON: stem name -> the gain --clip-mode rescale applied (1.0: none)
    note: str = ""  # what was done that the flags did not say (Opus's resampling)
    trimmed: bool = False  # --duration cut the file short
    attempts: int = 1  # times started: > 1 when a worker died during it and it was retried

    def output(self, stem: str) -> str:
        """The URL of ``stem``'s file ("" where there is none)."""
        return json.loads(self.outputs or "{}").get(stem, "")

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


class ResultsTable:
    """The ``_results`` table of one run: a row per source, whatever has come back so far.

    Results are added by the driver's loop; `update` may run in the heartbeat thread too.
    """

    def __init__(
        self,
        save: str,
        sources: Iterable[Source],
        echo: Callable[[str], None],
        fixed: Iterable[FileResult] = (),
    ) -> None:
        self.save, self.echo = save, echo
        self.sources = list(sources)
        self.fixed = list(fixed)  # rows settled before the job starts: files not taken
        self.results: dict[str, FileResult] = {}
        self.lock, self.writing = threading.Lock(), threading.Lock()
        self.written = time.monotonic()
        self.changed = False

    def add(self, result: FileResult) -> None:
        with self.lock:
            self.results[result.input_url] = result
            self.changed = True

    def rows(self, status: str, error: str) -> list[FileResult]:
        """Every source's result, those not come back as ``status`` rows saying ``error``."""
        with self.lock:
            return [
                self.results.get(s.url) or FileResult(s.url, s.track, status=status, error=error)
                for s in self.sources
            ] + self.fixed

    def update(self) -> None:
        """Write the table if results came in and `TABLE_INTERVAL_S` has passed since the last."""
        if self.changed and time.monotonic() - self.written >= TABLE_INTERVAL_S:
            self._try_write(PENDING, "not processed yet")

    def stopped(self, why: BaseException) -> None:
        """The last table of a job stopped by ``why``: the files not done fail, saying so."""
        reason = type(why).__name__ + (f": {why}" if str(why) else "")
        self._try_write(FAILED, storage.redact(f"not processed: the job stopped ({reason})"))

    def finish(self) -> tuple[list[FileResult], str, str]:
        """The rows and the URLs of the final table (storage failures raise)."""
        rows = self.rows(FAILED, "never processed")
        return (rows, *write_table(self.save, rows))

    def _try_write(self, status: str, error: str) -> None:
        """A table that cannot be written (storage down) is a warning: the job goes on."""
        with self.writing:  # one at a time, so that an older table never lands last
            self.written, self.changed = time.monotonic(), False
            try:
                write_table(self.save, self.rows(status, error))
            except StorageError as err:
                self.echo(f"warning: cannot write the results table ({err})")


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
    not_audio: int = 0  # files under the input without one of --extensions (rows say so)

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
        if self.not_audio:
            lines.append(
                f"{self.not_audio} other file(s) under the input not separated: not among "
                "--extensions (listed in the results)"
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
        self.ticker = Ticker(self.line, echo)
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
        self.ticker.tick(self.interval if self.done < self.total else 0.0)

    def heartbeat(self, also: Callable[[], None] = lambda: None) -> AbstractContextManager[None]:
        """A progress line at least every `HEARTBEAT_S` while inside, and a call of ``also``."""
        return self.ticker.running(HEARTBEAT_S, also)

    def line(self) -> str:
        done, elapsed = self.done, self.elapsed
        # Files left at the pace so far; skipped files come fast and make it an underestimate
        # early on, so it is only given once a file has been done.
        left = f", ETA {eta(done, self.total, elapsed)}" if 0 < done < self.total else ""
        return (
            f"{done}/{self.total} files ({self.counts[SKIPPED]} skipped, "
            f"{self.counts[FAILED]} failed), {self.audio_seconds / 3600:.2f} h audio, "
            f"{self.audio_seconds / max(elapsed, 1e-9):.1f}x real time, "
            f"{clock(elapsed)} elapsed{left}"
        )
