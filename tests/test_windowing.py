import pytest
import torch

from auralflow_dist.audio import frame_signal, overlap_add
from auralflow_dist.errors import ConfigError

WINDOW = 1024


@pytest.mark.parametrize("hop", [WINDOW // 2, WINDOW // 4, WINDOW - 200, WINDOW])
@pytest.mark.parametrize("length", [1, 7, WINDOW - 1, WINDOW, WINDOW + 1, 10 * WINDOW + 3])
@pytest.mark.parametrize("channels", [1, 2])
def test_overlap_add_inverts_framing(hop, length, channels):
    x = torch.rand(channels, length, generator=torch.Generator().manual_seed(length)) * 2 - 1
    frames, count = frame_signal(x, WINDOW, hop)
    assert frames.shape == (count, channels, WINDOW)
    y = overlap_add(frames, hop, length)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)


def test_every_sample_sees_full_overlap():
    """With the start padded, each real sample lies in window / hop frames (no thin edges)."""
    hop = WINDOW // 4
    index = torch.arange(1, 3 * WINDOW + 6, dtype=torch.float64)[None]
    frames, _ = frame_signal(index, WINDOW, hop)
    counts = torch.bincount(frames.flatten().long())[1:]  # 0 is padding
    assert torch.equal(counts, torch.full_like(counts, WINDOW // hop))


def test_overlap_add_cross_fades_differing_frames():
    """Frames that disagree are blended smoothly: the output stays between their values."""
    hop = WINDOW // 2
    frames = torch.stack([torch.zeros(1, WINDOW), torch.ones(1, WINDOW), torch.zeros(1, WINDOW)])
    y = overlap_add(frames, hop, 2 * hop)
    assert y.min() >= 0 and y.max() <= 1
    assert (y.diff(dim=-1).abs() < 0.01).all()


def test_rejects_bad_sizes():
    x = torch.zeros(1, 10)
    with pytest.raises(ConfigError, match="hop"):
        frame_signal(x, 8, 9)
    with pytest.raises(ConfigError, match="hop"):
        frame_signal(x, 8, 0)
    frames, count = frame_signal(x, 8, 4)
    with pytest.raises(ConfigError, match="length"):
        overlap_add(frames, 4, count * 4 + 1)
