"""Mask-estimation networks: spectrogram in, soft mask of the same shape out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from auralflow_dist.errors import CheckpointError
from auralflow_dist.models.blocks import count_parameters
from auralflow_dist.models.blstm import MaskInference
from auralflow_dist.models.unet import SpectrogramNetLSTM, SpectrogramNetSimple, SpectrogramNetVAE

if TYPE_CHECKING:
    import torch

    from auralflow_dist.models.separator import Separator

__all__ = [
    "MaskInference",
    "SpectrogramNetLSTM",
    "SpectrogramNetSimple",
    "SpectrogramNetVAE",
    "count_parameters",
    "load",
]


def load(
    model: str = "SpectrogramNetVAE",
    target: str = "vocals",
    index: str | None = None,
    device: str | torch.device | None = None,
) -> Separator:
    """The seeds' ``auralflow.models.load``: the trained ``target`` model of network ``model``
    (or the index entry named ``model``) from the model index, fetched, verified and cached.

    ``index`` defaults to ``$AURALFLOW_MODEL_INDEX``; see `auralflow_dist.models.index`.
    """
    from auralflow_dist.models.index import fetch, find
    from auralflow_dist.models.separator import Separator
    from auralflow_dist.session import bundle_dirs, read_model_config

    folder = fetch(find(model, target, index))
    for model_dir in bundle_dirs(folder):
        if read_model_config(model_dir).target == target:
            return Separator.from_checkpoint(model_dir, device)
    raise CheckpointError(f"{folder}: the index entry {model!r} holds no {target} model")
