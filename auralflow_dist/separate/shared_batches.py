"""Windows of several files, separated side by side on one GPU, in shared forward passes.

A short file (a few windows) fills a fraction of a forward pass, and on a GPU a pass of a few
windows is mostly fixed cost (kernel launches), so one file at a time leaves most of every pass
empty. Each file's thread hands its windows to `SharedBatches`; the thread that finds no pass
running takes the queued windows of every file (same channel count, up to one pass's worth),
runs them as one pass, and hands each file its slice back. While a pass runs the next one
queues, so no thread waits on a timer when the GPU is busy; when it is idle a pass waits for
the other files' windows, unless every file has queued already, for as long as the last pass
took (at most `MAX_LINGER_S`): the time a running pass would have given them, at the cost of at
most one pass's time per pass for a file that finds itself alone.

A pass never holds more than one file's own pass would (``batch_size`` network inputs), so
files side by side take no more GPU memory per pass than one file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator

import torch

from auralflow_dist.models.separator import Bundle

MAX_LINGER_S = 0.05


@dataclasses.dataclass(eq=False)  # compared by identity: a tensor has no truth value
class _Request:
    windows: torch.Tensor
    result: torch.Tensor | None = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None


class SharedBatches:
    """An `Estimator` that several threads call at once; see the module docstring."""

    def __init__(self, bundle: Bundle, batch_size: int, linger_s: float | None = None) -> None:
        """``linger_s``: a fixed wait for other files' windows instead of the last pass's time."""
        self.bundle, self.batch_size, self.linger_s = bundle, batch_size, linger_s
        self.last_pass_s = 0.0
        self.cond = threading.Condition()
        self.queue: list[_Request] = []
        self.running = False
        self.members = 0  # files being separated now
        self.requests = 0  # calls, the forward passes that served them, and their windows
        self.passes = 0
        self.windows = 0

    @contextlib.contextmanager
    def member(self) -> Iterator[None]:
        """Around one file's separation: a pass waits for members' windows, not for others'."""
        with self.cond:
            self.members += 1
        try:
            yield
        finally:
            with self.cond:
                self.members -= 1
                self.cond.notify_all()

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """Every target's estimate of ``windows`` ``(count, channels, samples)``, as
        `Bundle.estimate` gives it."""
        request = _Request(windows)
        with self.cond:
            self.requests += 1
            self.queue.append(request)
            self.cond.notify_all()
        while True:
            with self.cond:
                self.cond.wait_for(lambda: request.done or not self.running)
                if request.done:
                    break
                self.running = True
                batch = self._gather()
            try:
                self._run(batch)
            finally:  # the next pass must never wait on a leader that is gone
                with self.cond:
                    self.running = False
                    self.cond.notify_all()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _gather(self) -> list[_Request]:
        """The queued requests of the head's shape, up to one pass, after waiting (lock held)
        a while (see the module docstring) for a full pass or for every member to have queued."""
        head = self.queue[0]
        shape = head.windows.shape[1:]
        cap = self.bundle.windows_per_pass(shape[0], self.batch_size)

        def ready() -> bool:
            alike = [r for r in self.queue if r.windows.shape[1:] == shape]
            return len(self.queue) >= self.members or sum(len(r.windows) for r in alike) >= cap

        linger = min(self.last_pass_s, MAX_LINGER_S) if self.linger_s is None else self.linger_s
        self.cond.wait_for(ready, timeout=linger)
        batch, rest, count = [], [], 0
        for r in self.queue:
            if r.windows.shape[1:] != shape or (batch and count + len(r.windows) > cap):
                rest.append(r)
            else:
                batch.append(r)
                count += len(r.windows)
        self.queue = rest
        return batch

    def _run(self, batch: list[_Request]) -> None:
        """One pass over the batch's windows (the lock not held); each request gets its slice."""
        start = time.perf_counter()
        try:
            windows = torch.cat([r.windows for r in batch])
            out = self.bundle.estimate(windows, self.batch_size)
        except BaseException as err:  # every file of the pass sees the failure
            for r in batch:
                r.error = err
            return
        self.last_pass_s = time.perf_counter() - start
        self.passes += 1
        self.windows += len(windows)
        for r, part in zip(batch, out.split([len(r.windows) for r in batch]), strict=True):
            r.result = part
