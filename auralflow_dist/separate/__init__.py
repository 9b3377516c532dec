"""Bulk separation: every audio file under a URL through a model, on a Ray actor pool.

The config and its flags import nothing heavy, so a CLI can build its parser without loading
Ray or torch; the job itself is imported on first use.
"""

from typing import Any

from auralflow_dist.separate.config import SeparateConfig, add_arguments, from_args

__all__ = [
    "FileResult",
    "SeparateConfig",
    "SeparationSummary",
    "add_arguments",
    "from_args",
    "run_separation",
]


def __getattr__(name: str) -> Any:
    if name == "run_separation":
        from auralflow_dist.separate.job import run_separation

        return run_separation
    if name in ("FileResult", "SeparationSummary"):
        from auralflow_dist.separate import results

        return getattr(results, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
