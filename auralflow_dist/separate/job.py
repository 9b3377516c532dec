"""The bulk separation job: Ray Data over the input files, one model bundle per pool actor.

The driver lists the files, then streams them through an actor pool (each actor loads the bundle,
one model per target, once and separates whole files into every stem with `TrackSeparator`: on CPU one per CPU side
by side, on a GPU several side by side in shared forward passes), and counts the results as they come back: progress lines, Prometheus series, and the ``_results``
table, rewritten as results come in and written once more however the job ends (a SIGTERM
from ``ray job stop`` or Kubernetes included).

A worker process that dies (killed, out of memory, a crash in a decoder) is restarted and its
files are retried: Ray Data's actor pools default to ``max_restarts=-1, max_task_retries=-1``
(Ray 2.60; passing them explicitly is deprecated). A death is charged only to a file that can
have caused it: one the worker was separating alone. A file started side by side with others
whose worker died is re-run alone on its actor (the others wait), so a poisonous file is found
after `MAX_ATTEMPTS` deaths alone and reported as failed, while its neighbours, re-run alone
once, are not. The attempts live in storage (`AttemptLog`, under ``<save>/_attempts/<run id>``,
removed at the end), not in a process: nothing the job could lose in a crash (an actor killed by
Ray's OOM monitor) holds them, and every worker on every node reads the same ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import posixpath
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import ray
import torch

from auralflow_dist import allocator, observability, runtime, session, storage
from auralflow_dist.attempts import MAX_ATTEMPTS, AttemptLog
from auralflow_dist.errors import AudioError, ConfigError, StorageError
from auralflow_dist.models import index
from auralflow_dist.models.separator import Bundle, check_bundle
from auralflow_dist.separate.config import SeparateConfig
from auralflow_dist.separate.results import (
    SKIPPED,
    FileResult,
    ResultsTable,
    SeparationSummary,
    Tally,
    merge_columns,
)
from auralflow_dist.separate.shared_batches import SharedBatches
from auralflow_dist.separate.sources import JOB_NAME, Source, list_inputs, skip_reason
from auralflow_dist.separate.track import TrackSeparator, check_output_paths, fingerprint

# Test hook: the worker exits (a real crash) the first time it is handed a file of this name.
CRASH_ONCE_ENV = "AURALFLOW_SEPARATE_CRASH_ONCE"
_MAX_BLOCKS = 10_000  # Ray Data blocks (units of scheduling and retry); one file each below this
# A file queued at each actor behind the running ones: the actor starts it the moment a file is
# done instead of idling through a round trip to the driver (about 5% of a 2-core machine).
# More would let the last files queue behind a busy actor while another is idle.
_FILES_QUEUED_PER_ACTOR = 1
_PUSH_INTERVAL_S = 15.0
GPU_FILES_AT_ONCE = 4  # a pass of 8-32 windows is 2-8 per file: files of 6-24 s fill it
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Gate:
    """Lets files run side by side, or one alone: that one waits for the others to finish, and
    holds back those that come after it until it is done."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running = 0
        self.alone_running = False
        self.alone_waiting = 0

    @contextlib.contextmanager
    def enter(self, alone: bool) -> Iterator[None]:
        with self.cond:
            if alone:
                self.alone_waiting += 1
                self.cond.wait_for(lambda: self.running == 0)
                self.alone_waiting -= 1
            else:
                self.cond.wait_for(lambda: not self.alone_running and not self.alone_waiting)
            self.running += 1
            self.alone_running = alone
        try:
            yield
        finally:
            with self.cond:
                self.running -= 1
                self.alone_running = False
                self.cond.notify_all()


class FileSeparator:
    """A Ray Data pool actor: loads the model once, then separates each file it is given."""

    def __init__(
        self,
        job: SeparateConfig,
        model_dirs: list[str],
        model_key: str,
        run_id: str,
        s3: storage.S3Settings,
        threads: int,
        at_once: int,
        crash_once: str,
    ) -> None:
        storage.configure(s3)
        torch.set_num_threads(threads)
        bundle = Bundle.from_checkpoints(
            ",".join(model_dirs), use_amp=job.use_amp, wiener=job.wiener_filter
        )
        shared = SharedBatches(bundle, job.batch_size) if bundle.device.type == "cuda" else None
        self.separate = TrackSeparator(bundle, job, model_key, run_id, shared)
        self.log = AttemptLog(job.save, run_id)
        self.at_once, self.crash_once = at_once, crash_once
        self.gate = _Gate()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        sources = [
            Source(str(u), str(t)) for u, t in zip(batch["url"], batch["track"], strict=True)
        ]
        return merge_columns([self.attempt(s) for s in sources])

    def attempt(self, source: Source) -> FileResult:
        """Separate ``source``, alone if an earlier attempt died; fail it after `MAX_ATTEMPTS`
        deaths alone."""
        try:
            earlier = self.log.earlier(source.url)
        except StorageError as err:
            return self._unrecorded(source, err, attempts=0)
        own = sum(earlier)
        if own >= MAX_ATTEMPTS:
            return FileResult(
                source.url,
                source.track,
                attempts=len(earlier),
                error=(
                    f"{storage.mask_url(source.url)}: the worker process died {own} times "
                    f"while separating this file alone ({len(earlier)} attempts in all)"
                ),
            )
        # With one file at a time per actor, every file runs alone.
        alone = bool(earlier) or self.at_once == 1
        with self.gate.enter(alone):
            try:
                self.log.begin(source.url, alone)
            except StorageError as err:
                return self._unrecorded(source, err, attempts=len(earlier))
            if not earlier and posixpath.basename(source.url) == self.crash_once:
                os._exit(1)
            result = self.separate(source)
        result.attempts = len(earlier) + 1
        return result

    @staticmethod
    def _unrecorded(source: Source, err: StorageError, attempts: int) -> FileResult:
        """The row of a file whose attempt cannot be read or recorded (storage down)."""
        error = f"{storage.mask_url(source.url)}: cannot keep its attempts ({err})"
        return FileResult(source.url, source.track, attempts=attempts, error=error)


def _resources(
    job: SeparateConfig, cluster: dict[str, float], node_cpus: float
) -> tuple[int, float, float]:
    """Workers, GPUs and CPUs per worker: the flags where given, else the cluster shared out.

    A replica lives on one node, so its share of CPUs is capped at the largest node's
    ``node_cpus``: a share of the whole cluster's CPUs would never be scheduled.
    """
    gpus_total, cpus_total = cluster.get("GPU", 0.0), cluster.get("CPU", 1.0)
    gpus = job.gpus_per_worker if job.gpus_per_worker is not None else float(gpus_total >= 1)
    if job.workers is not None:
        workers = job.workers
    elif gpus > 0:
        workers = max(1, int(gpus_total // gpus))
    else:
        workers = max(1, int(cpus_total // 2))
    share = min(cpus_total // workers, node_cpus)
    cpus = job.cpus_per_worker or (1.0 if gpus > 0 else float(max(1, int(share))))
    return workers, gpus, cpus


def _files_at_once(files: int, workers: int, gpus: float, cpus: float) -> int:
    """How many files each actor separates side by side, each on ``cpus / result`` threads.

    On CPU, files side by side on a thread each beat one file on every thread (1.09-1.17x with
    2 CPUs on a 2-core machine: the network's convolutions scale poorly over torch's
    intra-op threads), so an actor takes a file per CPU while there are files for every CPU of
    the pool; with fewer files, one file at a time with all its threads. On a GPU an actor
    takes `GPU_FILES_AT_ONCE` files, whose windows share forward passes (`SharedBatches`):
    short files fill a pass together, and one file's decoding and encoding overlap another's
    pass, in no more GPU memory per pass than one file's.
    """
    if gpus > 0:
        return GPU_FILES_AT_ONCE
    slots = max(1, int(cpus))
    return 1 if files < workers * slots else slots


def _metrics(job: SeparateConfig, label: str, echo: Callable[[str], None]) -> Callable[[], None]:
    """Start the /metrics server if asked; returns a push to the Pushgateway (or a no-op)."""
    if job.metrics_port is not None:
        try:
            observability.serve(job.metrics_port)
        except OSError as err:
            raise ConfigError(
                "metrics_port", f"cannot serve on {job.metrics_port} ({err})"
            ) from None
    if job.pushgateway is None:
        return lambda: None

    def push() -> None:
        try:
            observability.push(job.pushgateway, label)
        except Exception as err:  # monitoring must not stop the job
            echo(f"warning: cannot push metrics to {storage.mask_url(job.pushgateway)} ({err})")

    return push


def _collect(
    dataset: ray.data.Dataset, table: ResultsTable, tally: Tally, push: Callable[[], None]
) -> None:
    """Count the results into ``table`` and ``tally`` as they land, pushing metrics now and then."""
    last_push = time.monotonic()
    # Whole blocks (one file each), none prefetched: each result is counted as it lands.
    for batch in dataset.iter_batches(batch_size=None, prefetch_batches=0):
        for result in FileResult.from_batch(batch):
            table.add(result)
            tally.add(result)
        table.update()
        if time.monotonic() - last_push >= _PUSH_INTERVAL_S:
            push()
            last_push = time.monotonic()


class JobStopped(SystemExit):
    """The job was stopped by a signal; exits with 128 + its number, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.name = signal.Signals(signum).name

    def __str__(self) -> str:
        return f"stopped by {self.name}"


@contextlib.contextmanager
def _signals_as_exit(echo: Callable[[str], None]) -> Iterator[None]:
    """SIGTERM (``ray job stop``, Kubernetes, ``timeout``) and SIGINT raise `JobStopped`
    inside, so that the job's ``finally`` writes the table before the process ends (the
    default is to die on the spot). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        for s in _STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)  # a second signal must not cut the table short
        echo(f"{signal.Signals(signum).name}: stopping; a re-run skips the files already done")
        raise JobStopped(signum)

    previous = {s: signal.signal(s, stop) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _drop(log: AttemptLog, echo: Callable[[str], None]) -> None:
    """Remove the run's attempt ledger; storage that fails now is a warning, not the job's end."""
    try:
        log.remove()
    except StorageError as err:
        echo(f"warning: cannot remove the attempt ledger ({err})")


def run_separation(job: SeparateConfig, echo: Callable[[str], None] = print) -> SeparationSummary:
    """Separate every audio file of ``job.audio`` into ``job.save``; see the module docstring."""
    job.validate()
    # The pool actors' working directory is not this process's.
    job = dataclasses.replace(
        job,
        model=storage.absolute(index.resolve(job.model, job.model_index)),
        audio=storage.absolute(job.audio),
        save=storage.absolute(job.save),
    )
    start = time.monotonic()
    model_dirs = session.bundle_dirs(job.model)
    configs = [session.read_model_config(d) for d in model_dirs]
    check_bundle(configs, job.wiener_filter)
    window = configs[0].num_samples
    if job.padding >= window:
        raise ConfigError("padding", f"must be below the model's window of {window} samples")
    model_key = ";".join(fingerprint(storage.join(d, session.WEIGHTS)) for d in model_dirs)
    sources, others = list_inputs(job.audio, exclude=job.save, extensions=job.extension_set)
    if not sources:
        raise AudioError(
            f"{storage.mask_url(job.audio)}: no .{', .'.join(job.extension_set)} files "
            f"({len(others)} other file(s); --extensions widens the set)"
        )
    not_audio = [
        FileResult(
            input_url=url,
            track="",
            status=SKIPPED,
            note=skip_reason(url, job.extension_set),
        )
        for url in others
    ]
    stems = [c.target for c in configs] + (["residual"] if job.residual else [])
    check_output_paths(job, sources, stems)
    run_id = uuid.uuid4().hex
    # Provenance, written first: an output location that cannot be written fails here, not
    # after every file has been separated.
    storage.write_bytes(
        storage.join(job.save, JOB_NAME),
        storage.redact(
            json.dumps(
                {
                    "run_id": run_id,
                    "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "files": len(sources),
                    "model_dirs": {c.target: d for c, d in zip(configs, model_dirs, strict=True)},
                    "config": dataclasses.asdict(job),
                },
                indent=2,
            )
        ).encode(),
    )
    label = job.job_name or posixpath.basename(job.save.rstrip("/")) or "separate"
    push = _metrics(job, label, echo)

    runtime.connect(job.address)
    runtime.quiet_data_context()
    node_cpus = max(
        (n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]), default=1.0
    )
    workers, gpus, cpus = _resources(job, ray.cluster_resources(), node_cpus)
    at_once = _files_at_once(len(sources), workers, gpus, cpus)
    echo(
        f"separating {len(sources)} files into {', '.join(sorted(c.target for c in configs))}"
        f"{' + residual' if job.residual else ''} with {workers} worker(s) "
        f"({gpus:g} GPU, {cpus:g} CPU, {at_once} file(s) at a time each) "
        f"into {storage.mask_url(job.save)}"
    )
    log = AttemptLog(job.save, run_id)
    rows = [{"url": s.url, "track": s.track} for s in sources]
    dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), _MAX_BLOCKS))
    dataset = dataset.map_batches(
        FileSeparator,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(
            size=workers,
            max_tasks_in_flight_per_actor=at_once + _FILES_QUEUED_PER_ACTOR,
            max_concurrent_calls_per_actor=at_once,
            enable_true_multi_threading=True,  # files at once share the actor's model
        ),
        num_cpus=cpus,
        num_gpus=gpus,
        runtime_env=allocator.worker_runtime_env(),
        fn_constructor_kwargs={
            "job": job,
            "model_dirs": model_dirs,
            "model_key": model_key,
            "run_id": run_id,
            "s3": storage.current_settings(),
            "threads": max(1, int(cpus) // at_once),
            "at_once": at_once,
            "crash_once": os.environ.get(CRASH_ONCE_ENV, ""),
        },
    )
    tally = Tally(len(sources), label, echo)
    table = ResultsTable(job.save, sources, echo, fixed=not_audio)
    try:
        with _signals_as_exit(echo), tally.heartbeat(also=table.update):
            _collect(dataset, table, tally, push)
    except BaseException as err:
        table.stopped(err)
        raise
    finally:
        _drop(log, echo)
    rows_out, parquet_url, csv_url = table.finish()
    push()
    counts = Counter(r.status for r in rows_out)
    return SeparationSummary(
        save=job.save,
        files=len(sources),
        ok=counts["ok"],
        skipped=counts["skipped"] - len(not_audio),
        not_audio=len(not_audio),
        failed=counts["failed"],
        audio_seconds=tally.audio_seconds,
        wall_seconds=time.monotonic() - start,
        results_url=parquet_url,
        results_csv_url=csv_url,
        duration=job.duration,
        results=rows_out,
        concurrent_files=workers * at_once,
    )
