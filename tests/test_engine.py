"""The separation engine against reference math: whole-signal resampling, framing, overlap-add.

Every separation path (the bulk job's stream, ``separate()`` on a whole tensor, evaluation) runs
through `SeparationEngine`, so these tests check it against the computation it replaces, written
out here in full: torchaudio's resampler on the whole signal, `frame_signal`, the estimator on
every window, `overlap_add`, the resampler back.
"""

from __future__ import annotations

import pytest
import torch

from auralflow_dist import audio
from auralflow_dist.audio.engine import SeparationEngine, StreamResampler
from auralflow_dist.audio.windowing import frame_signal, overlap_add
from auralflow_dist.config import ModelConfig
from auralflow_dist.errors import AudioError
from auralflow_dist.models.separator import Separator

RATE = 16000
TOL = 1e-5


def separator(num_channels: int = 1) -> Separator:
    torch.manual_seed(0)
    config = ModelConfig(
        hidden_channels=4,
        sample_rate=RATE,
        sample_length=0.5,
        num_fft=256,
        window_size=256,
        hop_length=128,
        num_channels=num_channels,
    ).validate()
    return Separator(config, device="cpu")


def reference(sep: Separator, x: torch.Tensor, rate: int, padding: int) -> torch.Tensor:
    """The whole-signal computation, step by step, with the channel rules spelled out."""
    window = sep.config.num_samples
    hop = window - padding
    y = audio.resample(x, rate, RATE)

    def one(group: torch.Tensor) -> torch.Tensor:
        frames, _ = frame_signal(group, window, hop)
        return overlap_add(sep.estimate(frames, 4), hop, group.shape[-1])

    if sep.config.num_channels == 1:
        out = torch.cat([one(c[None]) for c in y])
    elif y.shape[0] == 2:
        out = one(y)
    else:
        out = torch.stack([one(c[None].expand(2, -1)).mean(dim=0) for c in y])
    out = audio.resample(out, RATE, rate)[:, : x.shape[-1]]
    return torch.nn.functional.pad(out, (0, x.shape[-1] - out.shape[-1]))


@pytest.mark.parametrize(
    ("orig", "new"), [(44100, 16000), (16000, 44100), (96000, 8000), (11025, 8000)]
)
def test_stream_resampler_equals_torchaudio_on_the_whole_signal(orig: int, new: int) -> None:
    x = torch.randn(2, 12345)
    stream = StreamResampler(orig, new, 2, torch.device("cpu"))
    pieces = [stream.push(c) for c in x.split(1000, dim=-1)] + [stream.finish()]
    assert torch.equal(torch.cat(pieces, dim=-1), audio.resample(x, orig, new))


@pytest.mark.parametrize("padding", [0, 1, 200, 3999])
@pytest.mark.parametrize("block", [1000, 9999, 100_000])
def test_identity_estimator_returns_the_input_overlap_add_is_a_partition_of_unity(
    padding: int, block: int
) -> None:
    # A hop of one sample (padding 3999) makes a window per sample: a shorter signal suffices.
    x = torch.randn(3, 6_013 if padding == 3999 else 25_013)
    engine = SeparationEngine(
        lambda w: w[:, None],
        model_rate=RATE,
        window=4000,
        sample_rate=RATE,
        channels=3,
        padding=padding,
    )
    parts = [engine.push(b) for b in x.split(block, dim=-1)] + [engine.finish()]
    target = torch.cat([p[0] for p in parts], dim=-1)
    residual = torch.cat([p[1] for p in parts], dim=-1)
    # Float32 rounding only: with a hop of one sample, 4000 weights add up per sample.
    torch.testing.assert_close(target, x, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(residual, torch.zeros_like(x), rtol=0, atol=5e-5)


@pytest.mark.parametrize(
    ("model_channels", "rate", "channels", "padding", "block"),
    [
        (1, RATE, 2, 200, 3000),  # mono model, stereo in: each channel on its own
        (2, RATE, 2, 200, 7000),  # stereo model, stereo in
        (2, 44100, 1, 200, 5000),  # mono through a stereo model, resampled both ways
        (1, 96000, 6, 1000, 20000),  # 6 channels at 96 kHz
        (2, 8000, 3, 3000, 999),  # blocks smaller than a window, overlap above half a window
        (1, RATE, 1, 0, 4000),  # no overlap
    ],
)
def test_stream_and_whole_tensor_equal_the_reference(
    model_channels: int, rate: int, channels: int, padding: int, block: int
) -> None:
    sep = separator(model_channels)
    x = torch.rand(channels, int(rate * 1.2) + 13) * 0.6 - 0.3
    want = reference(sep, x, rate, padding)
    engine = sep.engine(rate, channels, padding=padding, batch_size=5)
    parts = [engine.push(b) for b in x.split(block, dim=-1)] + [engine.finish()]
    target = torch.cat([p[0] for p in parts], dim=-1)
    residual = torch.cat([p[1] for p in parts], dim=-1)
    assert target.shape == x.shape
    assert (target - want).abs().max() < TOL
    assert (residual - (x - want)).abs().max() < TOL
    whole = sep.separate(x, sample_rate=rate, padding=padding, batch_size=3)
    assert (whole - want).abs().max() < TOL


def test_a_whole_signal_fills_its_batches_as_frame_signal_does() -> None:
    """One call per full batch: a recurrent network's cost is per call more than per window."""
    sep = separator()
    calls: list[int] = []
    sep.network.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
    x = torch.rand(1, RATE * 5) - 0.5  # 12 windows of 0.5 s with 200 samples of overlap
    count = frame_signal(x, sep.config.num_samples, sep.config.num_samples - 200)[1]
    sep.separate(x, batch_size=8)
    assert calls == [8, count - 8]


def test_output_rate_is_the_resampled_target() -> None:
    sep = separator()
    x = torch.rand(2, 44100) - 0.5
    engine = sep.engine(44100, 2, output_rate=22050)
    parts = [engine.push(b) for b in x.split(10000, dim=-1)] + [engine.finish()]
    target = torch.cat([p[0] for p in parts], dim=-1)
    want = audio.resample(reference(sep, x, 44100, 200), 44100, 22050)
    assert target.shape == (2, 22050)
    assert (target - want).abs().max() < TOL


@pytest.mark.parametrize(("model_channels", "inputs"), [(1, (12, 1)), (2, (12, 2))])
def test_channel_rules_share_one_call_per_batch_of_windows(
    model_channels: int, inputs: tuple[int, int]
) -> None:
    sep = separator(model_channels)
    calls: list[tuple[int, ...]] = []

    def record(mag: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        calls.append(tuple(mag.shape[:2]))
        return torch.full_like(mag, 0.5), None, None

    sep.mask = record  # type: ignore[method-assign]
    mag = torch.rand(4, 3, 129, 5)
    torch.testing.assert_close(sep.masks(mag), torch.full_like(mag, 0.5))
    assert calls == [inputs]


def test_a_rate_pair_with_a_huge_resampling_kernel_fails_at_set_up() -> None:
    # 44100 and 44101 Hz share no factor: the first block would build a 7.8 GB kernel.
    with pytest.raises(AudioError, match="cannot resample 44100 Hz to 44101 Hz"):
        StreamResampler(44100, 44101, 2, torch.device("cpu"))
    with pytest.raises(AudioError, match="cannot resample 16000 Hz to 44101 Hz"):
        separator().engine(RATE, 1, output_rate=44101)
    with pytest.raises(AudioError, match="cannot resample 44101 Hz to 16000 Hz"):
        separator().engine(44101, 1)


@pytest.mark.parametrize(("rate", "block"), [(RATE, 3000), (44100, 2000), (8000, 500)])
def test_several_targets_stream_as_each_would_alone(rate: int, block: int) -> None:
    """Targets side by side through one engine: each equals its own engine's stream, and the
    residual is the mixture minus them all."""
    gains = (0.3, 0.5)

    def make(estimate, targets: int) -> SeparationEngine:
        return SeparationEngine(
            estimate,
            model_rate=RATE,
            window=4000,
            sample_rate=rate,
            channels=2,
            padding=300,
            targets=targets,
        )

    def stream(engine: SeparationEngine, x: torch.Tensor) -> torch.Tensor:
        parts = [engine.push(b) for b in x.split(block, dim=-1)] + [engine.finish()]
        return torch.cat(parts, dim=-1)

    x = torch.rand(2, int(rate * 0.9) + 7) - 0.5
    both = stream(make(lambda w: torch.stack([w * g for g in gains], dim=1), 2), x)
    assert both.shape == (3, 2, x.shape[-1])
    for i, gain in enumerate(gains):
        alone = stream(make(lambda w, g=gain: (w * g)[:, None], 1), x)
        torch.testing.assert_close(both[i], alone[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(both[2], x - both[0] - both[1], rtol=0, atol=1e-6)
