"""GPU utilisation over a stretch of work, sampled on a thread from NVML (through torch).

NVML reports the whole device, so the driver process can sample while Ray's workers use the GPU.
The mean is taken from the first busy sample to the last: start-up (Ray starting its workers,
CUDA initialising) and teardown would otherwise dilute it, and they are not training or
separating.
"""

from __future__ import annotations

import threading
from types import TracebackType

import torch


class UtilizationSampler:
    """``with UtilizationSampler() as gpu: ...`` then ``gpu.describe()``; CPU runs sample nothing."""

    def __init__(self, device: str, interval_s: float = 0.1) -> None:
        self.enabled = device.startswith("cuda")
        self.interval_s = interval_s
        self.samples: list[int] = []
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.samples.append(torch.cuda.utilization())
            except Exception as err:  # no NVML bindings (nvidia-ml-py) or no driver access
                self.error = f"{type(err).__name__}: {err}"
                return

    def __enter__(self) -> UtilizationSampler:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()

    def mean(self) -> float | None:
        """Mean percent from the first to the last busy sample; None when nothing was busy."""
        busy = [i for i, s in enumerate(self.samples) if s > 0]
        if not busy:
            return None
        window = self.samples[busy[0] : busy[-1] + 1]
        return sum(window) / len(window)

    def describe(self) -> str:
        if not self.enabled:
            return ""
        if self.error:
            return f", GPU utilisation not sampled ({self.error})"
        mean = self.mean()
        if mean is None:
            return f", GPU idle in all {len(self.samples)} samples"
        return f", GPU utilisation {mean:.0f}%"
