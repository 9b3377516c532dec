"""Hyperparameter sweeps: Ray Tune trials, each a Ray Train run of the training loop."""

from auralflow_dist.tune.space import Space, parse_space, read_space
from auralflow_dist.tune.sweep import SweepConfig, SweepSummary, run_sweep

__all__ = ["Space", "SweepConfig", "SweepSummary", "parse_space", "read_space", "run_sweep"]
