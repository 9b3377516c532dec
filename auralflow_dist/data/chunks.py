"""Which stretch of which track each training or validation example is: drawn, not decoded.

A chunk is drawn per slot from ``(seed, epoch, slot)`` alone, so any task in any process draws the
same chunk for the same slot without coordination, every epoch sees new chunks, and a run is
reproducible. Tracks are picked with probability proportional to their duration and offsets
uniformly, so every second of audio is equally likely (short tracks are not oversampled).

``max_tracks`` (applied by the pipeline) keeps the first tracks in manifest order, as the seeds'
Auralflow did: the pool is stable when tracks are added later and needs no seed of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from auralflow_dist.data.manifest import Track


@dataclass(frozen=True)
class ChunkSpec:
    """A chunk: ``track`` indexes the track list, ``offset`` is in frames at the track's own rate.

    ``seed`` drives everything random about the chunk after it is drawn (augmentation, redraws of
    silent chunks), so decoding a spec twice gives the same audio.
    """

    track: int
    offset: int
    seed: int


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**63))


class ChunkDrawer:
    """Draws chunks of ``chunk_seconds`` from ``tracks``, weighted by their durations."""

    def __init__(self, tracks: Sequence[Track], chunk_seconds: float) -> None:
        if not tracks:
            raise ValueError("no tracks to draw chunks from")
        self.tracks = list(tracks)
        self.chunk_seconds = chunk_seconds
        # Stems every track has: the ones remixing can draw from any track.
        self.stems = sorted(set.intersection(*(set(t.stem_names) for t in self.tracks)))
        durations = np.array([t.duration for t in self.tracks], dtype=np.float64)
        self._weights = durations / durations.sum()

    def frames(self, track: int) -> int:
        """Frames one chunk spans at the track's own rate."""
        return math.ceil(self.chunk_seconds * self.tracks[track].sample_rate)

    def pick(self, rng: np.random.Generator) -> tuple[int, int]:
        """A track (weighted by duration) and an offset in it; offset 0 where it is too short."""
        track = int(rng.choice(len(self.tracks), p=self._weights))
        room = self.tracks[track].frames - self.frames(track)
        return track, int(rng.integers(room + 1)) if room > 0 else 0

    def draw(self, seed: int, epoch: int, slot: int) -> ChunkSpec:
        """The chunk of ``slot`` in ``epoch`` of a run seeded with ``seed``."""
        rng = np.random.default_rng([seed, epoch, slot])
        track, offset = self.pick(rng)
        return ChunkSpec(track, offset, _seed(rng))

    def redraw(self, spec: ChunkSpec, attempt: int) -> ChunkSpec:
        """A replacement for a rejected (silent) chunk, the same for the same spec and attempt."""
        rng = np.random.default_rng([spec.seed, attempt])
        track, offset = self.pick(rng)
        return ChunkSpec(track, offset, _seed(rng))


def draw_epoch(
    tracks: Sequence[Track], epoch: int, seed: int, num_chunks: int, chunk_seconds: float
) -> list[ChunkSpec]:
    """The chunks of one epoch, slot by slot, exactly as the training pipeline draws them."""
    drawer = ChunkDrawer(tracks, chunk_seconds)
    return [drawer.draw(seed, epoch, slot) for slot in range(num_chunks)]


def validation_chunks(
    tracks: Sequence[Track], num_chunks: int, chunk_seconds: float, seed: int
) -> list[ChunkSpec]:
    """Chunks centred on evenly spaced points of the tracks laid end to end: fixed for a run.

    Every epoch and every worker validates on the same audio, so validation losses compare.
    ``seed`` only seeds the specs (redraws of silent chunks).
    """
    drawer = ChunkDrawer(tracks, chunk_seconds)
    ends = np.cumsum([t.duration for t in tracks])
    specs = []
    for k in range(num_chunks):
        at = (k + 0.5) * ends[-1] / num_chunks
        index = min(int(np.searchsorted(ends, at, side="right")), len(tracks) - 1)
        track = tracks[index]
        start = ends[index] - track.duration
        centre = round((at - start) * track.sample_rate)
        room = max(track.frames - drawer.frames(index), 0)
        offset = min(max(centre - drawer.frames(index) // 2, 0), room)
        specs.append(ChunkSpec(index, offset, _seed(np.random.default_rng([seed, k]))))
    return specs
