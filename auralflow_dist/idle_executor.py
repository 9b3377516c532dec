"""Ray Data's streaming executor waits, instead of spinning, while it has no task to wait on.

Ray 2.60's scheduling loop blocks only in ``ray.wait`` on running tasks (0.1 s at most). When
the consumer is slower than decoding and the object-store budget is full (training on a CPU, an
epoch of real-length songs larger than the budget), finished tasks' outputs are held back
unread: ``ray.wait`` finds them ready at once, each step does nothing and returns, and the loop
runs flat out holding its process's GIL, measured at 0.53 of a core for the training split's
`SplitCoordinator` (issue 19, docs/benchmarks.md), taken from the trainer. Here a step that did
nothing (no task started, no block made or queued) without waiting, while outputs are held
back, is followed by the 0.1 s wait a step with running tasks has at most: a block the consumer frees is scheduled within
0.1 s, against decode tasks of seconds.

The executor runs in whatever process iterates a dataset: the split coordinator (an actor of
Ray Train's), a training worker (the validation set), the separation driver. `install` runs in
the driver (`runtime.connect`) and, through `RUNTIME_ENV`'s setup hook, in every worker process
of the job.
"""

from __future__ import annotations

import functools
import time
from typing import Any

IDLE_WAIT_S = 0.1  # Ray's own wait for a running task (WAIT_FOR_TASK_COMPLETION_TIMEOUT_S)
RUNTIME_ENV = {"worker_process_setup_hook": f"{__name__}.install"}


@functools.cache
def install() -> bool:
    """Patch the executor once per process; False where this Ray has no such loop step."""
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    step = getattr(StreamingExecutor, "_scheduling_loop_step", None)
    if step is None:
        return False

    @functools.wraps(step)
    def waiting_step(self: Any, topology: Any) -> bool:
        before, start = _progress(topology), time.perf_counter()
        go_on = step(self, topology)
        spun = time.perf_counter() - start < IDLE_WAIT_S / 2  # it did not wait on a task
        held = any(getattr(op, "_in_task_output_backpressure", True) for op in topology)
        if go_on and spun and held and _progress(topology) == before:
            time.sleep(IDLE_WAIT_S)
        return go_on

    StreamingExecutor._scheduling_loop_step = waiting_step
    return True


def _progress(topology: Any) -> tuple[int, ...]:
    """What a step that does something changes: tasks started, blocks made, blocks queued."""
    return tuple(
        n
        for op, state in topology.items()
        for n in (
            op.metrics.num_tasks_submitted,
            op.metrics.num_task_outputs_generated,
            state.output_queue.num_blocks,
        )
    )
