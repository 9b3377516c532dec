"""The seeds' import names, so code written for Auralflow runs unchanged on auralflow-dist.

``from auralflow.models import SpectrogramMaskModel`` and ``from auralflow.utils import
load_config`` are the calls of the seeds' API documentation; everything lives in
``auralflow_dist``, and these modules only re-export it.
"""

from auralflow import models, utils

__all__ = ["models", "utils"]
