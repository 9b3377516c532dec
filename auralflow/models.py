"""``auralflow.models``: the networks and the seeds' model wrapper, from ``auralflow_dist``."""

from auralflow_dist.models import (
    MaskInference,
    SpectrogramNetLSTM,
    SpectrogramNetSimple,
    SpectrogramNetVAE,
    count_parameters,
    load,
)
from auralflow_dist.models.mask_model import SpectrogramMaskModel

# The seeds' abstract base: its one implementation is the spectrogram mask model.
SeparationModel = SpectrogramMaskModel

__all__ = [
    "MaskInference",
    "SeparationModel",
    "SpectrogramMaskModel",
    "SpectrogramNetLSTM",
    "SpectrogramNetSimple",
    "SpectrogramNetVAE",
    "count_parameters",
    "load",
]
