"""Connecting to Ray: an existing cluster (``--address`` / ``RAY_ADDRESS``) or a local instance."""

from __future__ import annotations

import ctypes
import functools
import os

import ray

# Logical CPUs a local instance announces beyond what training reserves, so that Ray Data's
# decoding tasks always find a slot (Ray Train excludes its own reservation from Data's budget).
DATA_CPU_HEADROOM = 2
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def connect(address: str | None = None, reserved_cpus: float = 0.0) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``), else start a local Ray sized for the job."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    cpus = max(os.cpu_count() or 1, int(reserved_cpus + 0.999) + DATA_CPU_HEADROOM)
    # "local": a fresh instance, never a stale one some earlier `ray start` left behind.
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=True)


@functools.cache
def keep_freed_memory() -> None:
    """Keep freed megabyte-sized arrays in this process's heap instead of handing them back.

    By default glibc maps each large array fresh and unmaps it when freed, so every audio chunk
    or activation tensor page-faults its memory in again: that doubled the decode cost, and cost
    a training worker's thread (whose arena cannot grow like the main heap) 9% of its steps.
    Heap use stays near its peak. No-op where the C library has no ``mallopt`` (not glibc).
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 64 << 20)
        mallopt(_M_TRIM_THRESHOLD, 256 << 20)
