import numpy as np
import pytest
import torch

from auralflow_dist.audio import resample, to_channels
from auralflow_dist.errors import ConfigError


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
