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

from auralflow_dist.errors import AudioError, ConfigError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

# torchaudio's default resampling kernel: sinc with 6 zero crossings, cut off at 0.99 Nyquist.
_LOWPASS_WIDTH = 6
_ROLLOFF = 0.99
# The largest kernel `check_resampling` lets torchaudio build: 64 MB of float32 (its build goes
# through float64 temporaries of that many elements too). Every pair of standard rates needs
# under 0.6 M (11025 -> 32000 Hz the most); 44100 -> 44101 Hz would need 1.9 G (7.8 GB).
MAX_KERNEL_ELEMENTS = 1 << 24


def resampling_kernel_elements(orig_sr: int, new_sr: int) -> int:
    """Elements of the sinc kernel torchaudio builds to resample ``orig_sr`` to ``new_sr``.

    As in ``torchaudio.functional.functional._get_sinc_resample_kernel``: one row per output
    phase (``new / gcd`` of them), each ``2 * width + orig / gcd`` taps long, ``width`` being the
    filter's reach in input samples. 0 when the rates match (no kernel).
    """
    if orig_sr == new_sr:
        return 0
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    width = math.ceil(_LOWPASS_WIDTH * orig / (min(orig, new) * _ROLLOFF))
    return new * (2 * width + orig)


def check_resampling(orig_sr: int, new_sr: int) -> None:
    """Refuse a rate pair whose resampling kernel would be huge, before anything allocates it.

    A rate one hertz off a standard one (a corrupt header, a typo in ``--sr``) shares no factor
    with it, and torchaudio's kernel grows with the product of the reduced rates.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise AudioError(f"cannot resample {orig_sr} Hz to {new_sr} Hz: rates must be positive")
    elements = resampling_kernel_elements(orig_sr, new_sr)
    if elements > MAX_KERNEL_ELEMENTS:
        raise AudioError(
            f"cannot resample {orig_sr} Hz to {new_sr} Hz: the pair shares too few factors, so "
            f"the resampling filter would take {elements:,} elements ({elements * 4 / 1e9:.1f} GB"
            f", limit {MAX_KERNEL_ELEMENTS:,}); use a standard rate such as 44100 or 48000 Hz"
        )


def resample(audio: ArrayT, orig_sr: int, new_sr: int) -> ArrayT:
    """Band-limited sinc resampling along the last axis; the input itself when the rates match.

    Raises AudioError for a rate pair `check_resampling` refuses.
    """
    if orig_sr == new_sr:
        return audio
    check_resampling(orig_sr, new_sr)
    if isinstance(audio, torch.Tensor):
        return torchaudio.functional.resample(audio, orig_sr, new_sr)
    out = torchaudio.functional.resample(torch.from_numpy(audio), orig_sr, new_sr)
    return out.numpy()


def resampling_context(orig_sr: int, new_sr: int) -> int:
    """Input frames of real signal needed on each side of a stretch of audio so that resampling
    the stretch alone gives exactly the samples the whole signal's resampling gives there.

    Twice the sinc kernel's reach, rounded up to whole periods of ``orig / gcd`` input frames, so
    the stretch's filter phases line up with the whole signal's and the context maps to whole
    output samples. Raises AudioError for a rate pair `check_resampling` refuses, so a streaming
    resampler (and a chunk reader) fails when it is set up, not at its first block.
    """
    check_resampling(orig_sr, new_sr)
    period = orig_sr // math.gcd(orig_sr, new_sr)
    out_period = new_sr // math.gcd(orig_sr, new_sr)
    reach = math.ceil(_LOWPASS_WIDTH * period / (min(period, out_period) * _ROLLOFF))
    return period * math.ceil(2 * reach / period)


def _mono(audio: np.ndarray) -> np.ndarray:
    """The channels' mean, summed a whole channel at a time.

    numpy reduces a short axis one output sample at a time: on the (channels, frames) view of
    interleaved frames that decoding reads, ``mean(-2)`` took 3.7 ms per 3 s stereo chunk, 13x
    this, and was most of a mono model's decode time (docs/benchmarks.md).
    """
    dtype = audio.dtype if np.issubdtype(audio.dtype, np.floating) else np.float64
    out = audio[..., 0, :].astype(dtype)  # a fresh contiguous array: never the caller's
    for c in range(1, audio.shape[-2]):
        out += audio[..., c, :]
    out /= audio.shape[-2]
    return out[..., None, :]


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
        return _mono(audio) if isinstance(audio, np.ndarray) else audio.mean(-2, keepdims=True)
    if channels == 1:
        reps = (1,) * (audio.ndim - 2) + (num_channels, 1)
        return np.tile(audio, reps) if isinstance(audio, np.ndarray) else audio.repeat(reps)
    if channels > num_channels:
        return audio[..., :num_channels, :]
    raise ConfigError("num_channels", f"cannot make {num_channels} channels from {channels}")
