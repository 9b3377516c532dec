"""The separation engine: any length of audio, block by block, through a window estimator.

Every separation path runs through `SeparationEngine`: the bulk job pushes decoded blocks as they
arrive, and a whole tensor (``Separator.separate``, evaluation) is the finish of a stream of
one block. The steps, each looking only a bounded distance ahead so that a sample is emitted as
soon as every input it depends on has arrived:

1. `StreamResampler` to the model's rate: torchaudio's sinc resampler is an FIR filter applied
   once per period of ``orig / gcd`` input samples, so a block of whole periods with enough real
   context on both sides gives exactly the samples the whole-signal call gives.
2. `WindowStream`: windows on `frame_signal`'s grid, separated in batches into every target,
   blended with `overlap_add`'s weights (a partition of unity) once the last window covering a
   sample is in. The estimator sees every channel of a window at once (the channel rules and a
   multichannel Wiener filter live there).
3. Back to the input's rate, then the residual (mixture minus the targets), then the output rate.

Memory is bounded by the block size plus one window, however long the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from auralflow_dist.audio.convert import resample, resampling_context
from auralflow_dist.audio.windowing import num_frames, overlap_add

# Windows (count, channels, samples) -> estimates (count, targets, channels, samples).
Estimator = Callable[[torch.Tensor], torch.Tensor]


class StreamResampler:
    """`resample` of a signal given in blocks; the concatenated outputs equal the whole-signal one."""

    def __init__(self, orig_sr: int, new_sr: int, channels: int, device: torch.device) -> None:
        self.orig_sr, self.new_sr = orig_sr, new_sr
        g = math.gcd(orig_sr, new_sr)
        self.period, self.out_period = orig_sr // g, new_sr // g
        self.context = resampling_context(orig_sr, new_sr)
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
        self,
        estimate: Estimator,
        window: int,
        padding: int,
        channels: int,
        device: torch.device,
        targets: int = 1,
    ) -> None:
        self.estimate, self.window, self.padding = estimate, window, padding
        self.hop = window - padding
        # The padded signal from the start of the next window; frame_signal's left padding first.
        self.buffer = torch.zeros((channels, padding), device=device)
        self.next_window = 0
        # Every target's channels side by side: (windows, targets * channels, window).
        self.estimates = torch.zeros((0, targets * channels, window), device=device)
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

    def finish(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """The rest, after a last block ``x``: the last windows see zeros past the end, as in
        `frame_signal`. Every window not yet separated goes in one call, so a whole signal given
        here at once fills its batches as `frame_signal` would."""
        if x is not None:
            self.buffer = torch.cat([self.buffer, x], dim=-1)
            self.received += x.shape[-1]
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
        estimates = self.estimate(frames.contiguous())
        self.estimates = torch.cat([self.estimates, estimates.flatten(1, 2)])
        self.buffer = self.buffer[:, (count - self.next_window) * self.hop :]
        self.next_window = count

    def _blend(self, end: int) -> torch.Tensor:
        """Overlap-add samples ``[emitted, end)``, then drop the windows that are done."""
        if end <= self.emitted:
            return self.estimates.new_zeros((self.estimates.shape[1], 0))
        start = self.first_window * self.hop
        out = overlap_add(self.estimates, self.hop, end - start)[:, self.emitted - start :]
        self.emitted = end
        # Window k covers samples before (k + 1) * hop.
        drop = self.emitted // self.hop - self.first_window
        self.estimates = self.estimates[drop:]
        self.first_window += drop
        return out


class SeparationEngine:
    """Input blocks at the file's rate in, target and residual blocks at the output rate out.

    ``estimate`` separates windows of ``window`` samples at ``model_rate`` into ``targets``
    estimates; everything else (rates, overlap, the residual) is handled here.
    """

    def __init__(
        self,
        estimate: Estimator,
        *,
        model_rate: int,
        window: int,
        sample_rate: int,
        channels: int,
        padding: int,
        targets: int = 1,
        output_rate: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        device = self.device = torch.device(device)
        self.channels, self.targets = channels, targets
        self.to_model = StreamResampler(sample_rate, model_rate, channels, device)
        self.windows = WindowStream(estimate, window, padding, channels, device, targets)
        self.from_model = StreamResampler(model_rate, sample_rate, targets * channels, device)
        self.to_output = StreamResampler(
            sample_rate, output_rate or sample_rate, (targets + 1) * channels, device
        )
        self.mixture = torch.zeros((channels, 0), device=device)  # input not yet matched

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """The targets then the residual, ``(targets + 1, channels, n)`` on the CPU, for the
        samples ``block`` completes."""
        x = block.to(self.device)
        self.mixture = torch.cat([self.mixture, x], dim=-1)
        targets = self.from_model.push(self.windows.push(self.to_model.push(x)))
        return self._emit(self.to_output.push(self._with_residual(targets)))

    def finish(self, block: torch.Tensor | None = None) -> torch.Tensor:
        """The remaining samples, after a last ``block``: the outputs are as long as the input
        (at the output rate)."""
        x = self.mixture[:, :0] if block is None else block.to(self.device)
        self.mixture = torch.cat([self.mixture, x], dim=-1)
        rest = torch.cat([self.to_model.push(x), self.to_model.finish()], dim=-1)
        targets = self.from_model.push(self.windows.finish(rest))
        targets = torch.cat([targets, self.from_model.finish()], dim=-1)
        stems = self.to_output.push(self._with_residual(targets))
        return self._emit(torch.cat([stems, self.to_output.finish()], dim=-1))

    def run(self, audio: torch.Tensor) -> torch.Tensor:
        """A whole signal ``(channels, samples)``: the finish of a stream of one block."""
        return self.finish(audio)

    def _with_residual(self, targets: torch.Tensor) -> torch.Tensor:
        """The targets over the residual (mixture - their sum) for the input samples they cover."""
        # The model side runs a few samples past the input's end (resampling rounds up).
        targets = targets[:, : self.mixture.shape[-1]]
        n = targets.shape[-1]
        total = targets.reshape(self.targets, self.channels, n).sum(dim=0)
        stems = torch.cat([targets, self.mixture[:, :n] - total])
        self.mixture = self.mixture[:, n:]
        return stems

    def _emit(self, stems: torch.Tensor) -> torch.Tensor:
        return stems.cpu().reshape(self.targets + 1, self.channels, -1)
