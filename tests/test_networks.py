"""The mask networks: shapes, determinism, independence of batch items, gradients, autocast.

Each test guards against a defect of the original Auralflow networks (see the test names); all
but the parameter-count test use tiny widths so the file runs in seconds on a CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from auralflow_dist.config import MASK_ACTIVATIONS
from auralflow_dist.errors import ConfigError
from auralflow_dist.models import (
    MaskInference,
    SpectrogramNetLSTM,
    SpectrogramNetSimple,
    SpectrogramNetVAE,
    count_parameters,
)
from auralflow_dist.models.blocks import mask_activation
from auralflow_dist.models.unet import RecurrentBottleneck

NETS = ["simple", "lstm_time", "lstm_freq", "vae", "blstm"]
UNETS = ["simple", "lstm_time", "lstm_freq", "vae"]


def make(name: str, bins: int, **kwargs: object) -> nn.Module:
    """A small network of the given kind; ``num_frames`` is deliberately left unset."""
    torch.manual_seed(0)
    if name == "blstm":
        return MaskInference(bins, hidden_size=16, **kwargs)  # type: ignore[arg-type]
    if name == "simple":
        return SpectrogramNetSimple(bins, None, hidden_channels=4, **kwargs)  # type: ignore[arg-type]
    cls = SpectrogramNetVAE if name == "vae" else SpectrogramNetLSTM
    axis = 0 if name == "lstm_freq" else 1
    return cls(bins, None, hidden_channels=4, hidden_size=16, input_axis=axis, **kwargs)


def spectrogram(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize(("bins", "frame_counts"), [(513, (87, 3)), (257, (1, 40)), (33, (5, 64))])
def test_odd_sizes_give_a_mask_of_the_input_shape(name, bins, frame_counts):
    net = make(name, bins).eval()
    with torch.no_grad():
        for frames in frame_counts:  # one network, several clip lengths
            mask = net(spectrogram(2, 1, bins, frames))
            assert mask.shape == (2, 1, bins, frames)
            assert mask.min() >= 0.0 and mask.max() <= 1.0


@pytest.mark.parametrize("name", NETS)
def test_stereo(name):
    net = make(name, 33, num_channels=2).eval()
    with torch.no_grad():
        assert net(spectrogram(2, 2, 33, 7)).shape == (2, 2, 33, 7)


@pytest.mark.parametrize("name", NETS)
def test_eval_is_deterministic(name):
    net = make(name, 33, dropout_p=0.5).eval()
    x = spectrogram(2, 1, 33, 9)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_vae_samples_in_training_only():
    x = spectrogram(2, 1, 33, 9)
    lstm, vae = make("lstm_time", 33, dropout_p=0.0), make("vae", 33, dropout_p=0.0)
    with torch.no_grad():
        assert torch.equal(lstm(x), lstm(x))  # no dropout: training mode alone adds no noise
        assert not torch.equal(vae(x), vae(x))  # so this difference is the latent sampling
        vae.eval()
        assert torch.equal(vae(x), vae(x))


@pytest.mark.parametrize("name", NETS)
def test_batch_items_do_not_see_each_other(name):
    net = make(name, 33).eval()
    x = spectrogram(3, 1, 33, 40)
    changed = x.clone()
    changed[1] = spectrogram(1, 33, 40, seed=2)
    with torch.no_grad():
        before, after = net(x), net(changed)
    torch.testing.assert_close(after[0], before[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(after[2], before[2], atol=1e-6, rtol=0)
    assert not torch.allclose(after[1], before[1])


@pytest.mark.parametrize(("input_axis", "frames_mix"), [(1, True), (0, False)])
def test_lstm_recurs_over_the_chosen_axis(input_axis, frames_mix):
    """Time axis: frame 0 reaches the last frame. Frequency axis: frames are independent
    sequences, but row 0 reaches the last row."""
    torch.manual_seed(0)
    block = RecurrentBottleneck(8, 16, 3, 1, 16, input_axis, variational=False).eval()
    x = spectrogram(1, 8, 3, 6)
    first_frame, first_row = x.clone(), x.clone()
    first_frame[..., 0] += 1.0
    first_row[:, :, 0] += 1.0
    with torch.no_grad():
        base = block(x)
        frame_effect = (block(first_frame) - base)[..., -1].abs().max()
        row_effect = (block(first_row) - base)[:, :, -1].abs().max()
    assert (frame_effect > 0) == frames_mix
    if input_axis == 0:
        assert row_effect > 0


@pytest.mark.parametrize("name", NETS)
def test_every_parameter_gets_a_gradient(name):
    """The original built a conv bottleneck into the LSTM nets and never used it."""
    norms = {} if name == "blstm" else {"normalize_input": True, "normalize_output": True}
    net = make(name, 33, **norms).train()
    x = spectrogram(2, 1, 33, 40)  # > 32 frames: two LSTM steps at the bottleneck
    if name == "vae":
        mask, mu, log_var = net(x, return_latent=True)
        loss = mask.mean() + mu.mean() + log_var.mean()
    else:
        loss = net(x).mean()
    loss.backward()
    silent = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not silent


def test_normalisation_parameters_exist_only_when_enabled():
    plain = count_parameters(make("simple", 33))
    for flags, extra in [
        ({"normalize_input": True}, 1),
        ({"normalize_output": True}, 1),
        ({"normalize_input": True, "normalize_output": True}, 2),
    ]:
        net = make("simple", 33, **flags)
        assert count_parameters(net) == plain + extra * 2 * 33  # a center and a scale per bin
    net = make("lstm_time", 33, normalize_input=True)
    assert net.input_norm.center.shape == net.input_norm.scale.shape == (33, 1)


@pytest.mark.parametrize("act", MASK_ACTIVATIONS)
def test_mask_activations_stay_in_unit_range(act):
    net = make("simple", 33, mask_act_fn=act, leak_factor=0.1).eval()
    with torch.no_grad():
        mask = net(spectrogram(2, 1, 33, 5) * 100)
    assert mask.min() >= 0.0 and mask.max() <= 1.0


def test_softmax_mask_is_the_two_way_softmax():
    logits = torch.linspace(-5, 5, 11)
    two_way = torch.softmax(torch.stack([logits, torch.zeros_like(logits)]), dim=0)[0]
    torch.testing.assert_close(mask_activation("softmax")(logits), two_way)


@pytest.mark.parametrize("name", NETS)
def test_unknown_mask_activation_names_the_field(name):
    with pytest.raises(ConfigError, match="mask_act_fn") as err:
        make(name, 33, mask_act_fn="gelu")
    assert err.value.field == "mask_act_fn"


def test_invalid_input_axis_names_the_field():
    with pytest.raises(ConfigError, match="input_axis"):
        SpectrogramNetLSTM(33, None, hidden_channels=4, input_axis=2)


@pytest.mark.parametrize("name", NETS)
def test_wrong_spectrogram_shape_is_rejected(name):
    net = make(name, 33).eval()
    with pytest.raises(ValueError, match=r"\(batch, 1, 33, frames\)"):
        net(spectrogram(1, 1, 34, 5))
    with pytest.raises(ValueError, match=r"\(batch, 1, 33, frames\)"):
        net(spectrogram(1, 2, 33, 5))


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("training", [False, True])
def test_cpu_bfloat16_autocast(name, training):
    net = make(name, 33).train(training)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask = net(spectrogram(2, 1, 33, 9))
        if training:
            mask.float().mean().backward()
    assert mask.shape == (2, 1, 33, 9)
    assert torch.isfinite(mask).all()


def test_cpu_bfloat16_autocast_on_an_avx2_only_cpu():
    """The bf16 cases again with oneDNN held to AVX2, as on a CPU without AVX-512.

    oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once, at start, so the cases run in a fresh process;
    on an AVX2-only CPU the variable changes nothing and the same cases run as they are.
    """
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "bfloat16"]
    done = subprocess.run(
        [*args, f"{__file__}::test_cpu_bfloat16_autocast"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"{2 * len(NETS)} passed" in done.stdout


def test_vae_exposes_its_latent():
    net = make("vae", 33).eval()
    x = spectrogram(2, 1, 33, 9)
    with torch.no_grad():
        mask, mu, log_var = net(x, return_latent=True)
        assert torch.equal(net(x), mask)
    frames_at_bottleneck, features = 1, 4 * 16 * 2  # 16h channels x 2 padded bin rows (33 -> 64)
    assert mu.shape == log_var.shape == (2, frames_at_bottleneck, features)


@pytest.mark.parametrize("name", NETS)
def test_device_argument_places_the_parameters(name):
    net = make(name, 33, device="cpu")
    assert {p.device.type for p in net.parameters()} == {"cpu"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NETS)
def test_cuda_float16_autocast(name):
    net = make(name, 513, device="cuda").train()
    x = spectrogram(2, 1, 513, 87).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        mask = net(x)
        mask.float().mean().backward()
    assert mask.device.type == "cuda" and mask.shape == x.shape
    assert torch.isfinite(mask).all()


def test_parameter_counts_at_the_default_config():
    """n_fft 1024 (513 bins), 3 s at 44.1 kHz hop 512 (259 frames), mono, h=16."""
    counts = {
        cls.__name__: count_parameters(cls(513, 259))
        for cls in (SpectrogramNetSimple, SpectrogramNetLSTM, SpectrogramNetVAE, MaskInference)
    }
    assert counts == {
        "SpectrogramNetSimple": 15_383_891,
        "SpectrogramNetLSTM": 47_001_427,
        "SpectrogramNetVAE": 84_889_939,
        "MaskInference": 4_430_139,
    }
    # The recurrent sizes follow the frequency axis only, never the clip length.
    assert count_parameters(SpectrogramNetLSTM(513, 1000)) == counts["SpectrogramNetLSTM"]
