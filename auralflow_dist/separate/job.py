"""The bulk separation job: Ray Data over the input files, one model replica per pool actor.

The driver lists the files, then streams them through an actor pool (each actor loads the model
once and separates whole files with `TrackSeparator`, on CPU one per CPU side by side), and
counts the results as they come back: progress lines, Prometheus series, and at the end the
``_results`` table.

A worker process that dies (killed, out of memory, a crash in a decoder) is restarted and its
files are retried: Ray Data's actor pools default to ``max_restarts=-1, max_task_retries=-1``
(Ray 2.60; passing them explicitly is deprecated). A file that has killed its worker
`MAX_ATTEMPTS` times is reported as failed instead, so one poisonous file cannot stop the job.
(A death counts against every file the worker had started, those beside the culprit too; a
re-run retries them.)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import posixpath
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
import torch

from auralflow_dist import allocator, observability, runtime, session, storage
from auralflow_dist.errors import AudioError, ConfigError
from auralflow_dist.models.separator import Separator
from auralflow_dist.separate.config import SeparateConfig
from auralflow_dist.separate.results import (
    FileResult,
    SeparationSummary,
    Tally,
    merge_columns,
    write_table,
)
from auralflow_dist.separate.sources import Source, list_sources
from auralflow_dist.separate.track import TrackSeparator, fingerprint

MAX_ATTEMPTS = 3
JOB_NAME = "_job.json"
# Test hook: the worker exits (a real crash) the first time it is handed a file of this name.
CRASH_ONCE_ENV = "AURALFLOW_SEPARATE_CRASH_ONCE"
_MAX_BLOCKS = 10_000  # Ray Data blocks (units of scheduling and retry); one file each below this
# A file queued at each actor behind the running ones: the actor starts it the moment a file is
# done instead of idling through a round trip to the driver (about 5% of a 2-core machine).
# More would let the last files queue behind a busy actor while another is idle.
_FILES_QUEUED_PER_ACTOR = 1
_PUSH_INTERVAL_S = 15.0


@ray.remote(num_cpus=0)
class AttemptLedger:
    """How often each file has been handed to a worker in this run (survives worker deaths)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def begin(self, url: str) -> int:
        self.counts[url] += 1
        return self.counts[url]


class FileSeparator:
    """A Ray Data pool actor: loads the model once, then separates each file it is given."""

    def __init__(
        self,
        job: SeparateConfig,
        model_dir: str,
        model_key: str,
        run_id: str,
        s3: storage.S3Settings,
        threads: int,
        ledger: Any,
        crash_once: str,
    ) -> None:
        storage.configure(s3)
        torch.set_num_threads(threads)
        separator = Separator.from_checkpoint(model_dir)
        self.separate = TrackSeparator(separator, job, model_key, run_id)
        self.ledger, self.crash_once = ledger, crash_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        results = []
        for url, track in zip(batch["url"], batch["track"], strict=True):
            source = Source(str(url), str(track))
            attempt = ray.get(self.ledger.begin.remote(source.url))
            if attempt > MAX_ATTEMPTS:
                result = FileResult(
                    source.url,
                    source.track,
                    attempts=attempt - 1,
                    error=(
                        f"{storage.mask_url(source.url)}: the worker process died "
                        f"{attempt - 1} times while separating this file"
                    ),
                )
            else:
                if attempt == 1 and posixpath.basename(source.url) == self.crash_once:
                    os._exit(1)
                result = self.separate(source)
                result.attempts = attempt
            results.append(result)
        return merge_columns(results)


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
    the pool. With fewer files, and on a GPU (whose memory the files would share), an actor
    separates one file at a time with all its threads.
    """
    slots = max(1, int(cpus))
    return 1 if gpus > 0 or files < workers * slots else slots


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


def run_separation(job: SeparateConfig, echo: Callable[[str], None] = print) -> SeparationSummary:
    """Separate every audio file of ``job.audio`` into ``job.save``; see the module docstring."""
    job.validate()
    # The pool actors' working directory is not this process's.
    job = dataclasses.replace(
        job,
        model=storage.absolute(job.model),
        audio=storage.absolute(job.audio),
        save=storage.absolute(job.save),
    )
    start = time.monotonic()
    model_dir = session.resolve_model_dir(job.model)
    model_config = session.read_model_config(model_dir)
    window = model_config.num_samples
    if job.padding >= window:
        raise ConfigError("padding", f"must be below the model's window of {window} samples")
    model_key = fingerprint(storage.join(model_dir, session.WEIGHTS))
    sources = list_sources(job.audio, exclude=job.save)
    if not sources:
        raise AudioError(f"{storage.mask_url(job.audio)}: no .wav, .flac, .ogg or .mp3 files")
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
                    "model_dir": model_dir,
                    "config": dataclasses.asdict(job),
                },
                indent=2,
            )
        ).encode(),
    )
    label = job.job_name or posixpath.basename(job.save.rstrip("/")) or "separate"
    push = _metrics(job, label, echo)

    runtime.connect(job.address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    node_cpus = max(
        (n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]), default=1.0
    )
    workers, gpus, cpus = _resources(job, ray.cluster_resources(), node_cpus)
    at_once = _files_at_once(len(sources), workers, gpus, cpus)
    echo(
        f"separating {len(sources)} files with {workers} worker(s) "
        f"({gpus:g} GPU, {cpus:g} CPU, {at_once} file(s) at a time each) "
        f"into {storage.mask_url(job.save)}"
    )
    ledger = AttemptLedger.remote()
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
            "model_dir": model_dir,
            "model_key": model_key,
            "run_id": run_id,
            "s3": storage.current_settings(),
            "threads": max(1, int(cpus) // at_once),
            "ledger": ledger,
            "crash_once": os.environ.get(CRASH_ONCE_ENV, ""),
        },
    )
    tally = Tally(len(sources), label, echo)
    results: dict[str, FileResult] = {}
    last_push = time.monotonic()
    try:
        # Whole blocks (one file each), none prefetched: each result is counted as it lands.
        for batch in dataset.iter_batches(batch_size=None, prefetch_batches=0):
            for result in FileResult.from_batch(batch):
                results[result.input_url] = result
                tally.add(result)
            if time.monotonic() - last_push >= _PUSH_INTERVAL_S:
                push()
                last_push = time.monotonic()
    finally:
        ray.kill(ledger)
    rows_out = [
        results.get(s.url) or FileResult(s.url, s.track, error="never processed") for s in sources
    ]
    parquet_url, csv_url = write_table(job.save, rows_out)
    push()
    counts = Counter(r.status for r in rows_out)
    return SeparationSummary(
        save=job.save,
        files=len(sources),
        ok=counts["ok"],
        skipped=counts["skipped"],
        failed=counts["failed"],
        audio_seconds=tally.audio_seconds,
        wall_seconds=time.monotonic() - start,
        results_url=parquet_url,
        results_csv_url=csv_url,
        duration=job.duration,
        results=rows_out,
        concurrent_files=workers * at_once,
    )
