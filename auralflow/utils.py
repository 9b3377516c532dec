"""``auralflow.utils``: the seeds' configuration helper."""

from auralflow_dist.models.mask_model import load_config

__all__ = ["load_config"]
