import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torchmetrics.functional.audio import (
    scale_invariant_signal_distortion_ratio,
    scale_invariant_signal_noise_ratio,
)

from auralflow_dist.metrics import bsseval_sdr, sdr, si_sdr, si_snr

TORCHMETRICS_EPS = torch.finfo(torch.float32).eps
SR = 8000


def _signals(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(estimate, reference) pairs: noise at several levels, and tones with DC, gain and distortion."""
    gen = torch.Generator().manual_seed(seed)
    reference = torch.randn(3, 2, 4000, generator=gen)
    levels = torch.tensor([0.05, 0.5, 3.0]).view(3, 1, 1)
    noisy = reference + levels * torch.randn(reference.shape, generator=gen)
    t = torch.arange(4000) / SR
    tone = torch.sin(2 * math.pi * 220 * t) + 0.3 * torch.sin(2 * math.pi * 330 * t) + 0.2
    distorted = 0.7 * torch.tanh(2 * tone) + 0.1 + 0.05 * torch.randn(4000, generator=gen)
    return [(noisy, reference), (distorted, tone)]


@pytest.mark.parametrize("zero_mean", [True, False])
def test_si_sdr_matches_torchmetrics(zero_mean: bool) -> None:
    for estimate, reference in _signals():
        ours = si_sdr(estimate, reference, zero_mean=zero_mean)
        theirs = scale_invariant_signal_distortion_ratio(estimate, reference, zero_mean=zero_mean)
        assert ours.shape == estimate.shape[:-1]
        assert torch.allclose(ours, theirs, atol=0.01)


def test_si_snr_matches_torchmetrics() -> None:
    for estimate, reference in _signals(seed=1):
        ours = si_snr(estimate, reference)
        assert torch.allclose(
            ours, scale_invariant_signal_noise_ratio(estimate, reference), atol=0.01
        )


def test_known_values_with_orthogonal_noise() -> None:
    t = torch.arange(1000) / 1000
    reference = torch.sin(2 * math.pi * 5 * t)  # whole periods: zero mean
    noise = 0.1 * torch.cos(2 * math.pi * 5 * t)  # orthogonal, energy ratio 100
    assert si_sdr(3 * (reference + noise), reference).item() == pytest.approx(20.0, abs=1e-3)
    assert sdr(reference + noise, reference).item() == pytest.approx(20.0, abs=1e-3)
    assert sdr(2 * reference, reference).item() == pytest.approx(0.0, abs=1e-4)
    assert sdr(torch.zeros(1000), reference).item() == pytest.approx(0.0, abs=1e-4)


def test_silent_signals_are_finite_and_documented() -> None:
    silent = torch.zeros(2, 1000)
    audible = torch.randn(2, 1000)
    for metric in (si_sdr, si_snr, sdr):
        for estimate, reference in [(silent, silent), (silent, audible), (audible, silent)]:
            assert torch.isfinite(metric(estimate, reference)).all()
    assert torch.equal(si_sdr(silent, silent), torch.zeros(2))
    assert torch.equal(si_sdr(silent, audible), torch.zeros(2))
    assert (si_sdr(audible, silent) < -60).all()
    # torchmetrics places eps the same way: equal on silence once eps is equal too
    for estimate, reference in [(silent, silent), (silent, audible), (audible, silent)]:
        ours = si_sdr(estimate, reference, eps=TORCHMETRICS_EPS, zero_mean=False)
        theirs = scale_invariant_signal_distortion_ratio(estimate, reference)
        assert torch.allclose(ours, theirs, atol=0.01)


def test_half_inputs_are_scored_in_float32() -> None:
    # energy 100^2 * 4000 overflows float16's 65504
    reference = 100 * torch.randn(2, 4000).clamp(-6, 6)
    estimate = reference + 10 * torch.randn(2, 4000)
    expected = si_sdr(estimate.half().float(), reference.half().float())
    for metric in (si_sdr, sdr):
        value = metric(estimate.half(), reference.half())
        assert value.dtype == torch.float32 and torch.isfinite(value).all()
    assert torch.allclose(si_sdr(estimate.half(), reference.half()), expected)


def test_si_sdr_gradients() -> None:
    gen = torch.Generator().manual_seed(2)
    reference = torch.randn(2, 16, generator=gen, dtype=torch.float64)
    estimate = (
        reference + 0.5 * torch.randn(2, 16, generator=gen, dtype=torch.float64)
    ).requires_grad_()
    assert torch.autograd.gradcheck(lambda e: si_sdr(e, reference), (estimate,))
    assert torch.autograd.gradcheck(lambda e: sdr(e, reference), (estimate,))


@pytest.fixture(scope="module")
def museval_metrics() -> ModuleType:
    """museval's own metrics module, loaded alone: `import museval` imports musdb and stempeg,
    which refuse to load without an ffmpeg binary, and the metric code needs neither."""
    spec = importlib.util.find_spec("museval")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "metrics.py"
    module_spec = importlib.util.spec_from_file_location("museval_metrics", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _museval_v4_medians(
    metrics: ModuleType, estimate: np.ndarray, reference: np.ndarray
) -> np.ndarray:
    """What `museval.evaluate(references, estimates, win=SR, hop=SR)` does for equal lengths,
    then MUSDB's median over frames. museval wants (sources, samples, channels)."""
    frames = metrics.bss_eval(
        reference.transpose(0, 2, 1),
        estimate.transpose(0, 2, 1),
        window=SR,
        hop=SR,
        compute_permutation=False,
        framewise_filters=False,
        bsseval_sources_version=False,
    )[0]
    return np.nanmedian(frames, axis=1)


def _track(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three stereo sources, 6.5 s (six whole frames and a partial one), with silent stretches."""
    rng = np.random.default_rng(seed)
    length = int(6.5 * SR)
    reference = (0.1 * rng.standard_normal((3, 2, length))).astype(np.float32)
    reference[1, :, 2 * SR : 4 * SR] = 0  # source 1 silent in frames 2 and 3
    # error level grows frame by frame, so skipping frames moves the medians
    level = (
        np.repeat(np.linspace(0.01, 0.2, 7), SR)[:length] * np.array([1.0, 2.0, 0.5])[:, None, None]
    )
    estimate = (reference + level * rng.standard_normal(reference.shape)).astype(np.float32)
    estimate[2, :, 5 * SR : int(5.5 * SR)] = 0  # half a frame of silence does not skip it
    return estimate, reference


def test_bsseval_sdr_matches_museval(museval_metrics: ModuleType) -> None:
    estimate, reference = _track(seed=0)
    expected = _museval_v4_medians(museval_metrics, estimate, reference)
    ours = bsseval_sdr(torch.from_numpy(estimate), torch.from_numpy(reference), SR)
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours.numpy(), expected, atol=0.01)
    # the skip matters here: four frames left (an even count, so the middle pair is averaged)
    unskipped = bsseval_sdr(
        torch.from_numpy(estimate[:1]).unsqueeze(1),
        torch.from_numpy(reference[:1]).unsqueeze(1),
        SR,
    )
    assert abs(unskipped.item() - expected[0]) > 0.5


def test_bsseval_sdr_batches_tracks_and_skips_frames_silent_in_any_estimate() -> None:
    tracks = [_track(seed) for seed in (1, 2)]
    estimate = torch.stack([torch.from_numpy(e) for e, _ in tracks])
    reference = torch.stack([torch.from_numpy(r) for _, r in tracks])
    estimate[1, 0, :, : 2 * SR] = 0  # frames 0 and 1 of track 1: skipped for all its sources
    batched = bsseval_sdr(estimate, reference, SR)
    assert batched.shape == (2, 3)
    for item in range(2):
        assert torch.allclose(batched[item], bsseval_sdr(estimate[item], reference[item], SR))
    kept = bsseval_sdr(estimate[1, :, :, 2 * SR :], reference[1, :, :, 2 * SR :], SR)
    assert torch.allclose(batched[1], kept)


def test_bsseval_sdr_pads_or_cuts_the_estimate_like_museval() -> None:
    estimate, reference = (torch.from_numpy(x[:1]) for x in _track(seed=3))
    short = estimate[..., : 5 * SR]
    padded = torch.nn.functional.pad(short, (0, reference.shape[-1] - short.shape[-1]))
    assert torch.equal(bsseval_sdr(short, reference, SR), bsseval_sdr(padded, reference, SR))
    longer = torch.cat([estimate, torch.randn(1, 2, SR)], dim=-1)
    assert torch.equal(bsseval_sdr(longer, reference, SR), bsseval_sdr(estimate, reference, SR))


def test_bsseval_sdr_short_signal_is_one_frame_and_silence_is_nan() -> None:
    reference = torch.randn(2, SR // 2)
    estimate = reference + 0.1 * torch.randn(2, SR // 2)
    one_frame = bsseval_sdr(estimate, reference, SR)
    assert one_frame.shape == ()
    assert torch.allclose(one_frame, sdr(estimate.flatten(), reference.flatten()))
    assert bsseval_sdr(estimate, torch.zeros_like(reference), SR).isnan()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_match_cpu() -> None:
    estimate, reference = (torch.from_numpy(x) for x in _track(seed=4))
    for metric in (si_sdr, si_snr, sdr):
        cpu = metric(estimate, reference)
        assert torch.allclose(metric(estimate.cuda(), reference.cuda()).cpu(), cpu, atol=1e-3)
    cpu = bsseval_sdr(estimate, reference, SR)
    assert torch.allclose(bsseval_sdr(estimate.cuda(), reference.cuda(), SR).cpu(), cpu, atol=1e-3)
