"""Turn a chunk spec into ``(mixture, target)`` waveforms, reading only the chunk's frames.

Each file is read over the chunk's range alone (ranged reads on object stores), at its own rate,
then brought to the model's channels and rate. A chunk whose target is silent teaches nothing (and
makes scale-invariant losses undefined), so it is replaced by a redraw from its seed and counted.

Where every sample of every chunk is a 16-bit PCM value (16-bit files at the model's rate, read
without gain or remixing), chunks stay 16-bit integers: half the bytes through the object store,
whose copies bounded the pipeline's rate, and exactly the same values once the consumer scales
them to float (`PCM16_SCALE`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from auralflow_dist import audio, ffmpeg
from auralflow_dist.config import ModelConfig, TrainerConfig
from auralflow_dist.data import stem_mp4
from auralflow_dist.data.augment import Augmentation, apply
from auralflow_dist.data.chunks import ChunkDrawer, ChunkSpec
from auralflow_dist.data.manifest import MIXTURE, Track

MAX_REDRAWS = 8
PCM16_SCALE = 1 / 32768  # int16 sample -> float in [-1, 1), as libsndfile decodes it


@dataclass(frozen=True)
class DecodeSettings:
    target: str
    sample_rate: int
    num_channels: int
    num_samples: int
    silence_threshold_db: float
    augmentation: Augmentation = field(default_factory=Augmentation)
    max_redraws: int = MAX_REDRAWS
    pcm16: bool = False  # chunks as int16 PCM (see `for_tracks`), else float32

    @classmethod
    def from_configs(
        cls, model: ModelConfig, trainer: TrainerConfig, augment: bool
    ) -> DecodeSettings:
        return cls(
            target=model.target,
            sample_rate=model.sample_rate,
            num_channels=model.num_channels,
            num_samples=model.num_samples,
            silence_threshold_db=trainer.data.silence_threshold_db,
            augmentation=Augmentation.from_config(trainer.data) if augment else Augmentation(),
        )

    @property
    def chunk_seconds(self) -> float:
        return self.num_samples / self.sample_rate

    def for_tracks(self, tracks: Sequence[Track]) -> DecodeSettings:
        """These settings with 16-bit chunks where that loses nothing for ``tracks``.

        Exact when every file is 16-bit PCM at the model's rate, the mixture is read from its
        file (no gain or remix rebuilding it) and channels are kept, duplicated or dropped but
        never averaged (downmixing to mono).
        """
        exact = not self.augmentation.rebuilds_mixture and all(
            t.pcm16
            and t.mixture_url is not None
            and t.sample_rate == self.sample_rate
            and (self.num_channels > 1 or t.channels == 1)
            for t in tracks
        )
        return dataclasses.replace(self, pcm16=exact)


@dataclass
class Chunk:
    mixture: np.ndarray
    target: np.ndarray
    redraws: int  # silent chunks dropped before this one


def read_source(
    track: Track, url: str, offset: int, frames: int, dtype: str = "float32"
) -> np.ndarray:
    """Frames ``[offset, offset + frames)`` of a stem or mixture at its own rate, zero-padded."""
    mp4 = stem_mp4.parse_source(url)
    if mp4:
        return ffmpeg.read(*mp4, offset, frames, track.sample_rate, track.channels)
    # A view: the batch `np.stack` transposes while it copies, one pass over the samples, not two.
    return audio.read(url, offset, frames, dtype, fill_value=0, contiguous=False)[0]


def load(track: Track, name: str, offset: int, settings: DecodeSettings) -> np.ndarray:
    """Stem ``name`` (or the mixture) from ``offset``: ``(num_channels, num_samples)`` at the model rate.

    Resampling reads frames of context on both sides (more than the sinc filter's half width), so
    the chunk's edges equal those of the whole file resampled instead of fading in from zeros. The
    leading context is a whole number of rate periods, so it maps to whole output samples.
    """
    url = track.mixture_url if name == MIXTURE else track.stem_url(name)
    n, rate, model_rate = settings.num_samples, track.sample_rate, settings.sample_rate
    if rate == model_rate:
        dtype = "int16" if settings.pcm16 else "float32"
        return audio.to_channels(read_source(track, url, offset, n, dtype), settings.num_channels)
    period = rate // math.gcd(rate, model_rate)  # input frames per whole number of output samples
    context = audio.resampling_context(rate, model_rate)
    lead = min(context, offset // period * period)
    frames = lead + math.ceil(n * rate / model_rate) + context
    x = audio.to_channels(read_source(track, url, offset - lead, frames), settings.num_channels)
    y = audio.resample(x, rate, model_rate)[:, lead * model_rate // rate :][:, :n]
    return np.pad(y, ((0, 0), (0, n - y.shape[1]))) if y.shape[1] < n else y


def is_silent(x: np.ndarray, threshold_db: float) -> bool:
    """RMS at or below ``threshold_db`` dBFS (of float or 16-bit PCM samples)."""
    flat = x.ravel(order="K")  # a view in memory order, also of transposed reads
    if flat.dtype == np.int16:
        flat = flat * np.float32(PCM16_SCALE)
    energy = float(np.vdot(flat, flat)) / x.size  # one BLAS pass; a float64 square costs a copy
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
