import math

import pytest
import torch

from auralflow_dist import config
from auralflow_dist.errors import ConfigError
from auralflow_dist.losses import (
    CRITERIA,
    ComponentLoss,
    KLDivLoss,
    L1Loss,
    L2Loss,
    LossInputs,
    MaskLoss,
    RMSELoss,
    SISDRLoss,
    build_criterion,
)
from auralflow_dist.metrics import si_sdr

SPEC = (2, 2, 5, 4)  # batch, channels, freq bins, frames
AUDIO = (2, 2, 256)


def _inputs(seed: int = 0, scale: float = 1.0) -> LossInputs:
    """Every field a criterion may read, shaped as the mask model fills them."""
    gen = torch.Generator().manual_seed(seed)
    target = scale * torch.rand(SPEC, generator=gen)
    mix = target + scale * torch.rand(SPEC, generator=gen)
    mask = torch.rand(SPEC, generator=gen)
    target_audio = scale * torch.randn(AUDIO, generator=gen)
    return LossInputs(
        est_spec=mask * mix,
        target_spec=target,
        mix_spec=mix,
        mask=mask,
        est_audio=target_audio + 0.3 * scale * torch.randn(AUDIO, generator=gen),
        target_audio=target_audio,
        mix_audio=2 * target_audio,
        mu=torch.randn(2, 8, generator=gen),
        log_var=0.1 * torch.randn(2, 8, generator=gen),
    )


def test_known_spectrogram_losses() -> None:
    inputs = LossInputs(est_spec=torch.full(SPEC, 2.0), target_spec=torch.full(SPEC, 0.5))
    assert L1Loss()(inputs).item() == pytest.approx(1.5)
    assert L2Loss()(inputs).item() == pytest.approx(2.25)
    assert RMSELoss()(inputs).item() == pytest.approx(1.5)


def test_mask_loss_targets_the_clamped_ideal_ratio_mask() -> None:
    mix = torch.full(SPEC, 2.0)
    half = LossInputs(mask=torch.full(SPEC, 0.5), target_spec=mix / 2, mix_spec=mix)
    assert MaskLoss()(half).item() == pytest.approx(0.0, abs=1e-12)
    louder_target = LossInputs(mask=torch.full(SPEC, 0.5), target_spec=2 * mix, mix_spec=mix)
    assert MaskLoss()(louder_target).item() == pytest.approx(0.25)  # ideal mask clamped to 1


def test_si_sdr_loss_is_negative_si_sdr_averaged_over_channels() -> None:
    inputs = _inputs()
    expected = -si_sdr(inputs.est_audio, inputs.target_audio).mean()
    assert torch.allclose(SISDRLoss()(inputs), expected)
    assert SISDRLoss.needs_audio
    assert [name for name, cls in CRITERIA.items() if cls.needs_audio] == ["si_sdr"]


def test_best_perm_scores_swapped_channels_in_their_best_order() -> None:
    inputs = _inputs()
    swapped = inputs.est_audio.clone()
    swapped[0] = swapped[0].flip(0)  # item 0 comes out with left and right swapped
    as_swapped = LossInputs(est_audio=swapped, target_audio=inputs.target_audio)
    aligned = SISDRLoss().item_loss(inputs)
    assert torch.allclose(SISDRLoss(best_perm=True).item_loss(as_swapped), aligned)
    assert SISDRLoss().item_loss(as_swapped)[0] > aligned[0] + 10


def test_component_loss_terms() -> None:
    inputs = _inputs()
    target, residual = inputs.target_spec, inputs.mix_spec - inputs.target_spec
    loss = ComponentLoss(alpha=0.2, beta=0.8, fidelity=1.0)
    # mask 1 keeps target and residual untouched: only the attenuation term is left
    keep_all = LossInputs(mask=torch.ones(SPEC), target_spec=target, mix_spec=inputs.mix_spec)
    assert torch.allclose(loss.item_loss(keep_all), 0.2 * residual.square().mean((1, 2, 3)))
    # mask 0: full target distortion, no residual, and a residual shape error of |u(N)|^2 = 1
    drop_all = LossInputs(mask=torch.zeros(SPEC), target_spec=target, mix_spec=inputs.mix_spec)
    numel = math.prod(SPEC[1:])
    expected = target.square().mean((1, 2, 3)) + 0.8 / numel
    assert torch.allclose(loss.item_loss(drop_all), expected)


def test_component_loss_refuses_to_drop_the_fidelity_term() -> None:
    with pytest.raises(ConfigError) as raised:
        build_criterion("component", fidelity=0.0)
    assert raised.value.field == "fidelity"
    assert build_criterion("component", fidelity=0.0, allow_no_fidelity=True).fidelity == 0.0
    with pytest.raises(ConfigError, match="alpha"):
        ComponentLoss(alpha=-0.1)
    seeds_defaults = build_criterion("component")
    assert (seeds_defaults.fidelity, seeds_defaults.alpha, seeds_defaults.beta) == (1.0, 0.2, 0.8)


def test_kl_div_adds_the_latent_kl_and_requires_a_vae() -> None:
    inputs = _inputs()
    unit_shift = LossInputs(
        est_spec=inputs.est_spec,
        target_spec=inputs.target_spec,
        mu=torch.ones(2, 8),
        log_var=torch.zeros(2, 8),
    )
    for construction, base in (("l1", L1Loss()), ("l2", L2Loss())):
        loss = KLDivLoss(construction_loss=construction)
        assert torch.allclose(loss(unit_shift), base(unit_shift) + 0.5)
    no_latent = LossInputs(est_spec=inputs.est_spec, target_spec=inputs.target_spec)
    with pytest.raises(ConfigError, match="VAE") as raised:
        KLDivLoss()(no_latent)
    assert raised.value.field == "criterion"
    with pytest.raises(ConfigError, match="construction_loss"):
        build_criterion("kl_div", construction_loss="l3")


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_sum_is_batch_times_mean(name: str) -> None:
    inputs = _inputs(seed=1)
    mean = build_criterion(name, reduction="mean")(inputs)
    total = build_criterion(name, reduction="sum")(inputs)
    assert torch.allclose(total, SPEC[0] * mean)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_silent_chunks_give_finite_losses_and_gradients(name: str) -> None:
    logits = torch.zeros(SPEC, requires_grad=True)
    gain = torch.ones((), requires_grad=True)
    mask = torch.sigmoid(logits)
    silence = torch.zeros(SPEC)
    audio = torch.zeros(AUDIO)
    inputs = LossInputs(
        est_spec=mask * silence,
        target_spec=silence,
        mix_spec=silence,
        mask=mask,
        est_audio=gain * audio,
        target_audio=audio,
        mix_audio=audio,
        mu=torch.zeros(2, 8, requires_grad=True),
        log_var=torch.zeros(2, 8, requires_grad=True),
    )
    loss = build_criterion(name)(inputs)
    loss.backward()
    assert torch.isfinite(loss)
    for leaf in (logits, gain, inputs.mu, inputs.log_var):
        assert leaf.grad is None or torch.isfinite(leaf.grad).all()


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_half_inputs_are_computed_in_float32(name: str) -> None:
    inputs = _inputs(seed=2, scale=300.0)  # squared magnitudes beyond float16's range
    half = LossInputs(**{field: value.half() for field, value in vars(inputs).items()})
    loss = build_criterion(name)(half)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_gradcheck_l2_and_si_sdr() -> None:
    gen = torch.Generator().manual_seed(3)
    target = torch.rand(1, 1, 3, 2, generator=gen, dtype=torch.float64)
    estimate = torch.rand(1, 1, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda e: L2Loss()(LossInputs(est_spec=e, target_spec=target)), (estimate,)
    )
    target_audio = torch.randn(2, 2, 12, generator=gen, dtype=torch.float64)
    estimate_audio = (
        target_audio + torch.randn(2, 2, 12, generator=gen, dtype=torch.float64)
    ).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda e: SISDRLoss(best_perm=True)(LossInputs(est_audio=e, target_audio=target_audio)),
        (estimate_audio,),
    )


def test_build_criterion_names_and_errors() -> None:
    for spelling in ("si_sdr", "si-sdr", "SI-SDR", " Si_Sdr "):
        assert isinstance(build_criterion(spelling), SISDRLoss)
    assert isinstance(build_criterion("KL-Div"), KLDivLoss)
    with pytest.raises(
        ConfigError, match="component, kl_div, l1, l2, mask, si_sdr, rmse"
    ) as raised:
        build_criterion("sdr")
    assert raised.value.field == "criterion"
    with pytest.raises(ConfigError) as raised:
        build_criterion("l1", best_perm=True)
    assert raised.value.field == "best_perm"
    with pytest.raises(ConfigError) as raised:
        build_criterion("l2", reduction="max")
    assert raised.value.field == "reduction"


def test_the_config_names_exactly_the_implemented_criteria() -> None:
    assert tuple(CRITERIA) == config.CRITERIA


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"criterion": "l1", "best_perm": True}, "best_perm"),
        ({"reduction": "max"}, "reduction"),
        ({"criterion": "kl_div", "construction_loss": "l3"}, "construction_loss"),
        ({"criterion": "component", "fidelity": 0, "alpha": 0, "beta": 0}, "fidelity"),
    ],
)
def test_the_trainer_config_refuses_what_the_criterion_would(options, field) -> None:
    with pytest.raises(ConfigError) as raised:
        config.from_dict(config.TrainerConfig, options)
    assert raised.value.field == field
    kwargs = dict(options)
    with pytest.raises(ConfigError) as raised:
        build_criterion(kwargs.pop("criterion", "si_sdr"), **kwargs)
    assert raised.value.field == field


def test_missing_input_is_a_bug_not_a_user_error() -> None:
    with pytest.raises(ValueError, match="est_audio"):
        SISDRLoss()(LossInputs(est_spec=torch.zeros(SPEC), target_spec=torch.zeros(SPEC)))
