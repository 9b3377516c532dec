"""Training criteria of the seeds' `--criterion` flag, behind one call signature.

Every criterion is a module called with a `LossInputs`; it computes one loss per batch item and
reduces them over the batch: `mean` averages the items, `sum` adds them (so sum = batch * mean).
Each item's loss is itself a mean over its elements, so values do not grow with chunk length.
Half-precision inputs are computed in float32: magnitude energies overflow float16.
"""

import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from auralflow_dist.config import (
    check_best_perm,
    check_component_weights,
    check_construction_loss,
    check_reduction,
    criterion_name,
)
from auralflow_dist.errors import ConfigError
from auralflow_dist.metrics import float32_at_least, si_sdr


@dataclass(frozen=True)
class LossInputs:
    """What a model hands its criterion; fields a criterion does not use may be None.

    Spectrograms are magnitudes `(batch, channels, freq_bins, frames)`, audio is
    `(batch, channels, samples)`; `mu`/`log_var` are a VAE's latent Gaussian `(batch, ...)`.
    """

    est_spec: Tensor | None = None
    target_spec: Tensor | None = None
    mix_spec: Tensor | None = None
    mask: Tensor | None = None
    est_audio: Tensor | None = None
    target_audio: Tensor | None = None
    mix_audio: Tensor | None = None
    mu: Tensor | None = None
    log_var: Tensor | None = None


def _item_mean(values: Tensor) -> Tensor:
    return values.flatten(1).mean(1)


class Criterion(nn.Module):
    """Base class: subclasses define `item_loss`; `needs_audio` tells the model to run the iSTFT."""

    name: ClassVar[str]
    needs_audio: ClassVar[bool] = False

    def __init__(self, reduction: str = "mean", eps: float = 1e-8) -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction
        self.eps = eps

    def forward(self, inputs: LossInputs) -> Tensor:
        losses = self.item_loss(inputs)
        return losses.mean() if self.reduction == "mean" else losses.sum()

    def item_loss(self, inputs: LossInputs) -> Tensor:
        """One loss per batch item, shape `(batch,)`."""
        raise NotImplementedError

    def _fields(self, inputs: LossInputs, *names: str) -> list[Tensor]:
        """The named inputs in float32 or wider; a missing one is a bug in the calling model."""
        values = [getattr(inputs, name) for name in names]
        missing = [name for name, value in zip(names, values, strict=True) if value is None]
        if missing:
            raise ValueError(f"criterion {self.name!r} needs LossInputs.{', '.join(missing)}")
        return [float32_at_least(value) for value in values]


class L1Loss(Criterion):
    """Mean absolute error between estimated and target magnitudes."""

    name = "l1"

    def item_loss(self, inputs: LossInputs) -> Tensor:
        estimate, target = self._fields(inputs, "est_spec", "target_spec")
        return _item_mean((estimate - target).abs())


class L2Loss(Criterion):
    """Mean squared error between estimated and target magnitudes."""

    name = "l2"

    def item_loss(self, inputs: LossInputs) -> Tensor:
        estimate, target = self._fields(inputs, "est_spec", "target_spec")
        return _item_mean((estimate - target).square())


class RMSELoss(L2Loss):
    """Root of the per-item MSE; `eps` keeps its gradient finite at a perfect estimate."""

    name = "rmse"

    def item_loss(self, inputs: LossInputs) -> Tensor:
        return torch.sqrt(super().item_loss(inputs) + self.eps)


class MaskLoss(Criterion):
    """MSE between the estimated mask and the ideal ratio mask target / mixture, clamped to [0, 1].

    The clamp keeps the target reachable by a sigmoid mask where phases cancel (target > mix).
    """

    name = "mask"

    def item_loss(self, inputs: LossInputs) -> Tensor:
        mask, target, mixture = self._fields(inputs, "mask", "target_spec", "mix_spec")
        ideal = (target / (mixture + self.eps)).clamp(0.0, 1.0)
        return _item_mean((mask - ideal).square())


class SISDRLoss(Criterion):
    """Negative SI-SDR (dB) of the estimated audio, per channel, averaged over channels.

    With `best_perm`, each item is scored under the channel order (of all permutations of its
    channels; identity or swapped for stereo) that gives it the highest SI-SDR, so a model is
    not penalised for an estimate whose channels come out swapped.
    """

    name = "si_sdr"
    needs_audio = True

    def __init__(self, best_perm: bool = False, reduction: str = "mean", eps: float = 1e-8) -> None:
        super().__init__(reduction, eps)
        self.best_perm = best_perm

    def item_loss(self, inputs: LossInputs) -> Tensor:
        estimate, target = self._fields(inputs, "est_audio", "target_audio")
        if not self.best_perm:
            return -_item_mean(si_sdr(estimate, target, eps=self.eps))
        channels = estimate.shape[1]
        # scores[b, i, j]: estimated channel i against target channel j
        scores = si_sdr(estimate.unsqueeze(2), target.unsqueeze(1), eps=self.eps)
        orders = torch.tensor(list(itertools.permutations(range(channels))), device=scores.device)
        per_order = scores[:, torch.arange(channels, device=scores.device), orders].mean(-1)
        return -per_order.amax(-1)


class KLDivLoss(Criterion):
    """VAE objective: construction loss (`l1` or `l2`) on magnitudes plus KL(N(mu, var) || N(0, 1)).

    The KL term is the mean over latent elements, so it does not grow with the latent size.
    """

    name = "kl_div"

    def __init__(
        self, construction_loss: str = "l2", reduction: str = "mean", eps: float = 1e-8
    ) -> None:
        super().__init__(reduction, eps)
        check_construction_loss(construction_loss)
        self.construction = (L1Loss if construction_loss == "l1" else L2Loss)(reduction, eps)

    def item_loss(self, inputs: LossInputs) -> Tensor:
        if inputs.mu is None or inputs.log_var is None:
            raise ConfigError(
                "criterion",
                "kl_div needs a VAE model (one that returns mu and log_var); pick another criterion",
            )
        mu, log_var = self._fields(inputs, "mu", "log_var")
        kl = 0.5 * _item_mean(mu.square() + log_var.exp() - log_var - 1)
        return self.construction.item_loss(inputs) + kl


class ComponentLoss(Criterion):
    """Component loss for mask estimation (Xu, Elshamy, Fingscheidt), weights explicit.

    With mask M, target magnitude S and residual N = mixture - S, per item:
    `fidelity * mean((M S - S)^2) + alpha * mean((M N)^2) + beta * mean((u(M N) - u(N))^2)`,
    the terms being target distortion, residual attenuation and residual shape (u scales an
    item to unit norm, so the shape term only asks the leftover residual to keep its spectrum).
    The seeds weighted the first term by 1 - alpha - beta, which their own defaults (0.2, 0.8)
    make zero: the mask was trained only to suppress the residual, never to keep the target.
    Here the fidelity weight is its own parameter; a zero one must be asked for explicitly.
    """

    name = "component"

    def __init__(
        self,
        alpha: float = 0.2,
        beta: float = 0.8,
        fidelity: float = 1.0,
        allow_no_fidelity: bool = False,
        reduction: str = "mean",
        eps: float = 1e-8,
    ) -> None:
        super().__init__(reduction, eps)
        check_component_weights(alpha, beta, fidelity, allow_no_fidelity)
        self.alpha, self.beta, self.fidelity = alpha, beta, fidelity

    def _unit(self, values: Tensor) -> Tensor:
        energy = values.square().sum(tuple(range(1, values.ndim)), keepdim=True)
        return values * torch.rsqrt(energy + self.eps)

    def item_loss(self, inputs: LossInputs) -> Tensor:
        mask, target, mixture = self._fields(inputs, "mask", "target_spec", "mix_spec")
        residual = mixture - target
        kept_residual = mask * residual
        return (
            self.fidelity * _item_mean((mask * target - target).square())
            + self.alpha * _item_mean(kept_residual.square())
            + self.beta * _item_mean((self._unit(kept_residual) - self._unit(residual)).square())
        )


# The implementations of `config.CRITERIA`, in its order (a test checks they agree).
CRITERIA: dict[str, type[Criterion]] = {
    cls.name: cls
    for cls in (ComponentLoss, KLDivLoss, L1Loss, L2Loss, MaskLoss, SISDRLoss, RMSELoss)
}


def build_criterion(
    name: str,
    *,
    reduction: str = "mean",
    alpha: float = 0.2,
    beta: float = 0.8,
    fidelity: float = 1.0,
    construction_loss: str = "l2",
    best_perm: bool = False,
    allow_no_fidelity: bool = False,
) -> Criterion:
    """The criterion for a `--criterion` value; `si-sdr` and `SI_SDR` both name `si_sdr`.

    Options of other criteria are ignored except `best_perm`, which is refused outside `si_sdr`
    because it would silently do nothing.
    """
    key = criterion_name(name)
    check_best_perm(best_perm, key)
    options: dict[str, dict[str, object]] = {
        "component": {
            "alpha": alpha,
            "beta": beta,
            "fidelity": fidelity,
            "allow_no_fidelity": allow_no_fidelity,
        },
        "kl_div": {"construction_loss": construction_loss},
        "si_sdr": {"best_perm": best_perm},
    }
    return CRITERIA[key](reduction=reduction, **options.get(key, {}))
