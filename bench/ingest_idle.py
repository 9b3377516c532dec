"""CPU of Ray Data's split coordinator while a slow trainer holds the executor back (issue 19).

The training split's executor runs in Ray Train's `SplitCoordinator` actor. When decoding is
faster than training and the epoch is larger than the object-store budget (a CPU trainer on
real-length songs), it spends most of the epoch held back; Ray 2.60's loop then spins
(`auralflow_dist.idle_executor`). This runs one epoch of blocks the size of a decode task's
(68 MB) through ``streaming_split`` to a consumer that takes a
block every ``--step`` seconds, twice, each on a fresh local Ray: Ray's loop as it ships, then
with the waiting step. Prints the coordinator's share of a core in the held-back part of the
epoch (the first quarter left out) and the epoch's wall-clock time, each way.

    python -m bench.ingest_idle [--blocks 24] [--step 0.5] [--budget-blocks 4]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import ray
from ray.data import ExecutionResources

from auralflow_dist import idle_executor, runtime

BLOCK_BYTES = 68_000_000  # a decode task's output block (pipeline.CHUNKS_PER_TASK chunks)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _epoch(blocks: int, step: float, budget_blocks: int, decode_s: float) -> tuple[float, float]:
    """The coordinator's share of a core once held back, and the epoch's seconds."""

    def decode(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(decode_s)  # a decode task's time, without its CPU: only Ray's loop is measured
        return {"x": np.zeros((1, BLOCK_BYTES // 2), np.int16)}

    def pid_of(actor: object) -> int:
        return os.getpid()

    dataset = ray.data.from_items([{"id": i} for i in range(blocks)], override_num_blocks=blocks)
    dataset = dataset.map_batches(decode, batch_size=None, num_cpus=1)
    dataset.context.execution_options.resource_limits = ExecutionResources(
        object_store_memory=budget_blocks * BLOCK_BYTES
    )
    shard = dataset.streaming_split(1, equal=True)[0]
    pid = ray.get(shard._coord_actor.__ray_call__.remote(pid_of))
    start, samples = time.monotonic(), []
    for _ in shard.iter_batches(batch_size=None, prefetch_batches=0):
        time.sleep(step)
        samples.append((time.monotonic(), _cpu_seconds(pid)))
    (t0, c0), (t1, c1) = samples[len(samples) // 4], samples[-1]
    return (c1 - c0) / (t1 - t0), time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=24, help="decode tasks in the epoch")
    parser.add_argument(
        "--step", type=float, default=0.5, help="seconds the consumer takes a block"
    )
    parser.add_argument("--budget-blocks", type=int, default=4, help="object-store budget")
    parser.add_argument(
        "--decode-seconds", type=float, default=0.0, help="a decode task's time (asleep: no CPU)"
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rows = []
    for way, waiting in (("Ray's loop as it ships", False), ("with the waiting step", True)):
        with runtime.isolated_state_api():
            ray.init(
                address="local",
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env=idle_executor.RUNTIME_ENV if waiting else None,
            )
        ray.data.DataContext.get_current().enable_progress_bars = False
        share, wall = _epoch(args.blocks, args.step, args.budget_blocks, args.decode_seconds)
        ray.shutdown()
        rows.append((way, share, wall))
    print(
        f"{args.blocks} blocks of {BLOCK_BYTES / 1e6:.0f} MB, a block taken every "
        f"{args.step:g} s, a budget of {args.budget_blocks} blocks, 2 CPUs"
    )
    print("| split coordinator | share of a core, held back | epoch seconds |")
    print("|---|---|---|")
    for way, share, wall in rows:
        print(f"| {way} | {share:.2f} | {wall:.1f} |")
    print(f"epoch time, waiting / as it ships: {rows[1][2] / rows[0][2]:.2f}x")


if __name__ == "__main__":
    main()
