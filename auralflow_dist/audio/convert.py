"""Bring decoded audio to the sample rate and channel count a model was trained on.

Both functions take ``np.ndarray`` or ``torch.Tensor`` of shape ``(..., channels, frames)`` and
return the same type, so data workers (numpy) and GPU workers (torch) share one implementation.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch
import torchaudio.functional

from auralflow_dist.errors import ConfigError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

# torchaudio's default resampling kernel: sinc with 6 zero crossings, cut off at 0.99 Nyquist.
_LOWPASS_WIDTH = 6
_ROLLOFF = 0.99


def resample(audio: ArrayT, orig_sr: int, new_sr: int) -> ArrayT:
    """Band-limited sinc resampling along the last axis; the input itself when the rates match."""
    if orig_sr == new_sr:
        return audio
    if isinstance(audio, torch.Tensor):
        return torchaudio.functional.resample(audio, orig_sr, new_sr)
    out = torchaudio.functional.resample(torch.from_numpy(audio), orig_sr, new_sr)
    return out.numpy()


def resampling_context(orig_sr: int, new_sr: int) -> int:
    """Input frames of real signal needed on each side of a stretch of audio so that resampling
    the stretch alone gives exactly the samples the whole signal's resampling gives there.

    Twice the sinc kernel's reach, rounded up to whole periods of ``orig / gcd`` input frames, so
    the stretch's filter phases line up with the whole signal's and the context maps to whole
    output samples.
    """
    period = orig_sr // math.gcd(orig_sr, new_sr)
    out_period = new_sr // math.gcd(orig_sr, new_sr)
    reach = math.ceil(_LOWPASS_WIDTH * period / (min(period, out_period) * _ROLLOFF))
    return period * math.ceil(2 * reach / period)


def to_channels(audio: ArrayT, num_channels: int) -> ArrayT:
    """Mix or split the channel axis (-2) to ``num_channels``.

    Mono is the mean of all channels; mono to N duplicates it; N to fewer (but not one) keeps the
    first channels, which for WAV channel order are front left and right.
    """
    if num_channels < 1:
        raise ConfigError("num_channels", f"must be at least 1, not {num_channels}")
    channels = audio.shape[-2]
    if channels == num_channels:
        return audio
    if num_channels == 1:
        return audio.mean(-2, keepdims=True)
    if channels == 1:
        reps = (1,) * (audio.ndim - 2) + (num_channels, 1)
        return np.tile(audio, reps) if isinstance(audio, np.ndarray) else audio.repeat(reps)
    if channels > num_channels:
        return audio[..., :num_channels, :]
    raise ConfigError("num_channels", f"cannot make {num_channels} channels from {channels}")
