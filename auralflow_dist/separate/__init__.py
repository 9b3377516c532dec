"""Bulk separation: every audio file under a URL through a model, on a Ray actor pool."""

from auralflow_dist.separate.config import SeparateConfig, add_arguments, from_args
from auralflow_dist.separate.job import run_separation
from auralflow_dist.separate.results import FileResult, SeparationSummary

__all__ = [
    "FileResult",
    "SeparateConfig",
    "SeparationSummary",
    "add_arguments",
    "from_args",
    "run_separation",
]
