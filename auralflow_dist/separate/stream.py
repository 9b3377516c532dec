"""Separation of a signal that arrives block by block, equal to one ``separate()`` on the whole.

`SpectrogramMaskModel.separate` resamples the whole file to the model's rate, cuts it into
windows (`frame_signal`), separates them and blends them back (`overlap_add`), then resamples
back. Each of those steps only looks a bounded distance ahead, so each has a streaming twin here
that emits a sample as soon as every input it depends on has arrived:

- `StreamResampler`: torchaudio's sinc resampler is an FIR filter applied once per period of
  ``orig / gcd`` input samples; a block of whole periods with enough real context on both sides
  gives exactly the output samples the whole-signal call gives.
- `WindowStream`: windows are cut on the same grid as `frame_signal`; a sample is blended (with
  `overlap_add`, so with the same weights) once the last window covering it is separated, and
  windows are kept only while they still cover samples not yet emitted.

Memory is bounded by the block size plus one window, however long the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from auralflow_dist.audio import resample
from auralflow_dist.audio.windowing import num_frames, overlap_add
from auralflow_dist.models.mask_model import SpectrogramMaskModel

# torchaudio's default resampling kernel: sinc with 6 zero crossings, cut off at 0.99 Nyquist.
_LOWPASS_WIDTH = 6
_ROLLOFF = 0.99

Estimator = Callable[[torch.Tensor], torch.Tensor]


class StreamResampler:
    """`resample` of a signal given in blocks; the concatenated outputs equal the whole-signal one."""

    def __init__(self, orig_sr: int, new_sr: int, channels: int, device: torch.device) -> None:
        self.orig_sr, self.new_sr = orig_sr, new_sr
        g = math.gcd(orig_sr, new_sr)
        self.period, self.out_period = orig_sr // g, new_sr // g
        base = min(self.period, self.out_period) * _ROLLOFF
        reach = math.ceil(_LOWPASS_WIDTH * self.period / base)
        # Whole periods (so the filter phases line up), twice the kernel's reach to be safe.
        self.context = self.period * math.ceil(2 * reach / self.period)
        # Input from global index `done - context`; the whole-signal call zero-pads the start.
        self.pending = torch.zeros((channels, self.context), device=device)
        self.done = 0  # input samples (whole periods) whose output has been emitted
        self.received = 0
        self.emitted = 0

    def push(self, x: torch.Tensor) -> torch.Tensor:
        """Resampled samples that ``x`` (channels, n) completes; possibly none yet."""
        if self.orig_sr == self.new_sr:
            return x
        self.pending = torch.cat([self.pending, x], dim=-1)
        self.received += x.shape[-1]
        return self._run()

    def finish(self) -> torch.Tensor:
        """The rest, ending where the whole-signal call ends (``ceil(new * n / orig)`` samples)."""
        if self.orig_sr == self.new_sr:
            return self.pending[:, :0]
        periods = math.ceil(self.received / self.period)
        self.pending = F.pad(
            self.pending, (0, periods * self.period - self.received + self.context)
        )
        before = self.emitted
        out = self._run()
        total = math.ceil(self.out_period * self.received / self.period)
        return out[:, : total - before]

    def _run(self) -> torch.Tensor:
        end = self.done - self.context + self.pending.shape[-1]
        ready = (end - self.context) // self.period * self.period  # output complete up to here
        if ready <= self.done:
            return self.pending[:, :0]
        span = ready - self.done
        y = resample(self.pending[:, : span + 2 * self.context], self.orig_sr, self.new_sr)
        skip = self.context // self.period * self.out_period
        out = y[:, skip : skip + span // self.period * self.out_period]
        self.pending = self.pending[:, span:]
        self.done = ready
        self.emitted += out.shape[-1]
        return out


class WindowStream:
    """`frame_signal` -> estimator -> `overlap_add` on a stream, with the whole-signal result."""

    def __init__(
        self, estimate: Estimator, window: int, padding: int, channels: int, device: torch.device
    ) -> None:
        self.estimate, self.window, self.padding = estimate, window, padding
        self.hop = window - padding
        # The padded signal from the start of the next window; frame_signal's left padding first.
        self.buffer = torch.zeros((channels, padding), device=device)
        self.next_window = 0
        self.estimates = torch.zeros((0, channels, window), device=device)
        self.first_window = 0  # the window `estimates[0]` belongs to
        self.received = 0
        self.emitted = 0

    def push(self, x: torch.Tensor) -> torch.Tensor:
        """Separated samples that ``x`` (channels, n) completes; possibly none yet."""
        self.buffer = torch.cat([self.buffer, x], dim=-1)
        self.received += x.shape[-1]
        self._separate((self.padding + self.received - self.window) // self.hop + 1)
        # Samples before the next window's start lie in no window still to come.
        return self._blend(self.next_window * self.hop - self.padding)

    def finish(self) -> torch.Tensor:
        """The rest: the last windows see zeros past the end, as in `frame_signal`."""
        count = num_frames(self.received, self.window, self.hop)
        need = (count - self.next_window - 1) * self.hop + self.window - self.buffer.shape[-1]
        self.buffer = F.pad(self.buffer, (0, max(need, 0)))
        self._separate(count)
        return self._blend(self.received)

    def _separate(self, count: int) -> None:
        """Separate windows up to ``count`` (exclusive)."""
        if count <= self.next_window:
            return
        span = (count - self.next_window - 1) * self.hop + self.window
        frames = self.buffer[:, :span].unfold(-1, self.window, self.hop).transpose(0, 1)
        self.estimates = torch.cat([self.estimates, self.estimate(frames.contiguous())])
        self.buffer = self.buffer[:, (count - self.next_window) * self.hop :]
        self.next_window = count

    def _blend(self, end: int) -> torch.Tensor:
        """Overlap-add samples ``[emitted, end)``, then drop the windows that are done."""
        if end <= self.emitted:
            return self.buffer[:, :0]
        start = self.first_window * self.hop
        out = overlap_add(self.estimates, self.hop, end - start)[:, self.emitted - start :]
        self.emitted = end
        # Window k covers samples before (k + 1) * hop.
        drop = self.emitted // self.hop - self.first_window
        self.estimates = self.estimates[drop:]
        self.first_window += drop
        return out


def window_estimator(model: SpectrogramMaskModel, batch_size: int) -> Estimator:
    """Separate windows ``(K, channels, window)`` with the channel rules of ``separate()``.

    A mono model separates every channel on its own; a stereo model takes stereo as it is and
    any other channel count as each channel duplicated to stereo, averaged back afterwards.
    Windows of all channel groups share batches.
    """
    want = model.config.num_channels
    run = model.estimate_windows

    def estimate(frames: torch.Tensor) -> torch.Tensor:
        count, channels, window = frames.shape
        if want == 1:
            return run(frames.reshape(count * channels, 1, window), batch_size).reshape(
                frames.shape
            )
        if channels == 2:
            return run(frames, batch_size)
        stereo = frames.reshape(count * channels, 1, window).expand(-1, 2, -1)
        return run(stereo, batch_size).mean(dim=1).reshape(frames.shape)

    return estimate


class StreamingSeparation:
    """Input blocks at the file's rate in, (target, residual) blocks at the output rate out."""

    def __init__(
        self,
        model: SpectrogramMaskModel,
        sample_rate: int,
        channels: int,
        output_rate: int,
        padding: int,
        batch_size: int,
    ) -> None:
        model_rate = model.config.sample_rate
        device = self.device = model.device
        self.channels = channels
        self.to_model = StreamResampler(sample_rate, model_rate, channels, device)
        self.windows = WindowStream(
            window_estimator(model, batch_size), model.config.num_samples, padding, channels, device
        )
        self.from_model = StreamResampler(model_rate, sample_rate, channels, device)
        self.to_output = StreamResampler(sample_rate, output_rate, 2 * channels, device)
        self.mixture = torch.zeros((channels, 0), device=device)  # input not yet matched

    def push(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target and residual, (channels, n) on the CPU, for the samples ``block`` completes."""
        x = block.to(self.device)
        self.mixture = torch.cat([self.mixture, x], dim=-1)
        target = self.from_model.push(self.windows.push(self.to_model.push(x)))
        return self._emit(self.to_output.push(self._pair(target)))

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The remaining samples, so the outputs are as long as ``separate()``'s."""
        model_side = self.windows.push(self.to_model.finish())
        model_side = torch.cat([model_side, self.windows.finish()], dim=-1)
        target = self.from_model.push(model_side)
        target = torch.cat([target, self.from_model.finish()], dim=-1)
        pair = self.to_output.push(self._pair(target))
        return self._emit(torch.cat([pair, self.to_output.finish()], dim=-1))

    def _pair(self, target: torch.Tensor) -> torch.Tensor:
        """Target over residual (mixture - target) for the input samples the target covers."""
        # The model side runs a few samples past the input's end; separate() trims them.
        target = target[:, : self.mixture.shape[-1]]
        n = target.shape[-1]
        pair = torch.cat([target, self.mixture[:, :n] - target])
        self.mixture = self.mixture[:, n:]
        return pair

    def _emit(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pair = pair.cpu()
        return pair[: self.channels], pair[self.channels :]
