"""Chunk drawing (reproducible, fresh per epoch, duration-weighted) and decoding of chunk ranges."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from auralflow_dist import audio, storage
from auralflow_dist.data import manifest
from auralflow_dist.data.augment import Augmentation
from auralflow_dist.data.chunks import ChunkDrawer, ChunkSpec, draw_epoch, validation_chunks
from auralflow_dist.data.decode import DecodeSettings, decode_chunk, is_silent, load
from auralflow_dist.data.generate import write_dataset
from auralflow_dist.data.manifest import Track

RATE = 8000
STEMS = ("bass", "drums", "other", "vocals")


def fake_track(name: str, seconds: float, rate: int = RATE) -> Track:
    """A manifest row for drawing only (nothing is read)."""
    return Track(
        name, None, STEMS, tuple(f"/nowhere/{s}.wav" for s in STEMS), int(seconds * rate), rate, 2
    )


def settings(**changes) -> DecodeSettings:
    base = {
        "target": "vocals",
        "sample_rate": RATE,
        "num_channels": 2,
        "num_samples": 2000,
        "silence_threshold_db": -60.0,
    }
    return DecodeSettings(**{**base, **changes})


def read_range(url: str, offset: int, frames: int) -> np.ndarray:
    """The reference: soundfile over the whole file's bytes."""
    data, _ = sf.read(io.BytesIO(storage.read_bytes(url)), dtype="float32", always_2d=True)
    return data[offset : offset + frames].T


def test_draw_epoch_is_reproducible_and_fresh_each_epoch() -> None:
    tracks = [fake_track("a", 10), fake_track("b", 20, 16000)]
    first = draw_epoch(tracks, epoch=0, seed=3, num_chunks=50, chunk_seconds=0.5)
    assert first == draw_epoch(tracks, epoch=0, seed=3, num_chunks=50, chunk_seconds=0.5)
    assert first != draw_epoch(tracks, epoch=1, seed=3, num_chunks=50, chunk_seconds=0.5)
    assert first != draw_epoch(tracks, epoch=0, seed=4, num_chunks=50, chunk_seconds=0.5)
    for spec in first:
        track = tracks[spec.track]
        assert 0 <= spec.offset <= track.frames - 0.5 * track.sample_rate


def test_draws_are_weighted_by_duration() -> None:
    tracks = [fake_track("short", 10), fake_track("long", 30)]
    picks = [s.track for s in draw_epoch(tracks, 0, 0, 4000, 1.0)]
    assert np.mean(picks) == pytest.approx(0.75, abs=0.025)


def test_short_tracks_start_at_zero() -> None:
    tracks = [fake_track("tiny", 0.2)]
    assert {s.offset for s in draw_epoch(tracks, 0, 0, 20, 1.0)} == {0}


def test_validation_chunks_are_fixed_and_spread() -> None:
    tracks = [fake_track("a", 10), fake_track("b", 10), fake_track("c", 20)]
    chunks = validation_chunks(tracks, 8, 1.0, seed=0)
    assert chunks == validation_chunks(tracks, 8, 1.0, seed=0)
    assert [c.track for c in chunks] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert [c.offset for c in chunks] == [16000, 56000, 16000, 56000, 16000, 56000, 96000, 136000]


@pytest.fixture
def dataset(storage_root: str) -> list[Track]:
    url = storage.join(storage_root, "ds")
    write_dataset(url, tracks=2, seconds=2, seed=0, sample_rate=RATE, splits=("train",))
    return manifest.tracks(manifest.scan(url, val_fraction=0).table, "train")


def test_chunk_read_equals_soundfile_range(dataset: list[Track]) -> None:
    track = dataset[0]
    chunk = load(track, "drums", 1234, settings())
    np.testing.assert_array_equal(chunk, read_range(track.stem_url("drums"), 1234, 2000))
    # Past the end: zero-padded to the chunk length.
    tail = load(track, "drums", track.frames - 500, settings())
    np.testing.assert_array_equal(
        tail[:, :500], read_range(track.stem_url("drums"), track.frames - 500, 500)
    )
    assert not tail[:, 500:].any()


def test_mixture_equals_sum_of_stems_without_augmentation(dataset: list[Track]) -> None:
    drawer = ChunkDrawer(dataset, 0.25)
    spec = ChunkSpec(1, 3000, 7)
    chunk = decode_chunk(drawer, spec, settings())
    stems = [load(dataset[1], s, 3000, settings()) for s in STEMS]
    np.testing.assert_array_equal(chunk.mixture, np.sum(stems, axis=0))
    np.testing.assert_array_equal(chunk.target, stems[STEMS.index("vocals")])
    assert chunk.redraws == 0


def test_augmentation_is_reproducible_and_rebuilds_the_mixture(dataset: list[Track]) -> None:
    drawer = ChunkDrawer(dataset, 0.25)
    spec = ChunkSpec(0, 4000, 11)
    plain = decode_chunk(drawer, spec, settings())
    gain = settings(augmentation=Augmentation(gain=True, gain_range_db=6.0))
    gained = decode_chunk(drawer, spec, gain)
    np.testing.assert_array_equal(gained.mixture, decode_chunk(drawer, spec, gain).mixture)
    ratio = np.abs(gained.target).sum() / np.abs(plain.target).sum()
    assert 10 ** (-6 / 20) - 1e-6 <= ratio <= 10 ** (6 / 20) + 1e-6 and ratio != 1.0
    assert not np.allclose(gained.mixture, plain.mixture)

    outcomes = set()
    for seed in range(10):
        spec = ChunkSpec(0, 4000, seed)
        swap = decode_chunk(drawer, spec, settings(augmentation=Augmentation(channel_swap=True)))
        plain = decode_chunk(drawer, spec, settings())
        swapped = np.array_equal(swap.mixture, plain.mixture[::-1])
        assert swapped or np.array_equal(swap.mixture, plain.mixture)
        assert np.array_equal(swap.target, plain.target[::-1] if swapped else plain.target)
        outcomes.add(swapped)
    assert outcomes == {True, False}

    remix = settings(augmentation=Augmentation(remix=True))
    remixed = [decode_chunk(drawer, ChunkSpec(0, 4000, seed), remix) for seed in range(6)]
    for chunk in remixed:
        np.testing.assert_array_equal(chunk.target, plain.target)  # the target stays put
    assert any(not np.allclose(c.mixture, plain.mixture) for c in remixed)


def test_resampling_matches_the_whole_file_resampled(storage_root: str) -> None:
    url = storage.join(storage_root, "hi", "train", "t")
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 3 * 16000)).astype(np.float32)
    for stem in STEMS:
        audio.write(storage.join(url, f"{stem}.wav"), x, 16000, subtype="FLOAT")
    track = manifest.tracks(
        manifest.scan(storage.join(storage_root, "hi"), val_fraction=0).table, "train"
    )[0]
    whole = audio.resample(x, 16000, RATE)
    chunk = load(track, "vocals", 10000, settings())
    np.testing.assert_allclose(chunk, whole[:, 5000:7000], atol=1e-5)


def test_mono_downmix(dataset: list[Track]) -> None:
    chunk = load(dataset[0], "other", 100, settings(num_channels=1))
    expected = read_range(dataset[0].stem_url("other"), 100, 2000).mean(axis=0, keepdims=True)
    np.testing.assert_allclose(chunk, expected, atol=1e-7)


def test_silent_target_is_replaced_and_counted(storage_root: str) -> None:
    url = storage.join(storage_root, "quiet", "train", "t")
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 4 * RATE)).astype(np.float32)
    half_silent = x.copy()
    half_silent[:, : 2 * RATE] = 0
    audio.write(storage.join(url, "vocals.wav"), half_silent, RATE)
    audio.write(storage.join(url, "rest.wav"), x, RATE)
    tracks = manifest.tracks(
        manifest.scan(storage.join(storage_root, "quiet"), val_fraction=0).table, "train"
    )
    drawer = ChunkDrawer(tracks, 0.25)
    chunk = decode_chunk(drawer, ChunkSpec(0, 1000, 5), settings())
    assert chunk.redraws >= 1
    assert not is_silent(chunk.target, -60.0)
    again = decode_chunk(drawer, ChunkSpec(0, 1000, 5), settings())
    assert again.redraws == chunk.redraws and np.array_equal(again.target, chunk.target)
    assert not is_silent(chunk.mixture - chunk.target, -60.0)
