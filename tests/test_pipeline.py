"""The Ray Data pipeline on a local Ray: fresh chunks per epoch through the clock, fixed validation."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch

from auralflow_dist import audio, storage
from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict, replace
from auralflow_dist.data import manifest, pipeline
from auralflow_dist.data.chunks import ChunkDrawer, draw_epoch
from auralflow_dist.data.decode import DecodeSettings, decode_chunk
from auralflow_dist.data.generate import write_dataset
from auralflow_dist.errors import AuralflowError, ConfigError

pytestmark = pytest.mark.usefixtures("ray_local")

RATE = 8000
MODEL = ModelConfig(sample_length=0.25, sample_rate=RATE, num_channels=2).validate()


def trainer(**changes) -> TrainerConfig:
    base = {"max_samples": 24, "batch_size": 8, "num_workers": 2, "val_chunks": 6, "seed": 3}
    return from_dict(TrainerConfig, {**base, **changes})


def fingerprint(mixture: np.ndarray, target: np.ndarray) -> str:
    return hashlib.sha1(mixture.tobytes() + target.tobytes()).hexdigest()


def fingerprints(dataset: ray.data.Dataset) -> list[str]:
    """The dataset's chunks, in a canonical order (Ray does not keep the slot order)."""
    rows = [
        fingerprint(m, t)
        for batch in dataset.iter_batches(batch_format="numpy")
        for m, t in zip(batch["mixture"], batch["target"], strict=True)
    ]
    return sorted(rows)


@pytest.fixture
def table(storage_root: str) -> pa.Table:
    url = storage.join(storage_root, "ds")
    write_dataset(url, tracks=4, seconds=2, seed=0, sample_rate=RATE)
    return manifest.scan(url).table  # 2 train, 1 valid, 1 test


def test_train_dataset_follows_the_epoch_clock(table: pa.Table) -> None:
    name = f"clock-{uuid.uuid4().hex}"
    clock = pipeline.get_or_create_epoch_clock(name)
    assert pipeline.read_epoch(name) == 0
    config = trainer()
    dataset = pipeline.build_train_dataset(table, MODEL, config, name)

    first = fingerprints(dataset)
    assert len(first) == config.data.max_samples
    assert fingerprints(dataset) == first  # the same epoch again: the same chunks
    ray.get(pipeline.get_or_create_epoch_clock(name).set.remote(1))  # the same clock, by name
    second = fingerprints(dataset)
    assert second != first

    # Exactly the chunks `draw_epoch` names for (seed, epoch), decoded in this process.
    settings = DecodeSettings.from_configs(MODEL, config, augment=True)
    tracks = manifest.tracks(table, "train")
    drawer = ChunkDrawer(tracks, settings.chunk_seconds)
    specs = draw_epoch(
        tracks, 1, config.optim.seed, config.data.max_samples, settings.chunk_seconds
    )
    chunks = [decode_chunk(drawer, spec, settings) for spec in specs]
    assert sorted(fingerprint(c.mixture, c.target) for c in chunks) == second
    ray.kill(clock)


def test_rows_are_waveforms_and_batches_are_tensors(table: pa.Table) -> None:
    dataset = pipeline.build_train_dataset(table, MODEL, trainer(), 0)
    assert dataset.schema().names == ["mixture", "target", "redraws"]
    stats = pipeline.ChunkStats()
    batches = list(pipeline.iter_batches(dataset, 8, shuffle_buffer=16, prefetch=2, stats=stats))
    assert len(batches) == 3
    for mixture, target in batches:
        assert mixture.shape == target.shape == (8, 2, MODEL.num_samples)
        assert mixture.dtype == target.dtype == torch.float32
    assert stats.chunks == 24 and stats.silent_dropped == 0


def test_validation_is_fixed(table: pa.Table) -> None:
    dataset = pipeline.build_val_dataset(table, MODEL, trainer())
    first = fingerprints(dataset)
    assert len(first) == 6
    assert fingerprints(dataset) == first
    kept = pipeline.build_val_dataset(table, MODEL, trainer(persistent_workers=True))
    assert fingerprints(kept) == first


def test_streaming_split_feeds_every_consumer(table: pa.Table) -> None:
    dataset = pipeline.build_train_dataset(table, MODEL, trainer(max_samples=32), 0)
    shards = dataset.streaming_split(2)
    counts = [0, 0]

    def consume(rank: int) -> None:
        for mixture, _ in pipeline.iter_batches(shards[rank], 4, drop_last=False):
            counts[rank] += mixture.shape[0]

    threads = [threading.Thread(target=consume, args=(rank,)) for rank in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(c > 0 for c in counts) and sum(counts) == 32


def test_silent_chunks_are_counted(tmp_path: Path) -> None:
    url = str(tmp_path / "quiet")
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 4 * RATE)).astype(np.float32)
    for track in ("a", "b"):
        vocals = x.copy()
        vocals[:, : 2 * RATE] = 0  # silent for half of the track
        audio.write(f"{url}/train/{track}/vocals.wav", vocals, RATE)
        audio.write(f"{url}/train/{track}/rest.wav", x, RATE)
    table = manifest.scan(url, val_fraction=0).table
    stats = pipeline.ChunkStats()
    dataset = pipeline.build_train_dataset(table, MODEL, trainer(max_samples=16), 0)
    for _, target in pipeline.iter_batches(dataset, 8, stats=stats):
        assert (target.square().mean(dim=(1, 2)) > 1e-6).all()
    assert stats.silent_dropped > 0


def test_unusable_manifests_are_named(table: pa.Table) -> None:
    with pytest.raises(ConfigError, match="target: manifest: 2 train track"):
        pipeline.build_train_dataset(
            table, ModelConfig(target="piano", sample_rate=RATE).validate(), trainer(), 0
        )
    no_valid = table.filter(pa.compute.not_equal(table["split"], "valid"))
    with pytest.raises(AuralflowError, match="manifest: no valid tracks"):
        pipeline.build_val_dataset(no_valid, MODEL, trainer())


def test_16bit_chunks_carry_exactly_the_float_samples(table: pa.Table) -> None:
    """16-bit files at the model rate travel as int16: half the bytes, the same floats."""
    config = trainer(augment_gain=False, augment_remix=False)
    tracks = manifest.tracks(table, "train")
    assert all(t.pcm16 for t in tracks)  # the generator writes 16-bit WAV
    drawer = ChunkDrawer(tracks, MODEL.num_samples / RATE)
    floats = DecodeSettings.from_configs(MODEL, config, augment=True)
    ints = floats.for_tracks(tracks)
    assert ints.pcm16 and not floats.pcm16
    for spec in draw_epoch(tracks, 0, 3, 12, MODEL.num_samples / RATE):
        a, b = decode_chunk(drawer, spec, floats), decode_chunk(drawer, spec, ints)
        assert b.mixture.dtype == b.target.dtype == np.int16 and b.redraws == a.redraws
        np.testing.assert_array_equal(b.mixture * np.float32(1 / 32768), a.mixture)
        np.testing.assert_array_equal(b.target * np.float32(1 / 32768), a.target)
    dataset = pipeline.build_train_dataset(table, MODEL, config, 0)
    assert next(iter(dataset.iter_batches(batch_format="numpy")))["mixture"].dtype == np.int16
    for mixture, _ in pipeline.iter_batches(dataset, 8):
        assert mixture.dtype == torch.float32 and 0 < mixture.abs().max() < 1


def test_16bit_chunks_only_where_exact(table: pa.Table) -> None:
    tracks = manifest.tracks(table, "train")
    plain = DecodeSettings.from_configs(
        MODEL, trainer(augment_gain=False, augment_remix=False), augment=True
    )
    assert plain.for_tracks(tracks).pcm16
    gained = DecodeSettings.from_configs(MODEL, trainer(augment_remix=False), augment=True)
    assert not gained.for_tracks(tracks).pcm16  # the mixture is rebuilt from gained stems
    mono = DecodeSettings.from_configs(replace(MODEL, num_channels=1), trainer(), augment=False)
    assert not mono.for_tracks(tracks).pcm16  # a stereo downmix averages
    other_rate = DecodeSettings.from_configs(
        replace(MODEL, sample_rate=16000), trainer(), augment=False
    )
    assert not other_rate.for_tracks(tracks).pcm16  # resampled
    wide = [dataclasses.replace(tracks[0], pcm16=False), *tracks[1:]]
    assert not plain.for_tracks(wide).pcm16  # e.g. a 24-bit FLAC
    summed = [dataclasses.replace(tracks[0], mixture_url=None), *tracks[1:]]
    assert not plain.for_tracks(summed).pcm16  # the mixture is a sum of stems


@pytest.mark.slow
def test_batches_repeat_exactly_for_a_shuffle_seed(tmp_path: Path) -> None:
    """Two decode tasks and two formatting threads, yet the same seed gives the same batches."""
    url = str(tmp_path / "ds")
    write_dataset(url, tracks=4, seconds=2, seed=0, sample_rate=RATE)
    dataset = pipeline.build_train_dataset(manifest.scan(url).table, MODEL, trainer(), 1)

    def rows(seed: int) -> list[str]:
        return [
            fingerprint(m.numpy(), t.numpy())
            for mixture, target in pipeline.iter_batches(dataset, 4, 8, 2, "cpu", shuffle_seed=seed)
            for m, t in zip(mixture, target, strict=True)
        ]

    first = rows(5)
    assert rows(5) == first
    other = rows(6)
    assert other != first and sorted(other) == sorted(first)
