"""Connecting to Ray: an existing cluster (``--address`` / ``RAY_ADDRESS``) or a local instance."""

from __future__ import annotations

import os

import ray

# Logical CPUs a local instance announces beyond what training reserves, so that Ray Data's
# decoding tasks always find a slot (Ray Train excludes its own reservation from Data's budget).
DATA_CPU_HEADROOM = 2
# Ray starts workers at nice 15 so its control plane stays responsive; then every wake-up of
# the raylet, GCS or a driver thread preempts a compute thread and stalls its whole torch
# thread team: on 2 cores that cost training 5-13% and separation about 7% (docs/benchmarks.md).
# Our workers are the node's work, so they run at the control plane's priority. Cluster
# configs set the same through ``RAY_worker_niceness=0`` (cluster/).
WORKER_NICENESS = 0


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
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=True,
        _system_config={"worker_niceness": WORKER_NICENESS},
    )
