"""Ray's routine chatter, kept out of the driver's output so that our own lines and real errors show.

Ray forwards every worker's stdout and stderr to the driver (``log_to_driver``). Besides what
matters, that brings lines that repeat every run, every epoch or every second and never call for
action:

- Ray Train's placement-group cleaner, once a second without a dashboard: "Failed to query Ray
  Train Controller actor state ..." (``train/v2/_internal/execution/controller/
  placement_group_cleaner.py``), and its "Found multiple active Ray instances" and "Monitor
  thread did not exit" notes;
- the core worker's E-level notice on actors whose constructor arguments sit in the object store
  (Ray Data's actor pools, Train's preemption watcher; ``core_worker.cc``);
- Ray Data's INFO lines (progress bars disabled, "Dataset ... execution finished") and Ray
  Train's "Reporting training result" per report, Gloo's peer count;
- deprecation warnings raised inside Ray (a warning line and its source line);
- "Note:" lines of mpg123, libsndfile's MP3 decoder, on frames it resynchronises over;
- the raylet's warning that more worker processes started than it expected (routine on a
  machine of few cores: Ray Data's and Train's actors), and its note that a task to an actor
  being restarted will be retried (the job says which file it retries);
- everything from `QUIET_ACTORS`, the cleaner's shutdown traceback included;
- in the driver itself: Ray's note that token authentication is on (at every local start), and
  the core worker's E-level notice that an actor has constructor arguments in the object store,
  which Ray Data's own actor pools always have (it puts their map function there).

`quiet` drops exactly these from the forwarded lines, keeps Ray's own deprecation warnings and
Ray Data's INFO records out of the driver's own stderr, and leaves every other line alone. The
core worker writes to file descriptor 2 from C++, past Python: `filter_stderr` (the command
line's) runs that descriptor through a small child process that drops the same lines.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

NOISE = re.compile(
    "|".join(
        [
            r"Failed to query Ray Train Controller actor state",
            r"Found multiple active Ray instances",
            r"Monitor thread did not exit within",
            r"has constructor arguments in the object store",
            r"Progress bars disabled\. To enable",
            r"Dataset \S+ execution finished in",
            r"Registered dataset logger for dataset",
            r"Starting execution of Dataset",
            r"Execution plan of Dataset",
            r"Reporting training result \d+: TrainingReport",
            r"\[Gloo\] Rank \d+ is connected to",
            r"PYTHON worker processes have been started on node",
            r"Token authentication is enabled for this Ray cluster",
            r"submit failed\. There are infinite retries remaining, so the task will be retried",
            r"^Note: ",
        ]
    )
)
# A warning as Python prints it: "path:line: SomeDeprecationWarning: text", then the source line.
_DEPRECATION = re.compile(r":\d+: \w*DeprecationWarning: ")
_FORWARDING_HANDLER = "ray_print_logs"
_filter_pid: int | None = None  # the `filter_stderr` child, which ends with its pipe
# Actors whose every line is chatter: Train's placement-group cleaner cannot reach the state API
# without a dashboard, so it only ever logs that, and a traceback when Ray shuts down under it.
QUIET_ACTORS = frozenset({"PlacementGroupCleaner"})


def drop_noise(lines: Iterable[str]) -> list[str]:
    """``lines`` without Ray's routine chatter (a deprecation warning with its source line)."""
    return list(_kept(lines))


def _kept(lines: Iterable[str]) -> Iterator[str]:
    """`drop_noise` line by line, for a stream."""
    source_follows = False
    for line in lines:
        if source_follows and line.startswith(" "):
            source_follows = False
            continue
        source_follows = bool(_DEPRECATION.search(line))
        if not source_follows and not NOISE.search(line):
            yield line


class DropNoise(logging.Filter):
    """A handler filter: Ray's records that `NOISE` names (its progress-bar and token notes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not NOISE.search(record.getMessage())


def filter_driver_logs() -> None:
    """`DropNoise` on the stream handlers of Ray's loggers here; before ``ray.init``, whose
    token-authentication note it drops. Calling it again changes nothing."""
    import ray  # noqa: F401  (sets up Ray's handlers, which get the filter)

    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, DropNoise) for f in handler.filters):
                handler.addFilter(DropNoise())


def filter_stderr() -> None:
    """Send this process's file descriptor 2 through a child that drops `NOISE` lines.

    The child ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group; the command
    still has lines to print after it) and ends when the last writer closes the pipe. At exit
    this process closes its end and waits briefly, so every line is out before the shell's
    prompt; Ray processes that inherited the pipe keep it open only until they stop.
    """
    original = os.dup(2)
    read, write = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", "from auralflow_dist.ray_logs import _pass_lines; _pass_lines()"],
        stdin=read,
        stdout=original,
        stderr=original,
        close_fds=True,
    )
    os.close(read)
    global _filter_pid
    _filter_pid = child.pid
    sys.stderr.flush()
    os.dup2(write, 2)
    os.close(write)

    def restore() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(original, 2)  # closes our end of the pipe
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)

    atexit.register(restore)


def filter_pid() -> int | None:
    """The `filter_stderr` child's process id, where this process started one."""
    return _filter_pid


def _pass_lines() -> None:
    """The `filter_stderr` child: stdin to stdout, line by line, without `NOISE`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = sys.stdout.buffer
    lines = (raw.decode("utf-8", "surrogateescape") for raw in sys.stdin.buffer)
    for line in _kept(lines):
        out.write(line.encode("utf-8", "surrogateescape"))
        out.flush()


def silence_deprecations() -> None:
    """Ray's own deprecation warnings, raised in this process: not the user's to act on."""
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")


def quiet() -> None:
    """Filter the worker output Ray forwards to this driver, and Ray Data's INFO lines here.

    Call after ``ray.init`` (which sets up the forwarding); calling it again changes nothing.
    """
    import ray._private.worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    with dispatcher._lock:
        dispatcher.handlers = [
            (name, _filtered(handler) if name == _FORWARDING_HANDLER else handler)
            for name, handler in dispatcher.handlers
        ]
    # The raylet's messages (its "N PYTHON worker processes have been started" warning) reach
    # the driver on another path: the error listener prints them through this function.
    printer = ray_worker.print_to_stdstream
    if not getattr(printer, "drops_noise", False):
        ray_worker.print_to_stdstream = _filtered_printer(printer)
    import ray.data  # noqa: F401  (configures the "ray.data" logger, which we then tune)

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.setLevel(max(handler.level, logging.WARNING))


def _filtered_printer(printer: Callable[..., None]) -> Callable[..., None]:
    def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool) -> None:
        lines = drop_noise(data.get("lines", []))
        if lines:
            printer({**data, "lines": lines}, ignore_prefix)

    print_to_stdstream.drops_noise = True  # type: ignore[attr-defined]
    return print_to_stdstream


def _filtered(handler: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    if getattr(handler, "drops_noise", False):
        return handler

    def handle(batch: dict[str, Any]) -> None:
        if batch.get("actor_name") in QUIET_ACTORS:
            return
        lines = drop_noise(batch.get("lines", []))
        if lines:
            handler({**batch, "lines": lines})

    handle.drops_noise = True  # type: ignore[attr-defined]
    return handle
