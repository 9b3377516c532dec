"""Mask-estimation networks: spectrogram in, soft mask of the same shape out."""

from auralflow_dist.models.blocks import count_parameters
from auralflow_dist.models.blstm import MaskInference
from auralflow_dist.models.unet import SpectrogramNetLSTM, SpectrogramNetSimple, SpectrogramNetVAE

__all__ = [
    "MaskInference",
    "SpectrogramNetLSTM",
    "SpectrogramNetSimple",
    "SpectrogramNetVAE",
    "count_parameters",
]
