"""Kill what is still running of some processes after a grace period, from a process of its own.

`runtime.end_local_ray` terminates a local Ray's processes from a signal handler that must exit
with its own status at once: once the raylet is gone, Ray's core worker in that process exits
with status 1 as soon as it notices. So the grace period and the kill that follows are waited
out here, in a detached child that imports nothing but the standard library.

    python -m auralflow_dist.reap GRACE_S PID [PID ...]
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time


def _running(pid: int) -> bool:
    """Alive and not a zombie (an ended child whose parent has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: ask the kernel
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def reap(pids: list[int], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _running(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    reap([int(p) for p in sys.argv[2:]], float(sys.argv[1]))
