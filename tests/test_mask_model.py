import threading

import numpy as np
import pytest
import torch

from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict
from auralflow_dist.errors import ConfigError
from auralflow_dist.models import registry
from auralflow_dist.models.mask_model import SpectrogramMaskModel

SMALL = {
    "hidden_channels": 4,
    "sample_rate": 8000,
    "sample_length": 0.5,
    "num_fft": 256,
    "window_size": 256,
    "hop_length": 128,
    "hidden_size": 16,
    "recurrent_depth": 1,
}


def small(model_type="SpectrogramNetSimple", **kw) -> ModelConfig:
    return from_dict(ModelConfig, {**SMALL, "model_type": model_type, **kw})


def trainer(**kw) -> TrainerConfig:
    return from_dict(TrainerConfig, {"lr": 1e-3, **kw})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(
    "model_type",
    ["SpectrogramNetSimple", "SpectrogramNetLSTM", "SpectrogramNetVAE", "MaskInference"],
)
def test_train_step_updates_weights_and_loss_is_finite(model_type):
    crit = "kl_div" if model_type == "SpectrogramNetVAE" else "si_sdr"
    m = SpectrogramMaskModel(small(model_type), trainer(criterion=crit), device="cpu")
    mix, tgt = torch.randn(2, 1, 4000) * 0.1, torch.randn(2, 1, 4000) * 0.05
    before = [p.detach().clone() for p in m.model.parameters()]
    m.train()
    m.set_data(mix, tgt)
    m.forward()
    loss = m.compute_loss()
    m.backward()
    m.optimizer_step()
    assert np.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.model.parameters(), strict=True))
    assert m.estimate_spec.shape == m.mix_spec.shape


def test_mask_applies_to_magnitude_with_mixture_phase():
    m = SpectrogramMaskModel(small(), device="cpu")
    m.eval()
    mix = torch.randn(1, 1, 4000)
    m.set_data(mix)
    with torch.no_grad():
        m.forward()
        est = m.estimate()
    spec = m.stft(est)
    # Where the mask is non-zero, the estimate's phase is the mixture's.
    keep = (m.mask > 0.05) & (m.mix_spec.abs() > 1e-3)
    diff = torch.angle(spec[keep] * m.mix_spec[keep].conj())
    assert diff.abs().median() < 0.05


def test_lstm_parameters_use_lr_lstm():
    m = SpectrogramMaskModel(
        small("SpectrogramNetLSTM"), trainer(lr=1e-3, lr_lstm=1e-5), device="cpu"
    )
    lrs = {g["name"]: g["lr"] for g in m.optimizer.param_groups}
    assert lrs == {"main": 1e-3, "recurrent": 1e-5}
    recurrent = {
        id(p) for g in m.optimizer.param_groups if g["name"] == "recurrent" for p in g["params"]
    }
    lstm = registry.unwrap(m.model).bottleneck.lstm
    assert all(id(p) in recurrent for p in lstm.parameters())


def test_kl_div_needs_a_vae():
    with pytest.raises(ConfigError, match="kl_div"):
        SpectrogramMaskModel(small(), trainer(criterion="kl_div"), device="cpu")


def test_scheduler_step_stops_after_max_plateaus():
    m = SpectrogramMaskModel(
        small(), trainer(stop_patience=1, max_plateaus=2, min_delta=0.01), device="cpu"
    )
    assert not m.scheduler_step(1.0)  # improvement
    decisions = [m.scheduler_step(1.0) for _ in range(4)]
    assert decisions == [False, False, False, True]
    assert m.optimizer.param_groups[0]["lr"] < 1e-3  # the LR was reduced on the plateau


@pytest.mark.parametrize("length", [1, 100, 4000, 4001, 13_337])
@pytest.mark.parametrize("channels", [1, 2])
def test_separate_any_length_keeps_shape(length, channels):
    m = SpectrogramMaskModel(small(), device="cpu")
    audio = torch.randn(channels, length) * 0.1
    out = m.separate(audio)
    assert out.shape == audio.shape and torch.isfinite(out).all()


def test_separate_is_deterministic_and_overlap_add_has_no_seams():
    """With an all-pass mask the separated output equals the input: windows and OLA are exact."""
    m = SpectrogramMaskModel(small(), device="cpu")
    net = registry.unwrap(m.model)

    class AllPass(torch.nn.Module):
        def forward(self, x):
            return torch.ones_like(x)

    m.model = AllPass()
    audio = torch.randn(2, 30_001) * 0.1
    out = m.separate(audio, padding=200)
    assert torch.allclose(out, audio, atol=1e-4)
    m.model = net
    a, b = m.separate(audio), m.separate(audio)
    assert torch.equal(a, b)


@pytest.mark.parametrize("model_type", ["SpectrogramNetSimple", "SpectrogramNetVAE"])
def test_threads_sharing_one_model_separate_as_if_alone(model_type):
    """A separation actor runs several files on one model at once: no call may see another's."""
    m = SpectrogramMaskModel(small(model_type), device="cpu")
    inputs = [torch.randn(2, 20_000 + 3_001 * i) * 0.1 for i in range(4)]
    alone = [m.separate(x, batch_size=1) for x in inputs]
    together: list[torch.Tensor | None] = [None] * len(inputs)
    start = threading.Barrier(len(inputs))

    def work(i: int) -> None:
        start.wait()
        together[i] = m.separate(inputs[i], batch_size=1)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together, strict=True):
        assert b is not None and torch.allclose(a, b, atol=1e-6)


def test_separate_integer_pcm_duration_and_resampling():
    m = SpectrogramMaskModel(small(), device="cpu")
    pcm = (np.random.default_rng(0).standard_normal((2, 16000)) * 3000).astype(np.int16)
    out = m.separate(pcm, sample_rate=16000, duration=0.75)
    assert out.shape == (2, 12000)
    assert out.abs().max() < 1.5  # scaled from int16 to [-1, 1] before the network


def test_separate_batched_input():
    m = SpectrogramMaskModel(small(num_channels=2), device="cpu")
    audio = torch.randn(3, 2, 5000) * 0.1
    out = m.separate(audio, batch_size=2)
    assert out.shape == audio.shape
    assert torch.allclose(out[1], m.separate(audio[1]), atol=1e-5)


def test_save_and_load_round_trip_with_weights_only(tmp_path):
    m = SpectrogramMaskModel(
        small("SpectrogramNetLSTM"),
        trainer(use_amp=False),
        device="cpu",
        checkpoint_dir=str(tmp_path),
    )
    m.set_data(torch.randn(2, 1, 4000), torch.randn(2, 1, 4000))
    m.train()
    m.forward()
    m.compute_loss()
    m.backward()
    m.optimizer_step()
    m.save(global_step=3)
    ckpt = tmp_path / "checkpoint_000003"
    assert {p.name for p in ckpt.iterdir()} >= {
        "model.json",
        "weights.pt",
        "optimizer.pt",
        "scheduler.pt",
        "grad_scaler.pt",
    }
    other = SpectrogramMaskModel(
        small("SpectrogramNetLSTM"), trainer(), device="cpu", checkpoint_dir=str(tmp_path)
    )
    other.load(global_step=3)
    for a, b in zip(m.model.state_dict().values(), other.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert other.optimizer.state_dict()["state"].keys() == m.optimizer.state_dict()["state"].keys()
    loaded = SpectrogramMaskModel.from_checkpoint(str(ckpt), device="cpu")
    x = torch.randn(1, 4000)
    assert torch.allclose(loaded.separate(x), m.separate(x))


def _one_batch(m: SpectrogramMaskModel) -> None:
    g = torch.Generator().manual_seed(1)
    m.train()
    m.set_data(
        torch.randn(2, 1, 4000, generator=g) * 0.1, torch.randn(2, 1, 4000, generator=g) * 0.05
    )
    m.forward()
    m.compute_loss()
    m.backward()


def test_use_amp_runs_the_network_in_reduced_precision():
    """--use-amp: the network's convolutions run in bf16 on CPU (fp16 + scaler on older GPUs)."""
    seen = {}
    for amp in (False, True):
        torch.manual_seed(0)
        m = SpectrogramMaskModel(small(), trainer(use_amp=amp), device="cpu")
        conv = next(mod for mod in m.model.modules() if isinstance(mod, torch.nn.Conv2d))
        conv.register_forward_hook(lambda _m, _i, out, amp=amp: seen.update({amp: out.dtype}))
        _one_batch(m)
        assert m.mask.dtype == torch.float32  # the loss and the mask stay in float32
        assert not m.grad_scaler.is_enabled()  # bf16 needs no loss scaling
    assert seen == {False: torch.float32, True: torch.bfloat16}


def test_scale_grad_scales_the_loss_by_init_scale_and_unscales_before_the_step():
    """--scale-grad/--init-scale: gradients are init_scale times larger, the update the same."""
    models = {}
    for scale in (False, True):
        torch.manual_seed(0)
        models[scale] = SpectrogramMaskModel(
            small(), trainer(scale_grad=scale, init_scale=1024.0, clip_grad=True), device="cpu"
        )
        _one_batch(models[scale])
    plain, scaled = models[False], models[True]
    assert scaled.grad_scaler.is_enabled() and scaled.grad_scaler.get_scale() == 1024.0
    for a, b in zip(plain.model.parameters(), scaled.model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad * 1024, rtol=1e-4, atol=1e-6)
    norms = plain.optimizer_step(), scaled.optimizer_step()  # clipping sees unscaled gradients
    assert norms[1] == pytest.approx(norms[0], rel=1e-4)
    for a, b in zip(plain.model.parameters(), scaled.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_clip_grad_bounds_the_norm_the_optimizer_sees():
    """--clip-grad/--max-grad-norm: the step uses gradients clipped to max_grad_norm."""
    for clip in (False, True):
        torch.manual_seed(0)
        m = SpectrogramMaskModel(small(), trainer(clip_grad=clip, max_grad_norm=1e-3), device="cpu")
        _one_batch(m)
        stepped = []
        step = m.optimizer.step

        def recording_step(*args, step=step, m=m, stepped=stepped, **kwargs):
            grads = [p.grad for p in m.model.parameters() if p.grad is not None]
            stepped.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
            return step(*args, **kwargs)

        m.optimizer.step = recording_step
        before = m.optimizer_step()
        if clip:
            assert before > 1e-3 and stepped[0] == pytest.approx(1e-3, rel=1e-3)
        else:
            assert before is None and stepped[0] > 1e-3
