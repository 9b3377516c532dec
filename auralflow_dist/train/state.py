"""What a training checkpoint holds, beside the model: enough to continue exactly.

A checkpoint directory (its layout is `auralflow_dist.session`'s) = the model, the optimizer,
the LR scheduler with the early-stopping counters, the grad scaler, and ``state.json`` (epoch,
global step, best score, per-epoch history). Any storage URL holds one; every file is written
atomically and every tensor file loads with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from auralflow_dist import session
from auralflow_dist.models.mask_model import SpectrogramMaskModel


@dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    train_seconds: float = 0.0  # wall-clock of the epochs completed, over every run (max_minutes)
    history: list[dict[str, Any]] = field(default_factory=list)


def save(directory: str, model: SpectrogramMaskModel, state: LoopState) -> None:
    """Write a full training checkpoint into ``directory`` (any storage URL); state.json last."""
    model.save(state.global_step, directory=directory)
    session.write_state(directory, asdict(state))


def load(directory: str, model: SpectrogramMaskModel) -> LoopState:
    """Load a full training checkpoint from ``directory`` (any storage URL) into ``model``."""
    model.load(0, directory=directory)
    return LoopState(**session.read_state(directory))
