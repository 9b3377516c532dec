"""Turn a chunk spec into ``(mixture, target)`` waveforms, reading only the chunk's frames.

Each file is read over the chunk's range alone (ranged reads on object stores), at its own rate,
then brought to the model's channels and rate. A chunk whose target is silent teaches nothing (and
makes scale-invariant losses undefined), so it is replaced by a redraw from its seed and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from auralflow_dist import audio
from auralflow_dist.config import ModelConfig, TrainerConfig
from auralflow_dist.data import stem_mp4
from auralflow_dist.data.augment import Augmentation, apply
from auralflow_dist.data.chunks import ChunkDrawer, ChunkSpec
from auralflow_dist.data.manifest import MIXTURE, Track

MAX_REDRAWS = 8


@dataclass(frozen=True)
class DecodeSettings:
    target: str
    sample_rate: int
    num_channels: int
    num_samples: int
    silence_threshold_db: float
    augmentation: Augmentation = field(default_factory=Augmentation)
    max_redraws: int = MAX_REDRAWS

    @classmethod
    def from_configs(
        cls, model: ModelConfig, trainer: TrainerConfig, augment: bool
    ) -> DecodeSettings:
        return cls(
            target=model.target,
            sample_rate=model.sample_rate,
            num_channels=model.num_channels,
            num_samples=model.num_samples,
            silence_threshold_db=trainer.silence_threshold_db,
            augmentation=Augmentation.from_config(trainer) if augment else Augmentation(),
        )

    @property
    def chunk_seconds(self) -> float:
        return self.num_samples / self.sample_rate


@dataclass
class Chunk:
    mixture: np.ndarray
    target: np.ndarray
    redraws: int  # silent chunks dropped before this one


def read_source(track: Track, url: str, offset: int, frames: int) -> np.ndarray:
    """Frames ``[offset, offset + frames)`` of a stem or mixture at its own rate, zero-padded."""
    mp4 = stem_mp4.parse_source(url)
    if mp4:
        return stem_mp4.read(*mp4, offset, frames, track.sample_rate, track.channels)
    return audio.read(url, offset, frames, fill_value=0.0)[0]


def load(track: Track, name: str, offset: int, settings: DecodeSettings) -> np.ndarray:
    """Stem ``name`` (or the mixture) from ``offset``: ``(num_channels, num_samples)`` at the model rate.

    Resampling reads frames of context on both sides (more than the sinc filter's half width), so
    the chunk's edges equal those of the whole file resampled instead of fading in from zeros. The
    leading context is a whole number of rate periods, so it maps to whole output samples.
    """
    url = track.mixture_url if name == MIXTURE else track.stem_url(name)
    n, rate, model_rate = settings.num_samples, track.sample_rate, settings.sample_rate
    if rate == model_rate:
        return audio.to_channels(read_source(track, url, offset, n), settings.num_channels)
    period = rate // math.gcd(rate, model_rate)  # input frames per whole number of output samples
    context = math.ceil(8 * rate / min(rate, model_rate) / period) * period
    lead = min(context, offset // period * period)
    frames = lead + math.ceil(n * rate / model_rate) + context
    x = audio.to_channels(read_source(track, url, offset - lead, frames), settings.num_channels)
    y = audio.resample(x, rate, model_rate)[:, lead * model_rate // rate :][:, :n]
    return np.pad(y, ((0, 0), (0, n - y.shape[1]))) if y.shape[1] < n else y


def is_silent(x: np.ndarray, threshold_db: float) -> bool:
    """RMS at or below ``threshold_db`` dBFS."""
    energy = float(np.vdot(x, x)) / x.size  # one BLAS pass; a float64 square costs a copy
    return energy <= 10 ** (threshold_db / 10)


def decode_chunk(drawer: ChunkDrawer, spec: ChunkSpec, settings: DecodeSettings) -> Chunk:
    """The waveforms of ``spec``: augmented as ``settings`` say, the mixture summed where needed."""
    name = settings.target
    target = load(drawer.tracks[spec.track], name, spec.offset, settings)
    redraws = 0
    while redraws < settings.max_redraws and is_silent(target, settings.silence_threshold_db):
        redraws += 1
        spec = drawer.redraw(spec, redraws)
        target = load(drawer.tracks[spec.track], name, spec.offset, settings)
    track = drawer.tracks[spec.track]
    aug = settings.augmentation
    stems = drawer.stems if aug.remix else track.stem_names
    plan = aug.plan(spec, stems, name, drawer)
    if aug.rebuilds_mixture or track.mixture_url is None:
        parts = {
            s: target if s == name else load(drawer.tracks[t], s, offset, settings)
            for s, (t, offset) in plan.sources.items()
        }
        parts = apply(plan, parts)
        mixture = np.sum([parts[s] for s in stems], axis=0, dtype=np.float32)
        return Chunk(mixture, parts[name], redraws)
    mixture = load(track, MIXTURE, spec.offset, settings)
    if plan.swap:
        mixture, target = mixture[::-1].copy(), target[::-1].copy()
    return Chunk(mixture, target, redraws)
