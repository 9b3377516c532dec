"""The synthetic dataset generator: MUSDB layout, exact 16-bit mixtures, determinism, speed, content."""

from __future__ import annotations

import time

import fsspec
import numpy as np
import pytest
import soundfile as sf

from auralflow_dist import audio
from auralflow_dist.data.generate import STEMS, synthesize_track, track_seed, write_dataset
from auralflow_dist.errors import ConfigError

LSB = 1.0 / 32768


def _centroid(x: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.mean(axis=0)))
    return float((spectrum * np.fft.rfftfreq(x.shape[1], 1 / sample_rate)).sum() / spectrum.sum())


def test_layout_and_exact_readback(tmp_path):
    root = tmp_path / "set"
    urls = write_dataset(str(root), tracks=3, seconds=1.0, seed=42)
    assert urls == [
        f"{root}/train/Track 000 - Gen 42",
        f"{root}/train/Track 001 - Gen 42",
        f"{root}/test/Track 002 - Gen 42",
    ]
    for index, url in enumerate(urls):
        expected = synthesize_track(track_seed(42, index), 1.0)
        read = {}
        for name in ("mixture", *STEMS):
            path = f"{url}/{name}.wav"
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (
                44100,
                2,
                44100,
                "PCM_16",
            )
            read[name] = sf.read(path, dtype="float32", always_2d=True)[0].T
            np.testing.assert_array_equal(read[name], expected[name])
        stem_sum = np.sum([read[name] for name in STEMS], axis=0)
        assert np.abs(read["mixture"] - stem_sum).max() <= LSB


def test_same_seed_same_track_and_different_seed_different():
    a, b, c = synthesize_track(5, 2.0), synthesize_track(5, 2.0), synthesize_track(6, 2.0)
    for name in ("mixture", *STEMS):
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name])


def test_datasets_with_neighbouring_seeds_share_no_tracks():
    assert {track_seed(1, i) for i in range(50)}.isdisjoint(track_seed(2, i) for i in range(50))


def test_ten_seconds_render_in_well_under_half_a_second():
    synthesize_track(0, 1.0)  # warm numpy's FFT plans and allocator
    best = np.inf
    for seed in range(3):
        start = time.perf_counter()
        synthesize_track(seed, 10.0)
        best = min(best, time.perf_counter() - start)
    assert best < 0.5


@pytest.mark.parametrize("seed", range(4))
def test_stems_are_audible_distinct_and_sum_to_an_unclipped_mixture(seed):
    track = synthesize_track(seed, 4.0, sample_rate=22050)
    for name, x in track.items():
        assert x.dtype == np.float32 and x.shape == (2, 4 * 22050), name
        assert np.sqrt(np.mean(x**2)) > 0.01, name
        np.testing.assert_array_equal(np.round(x / LSB) * LSB, x)  # on the 16-bit grid
    np.testing.assert_array_equal(track["mixture"], sum(track[name] for name in STEMS))
    assert np.abs(track["mixture"]).max() <= 0.9
    mono = np.stack([track[name].mean(axis=0) for name in STEMS])
    correlation = np.corrcoef(mono)
    assert np.abs(correlation[~np.eye(len(STEMS), dtype=bool)]).max() < 0.2
    assert _centroid(track["vocals"], 22050) > _centroid(track["bass"], 22050)
    assert not np.array_equal(track["vocals"][0], track["vocals"][1])  # panned, not dual mono


def test_flac_holds_the_track_exactly(tmp_path):
    (url,) = write_dataset(str(tmp_path), tracks=1, seconds=0.5, seed=1, fmt="flac")
    assert url.endswith("/train/Track 000 - Gen 1")
    expected = synthesize_track(track_seed(1, 0), 0.5)
    for name in ("mixture", *STEMS):
        data, rate = audio.read(f"{url}/{name}.flac")
        assert rate == 44100
        np.testing.assert_array_equal(data, expected[name])


@pytest.mark.parametrize(("fmt", "subtype"), [("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")])
def test_lossy_formats_are_written(tmp_path, fmt, subtype):
    (url,) = write_dataset(str(tmp_path), tracks=1, seconds=1.0, seed=2, fmt=fmt)
    for name in ("mixture", *STEMS):
        info = audio.info(f"{url}/{name}.{fmt}")
        assert (info.sample_rate, info.channels, info.subtype) == (44100, 2, subtype)
        assert abs(info.frames - 44100) < 4096  # encoder padding
        data, _ = audio.read(f"{url}/{name}.{fmt}")
        assert np.sqrt(np.mean(data**2)) > 0.005


def test_24_bit_and_fsspec_urls(tmp_path):
    url = "memory://generate-test/set"
    (track,) = write_dataset(
        url, tracks=1, seconds=0.3, seed=3, subtype="PCM_24", sample_rate=16000
    )
    expected = synthesize_track(track_seed(3, 0), 0.3, sample_rate=16000)
    fs = fsspec.filesystem("memory")
    assert sorted(
        p.rsplit("/", 1)[1] for p in fs.ls(track.removeprefix("memory://"), detail=False)
    ) == [
        "bass.wav",
        "drums.wav",
        "mixture.wav",
        "other.wav",
        "vocals.wav",
    ]
    data, rate = audio.read(f"{track}/mixture.wav")
    assert rate == 16000 and audio.info(f"{track}/mixture.wav").subtype == "PCM_24"
    np.testing.assert_array_equal(data, expected["mixture"])
    fs.rm("/generate-test", recursive=True)


def test_splits_and_progress(tmp_path):
    calls = []
    urls = write_dataset(
        str(tmp_path),
        tracks=3,
        seconds=0.2,
        seed=0,
        splits=("all",),
        progress=lambda *a: calls.append(a),
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert all("/all/Track " in u for u in urls)
    urls = write_dataset(str(tmp_path / "b"), tracks=4, seconds=0.2, seed=0, test_fraction=0.5)
    assert [u.split("/")[-2] for u in urls] == ["train", "train", "test", "test"]
    assert [
        u.split("/")[-2] for u in write_dataset(str(tmp_path / "c"), 2, 0.2, 0, test_fraction=0)
    ] == [
        "train",
        "train",
    ]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tracks": 0}, "tracks"),
        ({"seconds": 0}, "seconds"),
        ({"fmt": "aiff"}, "format"),
        ({"fmt": "ogg", "subtype": "PCM_16"}, "subtype"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"splits": ("a", "b", "c")}, "splits"),
        ({"seed": -1}, "seed"),
        ({"sample_rate": 100}, "sample_rate"),
    ],
)
def test_bad_arguments_name_their_field(tmp_path, kwargs, field):
    args = {"url": str(tmp_path), "tracks": 1, "seconds": 0.1, "seed": 0, **kwargs}
    with pytest.raises(ConfigError) as err:
        write_dataset(**args)
    assert err.value.field == field
