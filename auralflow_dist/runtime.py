"""Connecting to Ray: an existing cluster (``--address`` / ``RAY_ADDRESS``) or a local instance."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import ray

from auralflow_dist import idle_executor, ray_logs

# Logical CPUs a local instance announces beyond what training reserves, so that Ray Data's
# decoding tasks always find a slot (Ray Train excludes its own reservation from Data's budget).
DATA_CPU_HEADROOM = 2
# Ray starts workers at nice 15 so its control plane stays responsive; then every wake-up of
# the raylet, GCS or a driver thread preempts a compute thread and stalls its whole torch
# thread team: on 2 cores that cost training 5-13% and separation about 7% (docs/benchmarks.md).
# Our workers are the node's work, so they run at the control plane's priority. Cluster
# configs set the same through ``RAY_worker_niceness=0`` (cluster/).
WORKER_NICENESS = 0
# Ray ends a task worker idle for 1 s once a node runs more workers than it has CPUs, and a
# training run's actors (Train's controller and worker, Ray Data's coordinators) already are
# more. So each epoch's decode tasks, idle through validation and the checkpoint, started in
# fresh workers that imported torch again: 12 worker starts in two timed epochs of the
# throughput bench, 0.16 of a core (docs/benchmarks.md). Ten minutes outlast an epoch's idle
# tail and its validation (two did not: a CPU epoch's decoding ends well before the epoch).
IDLE_WORKER_KEEP_MS = 600_000
# Every Ray process costs about 0.009 of a core while idle (its main thread checks for signals
# every 10 ms, fixed in Ray), so on one machine the processes that serve nothing go: the
# preemption watcher (no node of a local instance is drained) and the two workers Ray starts
# ahead for the first driver's tasks with no runtime env (ours all have one, and actors start
# their own workers). Of the rest, the log monitor globbed the log folder every 0.1 s and the
# dashboard agent collected every process's metrics every 10 s; less often, each costs half
# (measured on an idle instance with 12 actors). New log files are found within 2 s, and
# nothing here reads Ray's metrics more often than every 60 s.
LOCAL_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    "LOG_NAME_UPDATE_INTERVAL_S": "2",
}
LOCAL_METRICS_REPORT_MS = 60_000
# A local instance runs no dashboard, so Ray's state API has no server on it: with no address
# set, Ray Train's placement-group cleaner looks for one through /tmp/ray/ray_current_cluster,
# which a past ``ray start`` leaves behind. A stale one cost 40 s a query and stalled every
# run's end by 14 s (measured); a live one would answer for another cluster, where our
# controller is unknown, i.e. "dead", and the cleaner would remove our placement group. A port
# nothing listens on makes the query fail at once, as with no such file (the cleaner then
# monitors on; our own code frees a dead run's placement group).
NO_STATE_API = "http://127.0.0.1:1"
_STATE_API_VARIABLE = "RAY_API_SERVER_ADDRESS"


def connect(address: str | None = None, reserved_cpus: float = 0.0) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``), else start a local Ray sized for the job."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A submitted job's driver runs in its unpacked --working-dir, which Ray 2.60 may delete
    # under it once it has joined; torch's first optimizer then asks for the working directory
    # (its compile-debug folder) and fails. Named here, it is never asked for.
    os.environ.setdefault("TORCH_COMPILE_DEBUG_DIR", tempfile.gettempdir())
    ray_logs.silence_deprecations()
    ray_logs.filter_driver_logs()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _init(address=address, log_to_driver=True)
        return
    cpus = max(os.cpu_count() or 1, int(reserved_cpus + 0.999) + DATA_CPU_HEADROOM)
    for name, value in LOCAL_ENV.items():  # Ray's processes inherit the driver's environment
        os.environ.setdefault(name, value)
    # "local": a fresh instance, never a stale one some earlier `ray start` left behind.
    with isolated_state_api():
        _init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=True,
            _system_config={
                "worker_niceness": WORKER_NICENESS,
                "idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS,
                "metrics_report_interval_ms": LOCAL_METRICS_REPORT_MS,
                "prestart_worker_first_driver": False,
            },
        )


def quiet_data_context() -> None:
    """Ray Data in this process says only what our own progress lines do not.

    Its progress bars and start banner repeat them, and its high-memory detector warns every 30 s
    that a model actor uses more memory than it asked for: our actor pools are sized by
    ``--workers``, not by memory requests, so the warning changes nothing.
    """
    from ray.data._internal.issue_detection.detectors.high_memory_detector import (
        HighMemoryIssueDetector,
    )

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    detectors = context.issue_detectors_config.detectors
    context.issue_detectors_config.detectors = [
        d for d in detectors if d is not HighMemoryIssueDetector
    ]


@contextlib.contextmanager
def isolated_state_api() -> Iterator[None]:
    """Around the start of a local instance, whose processes inherit the environment: its state
    API is `NO_STATE_API`. This process's own is left as it was (a job client would follow it)."""
    before = os.environ.get(_STATE_API_VARIABLE)
    os.environ.setdefault(_STATE_API_VARIABLE, NO_STATE_API)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_STATE_API_VARIABLE, None)


def _init(**options: Any) -> None:
    """``ray.init``, keeping a SIGTERM handler the process set itself (the CLI's, which stops
    the work and the local Ray; Ray's own makes SIGTERM a bare exit), and quieting Ray."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    idle_executor.install()  # this process iterates datasets too (separation, evaluation)
    ray.init(runtime_env=idle_executor.RUNTIME_ENV, **options)
    if callable(handler):
        signal.signal(signal.SIGTERM, handler)
    ray_logs.quiet()


def end_local_ray(grace_s: float = 5.0) -> None:
    """Stop a local Ray this process started, with all its processes (GCS, raylet, workers).

    Without Ray's own shutdown, which must not run amid a Ray call (a signal handler's case).
    Where this process joined a cluster it started nothing, and the cluster is left alone.
    Each process is sent SIGTERM here; a detached `reap` child kills what still runs after
    ``grace_s`` (Ray's agents notice a dead raylet only slowly), so the caller can exit at once:
    waiting here raced the core worker, which exits this process with status 1 once the raylet
    is gone. The stderr filter (`ray_logs.filter_stderr`) is left to end with its pipe.
    """
    import psutil  # Ray's vendored copy

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:  # a child ended mid-walk: walk again
        children = psutil.Process().children(recursive=True)
    children = [c for c in children if c.pid != ray_logs.filter_pid()]
    for process in children:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    subprocess.Popen(
        [sys.executable, "-m", "auralflow_dist.reap", str(grace_s)]
        + [str(c.pid) for c in children],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # outlives this process and the terminal's Ctrl-C
    )
