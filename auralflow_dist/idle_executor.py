"""Ray Data's streaming executor waits, instead of spinning, while it has no task to wait on.

Ray 2.60's scheduling loop blocks only in ``ray.wait`` on running tasks (0.1 s at most). When
the consumer is slower than decoding and the object-store budget is full (training on a CPU, an
epoch of real-length songs larger than the budget), finished tasks' outputs are held back
unread: ``ray.wait`` finds them ready at once, each step does nothing and returns, and the loop
runs flat out holding its process's GIL: 0.53-0.81 of a core for the training split's
`SplitCoordinator` (issue 19, docs/benchmarks.md), taken from the trainer. Here a step that did
nothing (no task started, no block made or queued) without waiting, while outputs are held
back, is followed by the 0.1 s wait a step with running tasks has at most: a block the consumer
frees is scheduled within 0.1 s, against decode tasks of seconds.

The executor runs in whatever process iterates a dataset: the split coordinator (an actor of
Ray Train's), a training worker (the validation set), the separation driver. `install` runs in
the driver (`runtime.connect`) and, through `RUNTIME_ENV`'s setup hook, in every worker process
of the job. The price, measured on one epoch, is at the job's start: Ray starts the workers of
a job with a setup hook 2-3 s later (a no-op hook costs the same).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
import time
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

IDLE_WAIT_S = 0.1  # Ray's own wait for a running task (WAIT_FOR_TASK_COMPLETION_TIMEOUT_S)
RUNTIME_ENV = {"worker_process_setup_hook": f"{__name__}.install"}


_EXECUTOR_MODULE = "ray.data._internal.execution.streaming_executor"


def install() -> None:
    """Patch the executor in this process: now where Ray Data's executor is loaded, else when
    it is (importing Ray Data takes 0.7 s, which a worker that never iterates a dataset, or
    every decode task's worker starting at once, should not pay)."""
    module = sys.modules.get(_EXECUTOR_MODULE)
    if module is not None:
        _patch(module.StreamingExecutor)
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds the executor's module as the normal path would, and patches it once loaded."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> ModuleSpec | None:
        if name != _EXECUTOR_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def load_and_patch(module: ModuleType) -> None:
            load(module)
            _patch(module.StreamingExecutor)

        spec.loader.exec_module = load_and_patch  # type: ignore[method-assign]
        return spec


def _patch(executor: type) -> None:
    step = getattr(executor, "_scheduling_loop_step", None)
    if step is None or getattr(step, "waits_when_idle", False):
        return  # a Ray without this loop step (the test shows it), or patched already

    @functools.wraps(step)
    def waiting_step(self: Any, topology: Any) -> bool:
        before, start = _progress(topology), time.perf_counter()
        go_on = step(self, topology)
        spun = time.perf_counter() - start < IDLE_WAIT_S / 2  # it did not wait on a task
        held = any(getattr(op, "_in_task_output_backpressure", True) for op in topology)
        if go_on and spun and held and _progress(topology) == before:
            time.sleep(IDLE_WAIT_S)
        return go_on

    waiting_step.waits_when_idle = True  # type: ignore[attr-defined]
    executor._scheduling_loop_step = waiting_step  # type: ignore[attr-defined]


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
