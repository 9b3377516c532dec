"""Cut audio of any length into fixed-size windows for a network, and blend the outputs back.

Both ends are padded by at least ``window - hop`` so every real sample lies in the steady-state
region where the same number of windows overlap: the first and last samples are blended like any
other. The outputs are cross-faded with a strictly positive Hann-shaped window and divided by its
overlap-added sum, so the weights form an exact partition of unity for any ``hop <= window``:
framing then overlap-adding unchanged frames returns the input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from auralflow_dist.errors import ConfigError


def _check(window: int, hop: int) -> None:
    if window < 1:
        raise ConfigError("window", f"must be positive, not {window}")
    if not 1 <= hop <= window:
        raise ConfigError("hop", f"must be in [1, window={window}], not {hop}")


def num_frames(length: int, window: int, hop: int) -> int:
    """Windows `frame_signal` cuts from ``length`` samples."""
    return math.ceil((length + window - hop) / hop)


def frame_signal(audio: torch.Tensor, window: int, hop: int) -> tuple[torch.Tensor, int]:
    """Windows ``(K, channels, window)`` of audio ``(channels, samples)``, zero padded, and ``K``."""
    _check(window, hop)
    length = audio.shape[-1]
    count = num_frames(length, window, hop)
    start = window - hop
    end = (count - 1) * hop + window - start - length
    padded = F.pad(audio, (start, end))
    frames = padded.unfold(-1, window, hop).transpose(0, 1).contiguous()
    return frames, count


def _fade(window: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # A Hann window without its zero end points: tapered, yet every sample keeps a non-zero weight,
    # even where one window alone covers it (hop == window).
    return torch.hann_window(window + 2, periodic=False, device=device, dtype=dtype)[1:-1]


def overlap_add(frames: torch.Tensor, hop: int, length: int) -> torch.Tensor:
    """Audio ``(channels, length)`` blended from windows ``(K, channels, window)`` of `frame_signal`."""
    count, channels, window = frames.shape
    _check(window, hop)
    if not 1 <= length <= count * hop:
        raise ConfigError(
            "length", f"must be in [1, {count * hop}] for {count} windows, not {length}"
        )
    fade = _fade(window, frames.device, frames.dtype)
    padded_length = (count - 1) * hop + window
    fold = {"output_size": (1, padded_length), "kernel_size": (1, window), "stride": (1, hop)}
    # fold sums column k of (channels * window, K) into positions [k * hop, k * hop + window).
    weighted = (frames * fade).permute(1, 2, 0).reshape(1, channels * window, count)
    total = F.fold(weighted, **fold).reshape(channels, padded_length)
    weight = F.fold(fade[None, :, None].expand(1, window, count), **fold).reshape(padded_length)
    start = window - hop
    return (total / weight)[:, start : start + length]
