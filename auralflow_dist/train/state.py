"""What a training checkpoint holds, beside the model: enough to continue exactly.

A checkpoint directory = the model (``model.json`` + ``weights.pt``), the optimizer, the LR
scheduler with the early-stopping counters, the grad scaler, and ``state.json`` (epoch, global
step, best score, per-epoch history). Everything loads with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from auralflow_dist import storage
from auralflow_dist.models.mask_model import SpectrogramMaskModel

STATE_FILE = "state.json"
CHECKPOINT_FILES = (
    "model.json",
    "weights.pt",
    "optimizer.pt",
    "scheduler.pt",
    "grad_scaler.pt",
    STATE_FILE,
)


@dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def save(directory: str, model: SpectrogramMaskModel, state: LoopState) -> None:
    """Write a full training checkpoint into a local directory (Ray uploads it)."""
    model.save(state.global_step, directory=directory)
    with open(os.path.join(directory, STATE_FILE), "w") as f:
        json.dump(asdict(state), f)


def load(directory: str, model: SpectrogramMaskModel) -> LoopState:
    model.load(0, directory=directory)
    with open(os.path.join(directory, STATE_FILE)) as f:
        return LoopState(**json.load(f))


def load_url(url: str, model: SpectrogramMaskModel) -> LoopState:
    """Load a checkpoint directory that lives at any storage URL."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in CHECKPOINT_FILES:
            source = storage.join(url, name)
            if storage.exists(source):
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(storage.read_bytes(source))
        return load(tmp, model)
