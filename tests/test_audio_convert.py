import contextlib
import itertools
import math
import time

import numpy as np
import pytest
import torch
from torchaudio.functional.functional import _get_sinc_resample_kernel

from auralflow_dist.audio import resample, resampling_context, to_channels
from auralflow_dist.audio.convert import (
    MAX_KERNEL_ELEMENTS,
    check_resampling,
    resampling_kernel_elements,
)
from auralflow_dist.errors import AudioError, ConfigError

STANDARD_RATES = (
    8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000,
)  # fmt: skip


def sine(freq: float, sr: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return np.sin(2 * np.pi * freq * t).astype(np.float32)[None].repeat(2, axis=0)


def test_resample_keeps_type_and_tone():
    x = sine(1000, 44100)
    y = resample(x, 44100, 22050)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (2, 11025)
    ref = sine(1000, 22050)
    mid = slice(1000, -1000)  # away from the filter's edge effects
    np.testing.assert_allclose(y[:, mid], ref[:, mid], atol=1e-2)

    t = resample(torch.from_numpy(x), 44100, 48000)
    assert isinstance(t, torch.Tensor) and t.shape == (2, 24000)


def test_resample_identity_is_the_input():
    x = sine(440, 16000)
    assert resample(x, 16000, 16000) is x


def test_to_channels():
    stereo = np.stack([np.ones(5), 3 * np.ones(5)]).astype(np.float32)
    np.testing.assert_array_equal(to_channels(stereo, 1), 2 * np.ones((1, 5)))
    mono = torch.arange(4.0)[None]
    assert torch.equal(to_channels(mono, 2), torch.stack([torch.arange(4.0)] * 2))
    surround = torch.arange(6.0)[:, None].expand(6, 3)
    assert torch.equal(to_channels(surround, 2), surround[:2])
    assert torch.allclose(to_channels(surround, 1), torch.full((1, 3), 2.5))
    batched = np.zeros((4, 1, 7), np.float32)
    assert to_channels(batched, 2).shape == (4, 2, 7)
    assert to_channels(stereo, 2) is stereo
    with pytest.raises(ConfigError, match="num_channels"):
        to_channels(stereo, 3)
    with pytest.raises(ConfigError, match="num_channels"):
        to_channels(stereo, 0)


@contextlib.contextmanager
def address_space_cap(extra: int):
    """At most ``extra`` more bytes of address space (Linux), so that a regression fails with an
    allocation error instead of taking the machine's memory."""
    try:
        import resource

        with open("/proc/self/status") as f:
            used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (ImportError, OSError, StopIteration):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = min(x for x in (used + extra, soft, hard) if x != resource.RLIM_INFINITY)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("kind", [np.asarray, torch.from_numpy])
def test_a_rate_pair_with_a_huge_kernel_is_refused_before_any_allocation(kind):
    # 44100 and 44101 share no factor: torchaudio would build a 44101-row kernel, 7.8 GB.
    x = kind(np.zeros((1, 1000), np.float32))
    start = time.monotonic()
    with (
        address_space_cap(1 << 30),
        pytest.raises(AudioError, match=r"cannot resample 44100 Hz to 44101 Hz") as err,
    ):
        resample(x, 44100, 44101)
    assert time.monotonic() - start < 1.0
    message = str(err.value)
    assert "1,945,471,514 elements (7.8 GB" in message and "standard rate" in message
    assert len(message.splitlines()) == 1
    with pytest.raises(AudioError, match="44101 Hz to 16000 Hz"):
        resampling_context(44101, 16000)  # what a streaming resampler is set up with


def test_every_pair_of_standard_rates_can_be_resampled():
    for orig, new in itertools.permutations(STANDARD_RATES, 2):
        check_resampling(orig, new)
        assert resampling_kernel_elements(orig, new) < MAX_KERNEL_ELEMENTS // 16, (orig, new)
    check_resampling(44100, 44100)
    assert resampling_kernel_elements(44100, 44100) == 0


@pytest.mark.parametrize(
    ("orig", "new"),
    [(44100, 48000), (48000, 44100), (8000, 11025), (192000, 11025), (11025, 192000), (100, 101)],
)
def test_kernel_size_is_torchaudios(orig, new):
    kernel, _ = _get_sinc_resample_kernel(orig, new, math.gcd(orig, new))
    assert kernel.numel() == resampling_kernel_elements(orig, new)


def test_rates_must_be_positive():
    with pytest.raises(AudioError, match="positive"):
        check_resampling(0, 44100)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_mono_of_interleaved_frames_is_the_channels_mean_in_meaning_dtype(dtype) -> None:
    """Decoding hands over (channels, frames) views of interleaved frames; the fast downmix must
    equal numpy's mean there, dtype included, and never return the caller's memory."""
    frames = (np.random.default_rng(0).standard_normal((2, 3000, 3)) * 1000).astype(dtype)
    view = frames.transpose(0, 2, 1)  # (batch, channels, frames), not contiguous
    mono = to_channels(view, 1)
    expected = view.mean(-2, keepdims=True)
    assert mono.dtype == expected.dtype and mono.shape == (2, 1, 3000)
    np.testing.assert_allclose(mono, expected, rtol=1e-6)
    assert not np.shares_memory(mono, frames)
