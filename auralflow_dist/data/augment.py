"""Training augmentation, decided from a chunk's seed before any audio is read.

The decisions (where each stem is read from, its gain, whether to swap channels) are made first
because remixing changes what to read: every stem may come from a different track and offset.
Each switch is independent; the same seed gives the same decisions, so augmented epochs are
reproducible. Separate random streams per switch keep one switch from changing another's draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from auralflow_dist.config import DataConfig
from auralflow_dist.data.chunks import ChunkDrawer, ChunkSpec


@dataclass(frozen=True)
class Plan:
    """How to build one chunk: stem -> (track index, offset), stem -> linear gain, swap L/R."""

    sources: dict[str, tuple[int, int]]
    gains: dict[str, float]
    swap: bool


@dataclass(frozen=True)
class Augmentation:
    gain: bool = False
    gain_range_db: float = 0.0
    channel_swap: bool = False
    remix: bool = False

    @classmethod
    def from_config(cls, config: DataConfig) -> Augmentation:
        return cls(
            gain=config.augment_gain,
            gain_range_db=config.gain_range_db,
            channel_swap=config.augment_channel_swap,
            remix=config.augment_remix,
        )

    @property
    def rebuilds_mixture(self) -> bool:
        """Whether the mixture must be summed from (changed) stems instead of read from its file."""
        return (self.gain and self.gain_range_db > 0) or self.remix

    def plan(self, spec: ChunkSpec, stems: Sequence[str], target: str, drawer: ChunkDrawer) -> Plan:
        """The decisions for ``spec``; the target always stays at the spec's own track and offset."""
        gain_rng, swap_rng, remix_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(3)
        )
        own = (spec.track, spec.offset)
        sources = {
            s: own if s == target or not self.remix else drawer.pick(remix_rng) for s in stems
        }
        gains = {
            s: float(10 ** (gain_rng.uniform(-self.gain_range_db, self.gain_range_db) / 20))
            if self.gain
            else 1.0
            for s in stems
        }
        return Plan(sources, gains, self.channel_swap and bool(swap_rng.random() < 0.5))


def apply(plan: Plan, stems: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``stems`` (``(channels, samples)`` each) with the plan's gains and channel swap."""
    out = {}
    for name, x in stems.items():
        x = x * np.float32(plan.gains[name]) if plan.gains[name] != 1.0 else x
        out[name] = x[::-1].copy() if plan.swap else x
    return out
