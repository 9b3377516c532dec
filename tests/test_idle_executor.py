"""Ray Data's executor, held back by a slow consumer, waits instead of spinning (issue 19)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from ray.data import ExecutionResources

from auralflow_dist import idle_executor

pytestmark = pytest.mark.usefixtures("ray_local")

BLOCK_MB = 20
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def test_the_driver_and_the_workers_have_the_waiting_loop_step() -> None:
    idle_executor.install()
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    @ray.remote(num_cpus=0)
    def patched() -> str:
        from ray.data._internal.execution.streaming_executor import StreamingExecutor

        return StreamingExecutor._scheduling_loop_step.__code__.co_name

    assert StreamingExecutor._scheduling_loop_step.__code__.co_name == "waiting_step"
    assert ray.get(patched.remote()) == "waiting_step"


@pytest.mark.timeout(180)
def test_a_split_coordinator_held_back_by_a_slow_trainer_stays_under_a_tenth_of_a_core() -> None:
    """Without the wait, this coordinator took about half a core while the consumer slept."""
    size = BLOCK_MB * 1_000_000 // 2

    def block(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # by value to the workers
        return {"x": np.zeros((1, size), np.int16)}

    def pid_of(actor: object) -> int:
        return os.getpid()

    dataset = ray.data.from_items([{"id": i} for i in range(24)], override_num_blocks=24)
    dataset = dataset.map_batches(block, batch_size=None, num_cpus=1)
    # A budget of a few blocks: the executor is held back for most of the epoch, as an epoch of
    # real-length songs larger than the object store's share is.
    dataset.context.execution_options.resource_limits = ExecutionResources(
        object_store_memory=4 * BLOCK_MB * 1_000_000
    )
    shard = dataset.streaming_split(1, equal=True)[0]
    coordinator = shard._coord_actor
    pid = ray.get(coordinator.__ray_call__.remote(pid_of))
    samples = []
    for i, _ in enumerate(shard.iter_batches(batch_size=None, prefetch_batches=0)):
        time.sleep(0.5)  # the trainer's step
        if i >= 6:  # past the start, in the held-back steady state
            samples.append((time.monotonic(), _cpu_seconds(pid)))
    (t0, c0), (t1, c1) = samples[0], samples[-1]
    share = (c1 - c0) / (t1 - t0)
    assert share < 0.1, f"the split coordinator used {share:.2f} of a core"
