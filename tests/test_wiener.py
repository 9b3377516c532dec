"""The multichannel Wiener filter and the bundle that separates every target in one pass.

`audio.wiener` is checked against norbert, the numpy implementation Open-Unmix's torch one was
ported from, on the same input; on a generated song with the true stems' magnitudes as the
estimates (an oracle), it must beat the ratio masks it starts from. A bundle without the filter
must give each target exactly what that target's model gives alone.
"""

from __future__ import annotations

import norbert
import numpy as np
import pytest
import torch

from auralflow_dist import metrics
from auralflow_dist.audio.stft import STFT
from auralflow_dist.audio.wiener import wiener
from auralflow_dist.config import ModelConfig, WienerConfig
from auralflow_dist.data.generate import synthesize_track
from auralflow_dist.errors import CheckpointError, ConfigError
from auralflow_dist.models.separator import Bundle, Separator

RATE = 16000
TARGETS = ("vocals", "drums", "bass")


def _inputs(seed: int = 0, sources: int = 3, channels: int = 2, frames: int = 40):
    g = torch.Generator().manual_seed(seed)
    shape = (channels, 65, frames)
    mixture = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    estimates = torch.rand((sources, *shape), generator=g) * mixture.abs()
    return estimates.double(), mixture.to(torch.complex128)


def _norbert(estimates: torch.Tensor, mixture: torch.Tensor, iterations: int, softmask: bool):
    v = estimates.permute(3, 2, 1, 0).numpy()  # (frames, bins, channels, sources)
    x = mixture.permute(2, 1, 0).numpy().copy()  # norbert scales its input in place
    y = norbert.wiener(v, x, iterations, use_softmask=softmask, eps=1e-10)
    return torch.from_numpy(np.ascontiguousarray(y)).permute(3, 2, 1, 0)


@pytest.mark.parametrize(("iterations", "softmask"), [(0, True), (1, False), (2, False), (1, True)])
def test_wiener_equals_norbert_on_the_same_input(iterations: int, softmask: bool) -> None:
    estimates, mixture = _inputs()
    got = wiener(estimates, mixture, iterations, softmask=softmask)
    want = _norbert(estimates, mixture, iterations, softmask)
    assert got.shape == want.shape == (3, 2, 65, 40)
    scale = mixture.abs().max()
    assert ((got - want).abs().max() / scale) < 1e-4


def test_windows_of_frames_are_filtered_on_their_own() -> None:
    """Memory stays bounded: the covariances are fitted per segment, as Open-Unmix does."""
    estimates, mixture = _inputs(frames=70)
    got = wiener(estimates, mixture, 1, window_frames=30)
    parts = [
        _norbert(estimates[..., s : s + 30], mixture[..., s : s + 30], 1, False)
        for s in (0, 30, 60)
    ]
    assert ((got - torch.cat(parts, dim=-1)).abs().max() / mixture.abs().max()) < 1e-4


def test_the_residual_source_completes_the_mixture() -> None:
    estimates, mixture = _inputs()
    y = wiener(estimates, mixture, 1, residual=True)
    assert y.shape[0] == 4
    assert ((y.sum(dim=0) - mixture).abs().max() / mixture.abs().max()) < 1e-4


def test_bad_shapes_are_refused() -> None:
    estimates, mixture = _inputs()
    with pytest.raises(ValueError, match="do not match"):
        wiener(estimates[:, :1], mixture, 1)
    with pytest.raises(ValueError, match="iterations"):
        wiener(estimates, mixture, -1)


def test_on_a_song_with_oracle_magnitudes_wiener_beats_the_ratio_masks() -> None:
    song = synthesize_track(seed=3, seconds=4.0, sample_rate=RATE)
    stems = torch.stack([torch.from_numpy(song[name]) for name in song if name != "mixture"])
    mixture = stems.sum(dim=0)
    stft = STFT(512, 512, 128)
    spec = stft(mixture)
    oracle = stft(stems).abs()

    def sdr(sources: torch.Tensor) -> float:
        audio = stft.inverse(sources, length=mixture.shape[-1])
        return float(metrics.sdr(audio.flatten(1), stems.flatten(1)).mean())

    ratio = sdr(wiener(oracle, spec, 0, softmask=True))
    em = sdr(wiener(oracle, spec, 1, softmask=True))
    assert em > ratio + 0.5, (em, ratio)


# ----------------------------------------------------------------------------------------------
# Bundles


def _separator(target: str, seed: int, **changes) -> Separator:
    torch.manual_seed(seed)
    fields = {
        "hidden_channels": 4,
        "sample_rate": RATE,
        "sample_length": 0.5,
        "num_fft": 256,
        "window_size": 256,
        "hop_length": 128,
        "target": target,
        **changes,
    }
    return Separator(ModelConfig(**fields).validate(), device="cpu")


@pytest.mark.parametrize("num_channels", [1, 2])
def test_a_bundle_without_the_filter_gives_each_target_its_own_models_separation(
    num_channels: int,
) -> None:
    separators = [_separator(t, i, num_channels=num_channels) for i, t in enumerate(TARGETS)]
    x = torch.rand(2, RATE + 123) - 0.5
    stems = Bundle(separators).separate(x, batch_size=3)
    assert list(stems) == [*TARGETS, "residual"]
    for separator in separators:
        alone = separator.separate(x)
        assert (stems[separator.config.target] - alone).abs().max() < 1e-4
    total = sum(stems[t] for t in TARGETS)
    assert (stems["residual"] - (x - total)).abs().max() < 1e-5


def test_a_bundle_with_the_filter_splits_the_mixture_among_its_targets() -> None:
    separators = [_separator(t, i, num_channels=1) for i, t in enumerate(TARGETS)]
    x = torch.rand(2, RATE) - 0.5
    plain = Bundle(separators).separate(x)
    filtered = Bundle(separators, WienerConfig(iterations=1, residual=True)).separate(x)
    for target in TARGETS:
        assert torch.isfinite(filtered[target]).all()
        assert (filtered[target] - plain[target]).abs().max() > 1e-3  # the filter did act
    # The residual is written as the mixture minus the filtered targets: nothing is lost.
    total = sum(filtered[t] for t in TARGETS) + filtered["residual"]
    assert (total - x).abs().max() < 1e-5


def test_a_bundle_refuses_models_that_cannot_share_a_pass() -> None:
    with pytest.raises(CheckpointError, match="differs from the vocals one in num_fft"):
        Bundle([_separator("vocals", 0), _separator("drums", 1, num_fft=512)])
    with pytest.raises(CheckpointError, match="one model per target"):
        Bundle([_separator("vocals", 0), _separator("vocals", 1)])
    # One target and no residual: the filter would hand that target the whole mixture.
    with pytest.raises(ConfigError, match="add --residual"):
        Bundle([_separator("vocals", 0)], WienerConfig(iterations=1))
    Bundle([_separator("vocals", 0)], WienerConfig(iterations=1, residual=True))
