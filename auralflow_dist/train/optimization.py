"""What training adds to a network: the loss, the optimizer, the LR schedule, the grad scaler and
early stopping, apart from the stateless ``Separator`` that inference shares.

Every rank builds the same state from the same config, so identical inputs give identical
decisions (LR reductions, the early stop) on every rank without communication.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from auralflow_dist.config import OptimConfig
from auralflow_dist.errors import ConfigError
from auralflow_dist.losses import build_criterion
from auralflow_dist.models import registry

RECURRENT_BOTTLENECK_MODELS = ("SpectrogramNetLSTM", "SpectrogramNetVAE")


def is_recurrent_param(model_type: str, name: str) -> bool:
    """The U-Nets' LSTM bottleneck (LSTM, its projections, the VAE latent) trains at ``lr_lstm``.

    MaskInference is recurrent through and through, so it trains at ``lr`` as a whole.
    """
    return model_type in RECURRENT_BOTTLENECK_MODELS and name.startswith("bottleneck.")


@dataclass
class EarlyStopping:
    """Plateau bookkeeping: ``patience`` epochs without improvement make a plateau."""

    patience: int
    max_plateaus: int
    min_delta: float
    best: float = float("inf")
    bad_epochs: int = 0
    plateaus: int = 0

    def step(self, val_loss: float) -> tuple[bool, bool]:
        """Returns (improved, stop)."""
        if val_loss < self.best - self.min_delta:
            self.best, self.bad_epochs = val_loss, 0
            return True, False
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.plateaus += 1
            self.bad_epochs = 0
        return False, self.plateaus >= self.max_plateaus

    def state_dict(self) -> dict[str, float | int]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "plateaus": self.plateaus}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.plateaus = int(state["plateaus"])


class TrainingState:
    """Loss, Adam (LSTM bottleneck at its own rate), plateau schedule, grad scaler, early stop."""

    def __init__(
        self,
        network: nn.Module,
        model_type: str,
        optim: OptimConfig,
        device: torch.device,
        amp_dtype: torch.dtype,
    ) -> None:
        self.optim = optim
        self.network = network
        self.criterion = build_criterion(
            optim.criterion,
            reduction=optim.reduction,
            alpha=optim.alpha,
            beta=optim.beta,
            fidelity=optim.fidelity,
            construction_loss=optim.construction_loss,
            best_perm=optim.best_perm,
            allow_no_fidelity=optim.allow_no_fidelity,
        )
        if optim.criterion == "kl_div" and model_type != "SpectrogramNetVAE":
            raise ConfigError("criterion", "kl_div needs a SpectrogramNetVAE model")
        named = list(registry.unwrap(network).named_parameters())
        recurrent = [p for n, p in named if is_recurrent_param(model_type, n)]
        others = [p for n, p in named if not is_recurrent_param(model_type, n)]
        groups = [{"params": others, "lr": optim.lr, "name": "main"}]
        if recurrent:
            groups.append({"params": recurrent, "lr": optim.lr_lstm, "name": "recurrent"})
        self.optimizer = torch.optim.Adam(groups)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            mode="min",
            factor=0.5,
            patience=optim.stop_patience,
            threshold=optim.min_delta,
            threshold_mode="abs",
        )
        self.early_stopping = EarlyStopping(
            optim.stop_patience, optim.max_plateaus, optim.min_delta
        )
        scale = optim.scale_grad or (optim.use_amp and amp_dtype == torch.float16)
        self.grad_scaler = torch.amp.GradScaler(
            device.type, init_scale=optim.init_scale, enabled=scale
        )

    def backward(self, loss: torch.Tensor) -> None:
        self.grad_scaler.scale(loss).backward()

    def optimizer_step(
        self, inspect: Callable[[nn.Module], None] | None = None, want_norm: bool = False
    ) -> float | None:
        """Clip (after unscaling), step, zero grads. Returns the pre-clip gradient norm, with
        clipping or ``want_norm``; ``inspect`` sees the unscaled gradients before the step (the
        only time they exist: the step sets them to None)."""
        norm = None
        if self.optim.clip_grad or want_norm or inspect is not None:
            self.grad_scaler.unscale_(self.optimizer)
            limit = self.optim.max_grad_norm if self.optim.clip_grad else float("inf")
            norm = float(nn.utils.clip_grad_norm_(self.network.parameters(), limit))
        if inspect is not None:
            inspect(self.network)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def scheduler_step(self, val_loss: float) -> bool:
        """Reduce the LR on plateau; return whether training should stop."""
        self.scheduler.step(val_loss)
        _, stop = self.early_stopping.step(val_loss)
        return stop

    def scheduler_state(self) -> dict[str, Any]:
        """The schedule and the early-stopping counters: ``scheduler.pt`` holds both."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
        }

    def load_scheduler_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.early_stopping.load_state_dict(state["early_stopping"])
