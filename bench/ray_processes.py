"""CPU of each process of a local Ray instance over a window: what Ray costs beside the work.

A local instance's processes (GCS, raylet, dashboard and agents, log monitor, workers) are all
descendants of the driver that started it, so this samples the driver's process tree every
``interval`` seconds from /proc (Linux). A worker's title changes with the task it runs (``ray::IDLE``
between tasks), so each is named by the title it showed most often while busy. ``work``
patterns name the processes doing the job's own work (the training worker, decode tasks, the
separation actor); the driver (this process: the job's driver code and this sampler) is shown
on its own; every other process is Ray's own.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

IDLE = "ray::IDLE"
DRIVER = "driver (this process)"


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float]:
    """Parent pid and CPU seconds (user + system) of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _title(pid: int) -> str:
    """``ray::Actor.method`` for a worker, else the program or script the process runs."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        command = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    if not command:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    if command[0].startswith("ray::"):
        return command[0].split()[0]
    scripts = [os.path.basename(arg) for arg in command if arg.endswith(".py")]
    return scripts[0] if scripts else os.path.basename(command[0])


def _tree(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and of every live descendant."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stats[int(entry)] = _stat(int(entry))
            except (OSError, IndexError, ValueError):
                continue  # gone since the listing
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found[pid] = stats[pid][1]
            todo += children.get(pid, [])
    return found


@dataclass
class _Seen:
    titles: Counter = field(default_factory=Counter)
    first: float | None = None  # CPU seconds when the window opened, or when first seen in it
    last: float = 0.0

    @property
    def name(self) -> str:
        busy = [(n, t) for t, n in self.titles.items() if t != IDLE]
        return max(busy)[1] if busy else IDLE


@dataclass(frozen=True)
class ProcessShare:
    pid: int
    name: str
    cores: float  # CPU seconds per wall-clock second over the window
    work: bool


class RayProcessCPU:
    """Samples this process and its descendants; the window opens at ``open_window()`` (or
    when ``opens()`` first returns true) and closes when ``closes()`` first returns true after
    that, or when the context exits (leaving out the work's teardown needs ``closes``)."""

    def __init__(
        self,
        work: Sequence[str],
        interval: float = 1.0,
        opens: Callable[[], bool] | None = None,
        closes: Callable[[], bool] | None = None,
    ) -> None:
        self._work = tuple(work)
        self._interval = interval
        self._opens = opens
        self._closes = closes
        self._seen: dict[int, _Seen] = {}
        self._opened: float | None = None
        self._closed: float | None = None
        self._lock = threading.Lock()  # open_window runs on the caller's thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ray-process-cpu", daemon=True)

    def __enter__(self) -> RayProcessCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._closed is None:
            self._close()

    def _close(self) -> None:
        self._sample()
        self._closed = time.monotonic()

    def open_window(self) -> None:
        with self._lock:
            self._opened = time.monotonic()
            for seen in self._seen.values():
                seen.first = seen.last

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._opened is None and self._opens is not None and self._opens():
                self.open_window()
            if self._opened is not None and self._closes is not None and self._closes():
                self._close()
                return
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            self._sample_locked()

    def _sample_locked(self) -> None:
        root = os.getpid()
        for pid, cpu in _tree(root).items():
            try:
                title = DRIVER if pid == root else _title(pid)
            except OSError:
                continue
            seen = self._seen.setdefault(pid, _Seen())
            seen.titles[title] += 1
            seen.last = cpu
            if seen.first is None and self._opened is not None:
                seen.first = seen.last

    def shares(self) -> list[ProcessShare]:
        """Each process's share of a core over the window, largest first."""
        if self._opened is None or self._closed is None:
            raise RuntimeError("the window never opened")
        span = self._closed - self._opened
        rows = [
            ProcessShare(
                pid,
                seen.name,
                (seen.last - seen.first) / span,
                any(pattern in seen.name for pattern in self._work),
            )
            for pid, seen in self._seen.items()
            if seen.first is not None
        ]
        return sorted(rows, key=lambda row: -row.cores)

    def report(self, floor: float = 0.10) -> str:
        """The work's processes summed by name, Ray's own one by one, and Ray's total against
        ``floor`` (cores)."""
        rows = self.shares()
        work: dict[str, list[ProcessShare]] = {}
        for row in rows:
            if row.work:
                work.setdefault(row.name, []).append(row)
        lines = ["| process | pids | cores |", "|---|---|---|"]
        for name, group in work.items():
            lines.append(f"| {name} (work) | {len(group)} | {sum(r.cores for r in group):.3f} |")
        driver = sum(row.cores for row in rows if row.name == DRIVER)
        lines.append(f"| {DRIVER} | {os.getpid()} | {driver:.3f} |")
        own = [row for row in rows if not row.work and row.name != DRIVER]
        shown = [row for row in own if row.cores >= 0.002]
        lines += [f"| {row.name} | {row.pid} | {row.cores:.3f} |" for row in shown]
        if len(own) > len(shown):
            rest = sum(row.cores for row in own[len(shown) :])
            lines.append(f"| {len(own) - len(shown)} more, each under 0.002 | | {rest:.3f} |")
        total = sum(row.cores for row in own)
        verdict = "ok" if total < floor else "MISSED"
        lines.append(
            f"Ray's own processes: {total:.3f} core together over "
            f"{self._closed - self._opened:.0f} s (floor < {floor:.2f}: {verdict}); "
            f"with the driver {total + driver:.3f}"
        )
        return "\n".join(lines)
