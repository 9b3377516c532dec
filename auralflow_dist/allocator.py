"""glibc heap settings for processes that compute on large arrays (training, separation, decoding).

By default glibc maps every array over a threshold fresh and unmaps it when freed, and a
thread's own arena cannot hold arrays over 64 MiB at all, so each training step or separated
batch page-faults all of its activations in again. On the 2-core CPU machine that cost a training
step 38% of its time and separation 46% (docs/benchmarks.md). With these settings every thread
allocates from the one main heap, which never maps or returns memory: freed arrays are reused.
The price is a heap that stays near its peak, which for these processes is their working set.

The settings must be in place before a thread takes its first allocation (Ray Train runs the
loop on a thread it starts itself), so Ray workers get them from exec on through the environment
(`worker_runtime_env`), and a process already running sets them with `tune` on its main thread.
A ``GLIBC_TUNABLES`` the user has set is passed on instead of ours. Other C libraries: no effect.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

_SETTINGS = {"mmap_max": 0, "arena_max": 1, "trim_threshold": 1 << 30}
_MALLOPT_PARAM = {"trim_threshold": -1, "mmap_max": -4, "arena_max": -8}  # <malloc.h>


def tunables() -> str:
    """``GLIBC_TUNABLES`` for worker processes: the user's own, else ours."""
    ours = ":".join(f"glibc.malloc.{name}={value}" for name, value in _SETTINGS.items())
    return os.environ.get("GLIBC_TUNABLES", ours)


def worker_runtime_env() -> dict[str, Any]:
    """A Ray ``runtime_env`` (merged by Ray with the job's) that starts workers with the settings."""
    return {"env_vars": {"GLIBC_TUNABLES": tunables()}}


@functools.cache
def tune() -> bool:
    """Apply the settings to this process; True where the C library took them.

    Call it on the main thread before starting threads that compute: a thread that has already
    allocated keeps its own arena.
    """
    if "GLIBC_TUNABLES" in os.environ:
        return False  # the user's settings were applied at exec; leave them alone
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return all(mallopt(_MALLOPT_PARAM[name], value) == 1 for name, value in _SETTINGS.items())
