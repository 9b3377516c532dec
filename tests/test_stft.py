import pytest
import torch

from auralflow_dist.audio import STFT
from auralflow_dist.errors import ConfigError

CONFIGS = [(1024, 1024, 512), (2048, 2048, 1024), (2048, 1024, 256)]


def error_db(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(10 * torch.log10(((x - y) ** 2).sum() / (x**2).sum()))


@pytest.mark.parametrize(("num_fft", "window_size", "hop_length"), CONFIGS)
@pytest.mark.parametrize("shape", [(4099,), (2, 5001), (3, 2, 4097)])
def test_reconstruction_below_minus_80_db(num_fft, window_size, hop_length, shape):
    stft = STFT(num_fft, window_size, hop_length)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.3
    spec = stft(x)
    frames = stft.num_frames(shape[-1])
    assert (
        spec.shape
        == (*shape[:-1], num_fft // 2 + 1, frames)
        == (*shape[:-1], stft.num_bins, frames)
    )
    assert spec.dtype == torch.complex64
    y = stft.inverse(spec, shape[-1])
    assert y.shape == x.shape
    assert error_db(x, y) < -80


def test_short_input_uses_constant_padding():
    stft = STFT()
    x = torch.randn(2, 100)
    spec = stft(x)
    assert spec.shape == (2, 513, stft.num_frames(100)) == (2, 513, 1)
    assert error_db(x, stft.inverse(spec, 100)) < -80


def test_window_cached_per_device_and_dtype():
    stft = STFT()
    cpu = torch.device("cpu")
    w = stft.window(cpu, torch.float32)
    assert stft.window(cpu, torch.float32) is w
    w64 = stft.window(cpu, torch.float64)
    assert w64 is not w and w64.dtype == torch.float64
    stft(torch.randn(1, 4096))
    assert stft.window("cpu", torch.float32) is w
    assert not list(stft.state_dict())  # nothing to checkpoint


def test_float64_input_stays_float64():
    stft = STFT(512, 512, 128)
    x = torch.randn(2, 3000, dtype=torch.float64)
    spec = stft(x)
    assert spec.dtype == torch.complex128
    assert error_db(x, stft.inverse(spec, 3000)) < -200


def test_bf16_autocast_runs_in_float32():
    stft = STFT(512, 512, 256)
    x = torch.randn(2, 4000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spec = stft(x.bfloat16())
        mask = torch.sigmoid(spec.abs() @ torch.eye(spec.shape[-1]))  # bf16 under autocast
        masked = spec * mask
        y = stft.inverse(masked, 4000)
    assert spec.dtype == masked.dtype == torch.complex64 and y.dtype == torch.float32
    assert error_db(x, stft.inverse(stft(x), 4000)) < -80


def test_mask_keeps_mixture_phase():
    stft = STFT(256, 256, 64)
    spec = stft(torch.randn(2, 2000))
    mask = torch.rand(spec.shape)
    masked = spec * mask
    torch.testing.assert_close(masked, torch.polar(mask * spec.abs(), spec.angle()))
    torch.testing.assert_close(masked.abs(), mask * spec.abs())


def test_gradients_flow_through_round_trip():
    stft = STFT(256, 256, 64)
    x = torch.randn(1, 1000, requires_grad=True)
    mask = torch.full((1, 129, stft.num_frames(1000)), 0.5, requires_grad=True)
    stft.inverse(stft(x) * mask, 1000).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(mask.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_fft": 0}, "num_fft"),
        ({"num_fft": 512, "window_size": 1024}, "window_size"),
        ({"hop_length": 2048}, "hop_length"),
        ({"hop_length": 0}, "hop_length"),
    ],
)
def test_invalid_sizes_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        STFT(**kwargs)
    assert err.value.field == field


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_bf16_round_trip():
    stft = STFT()
    x = torch.randn(2, 2, 44100, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = stft.inverse(stft(x.bfloat16()) * torch.ones(1, device="cuda"), 44100)
    assert y.device.type == "cuda" and y.dtype == torch.float32
    assert stft.window(x.device, torch.float32).device == x.device
    assert error_db(x.bfloat16().float(), y) < -80
