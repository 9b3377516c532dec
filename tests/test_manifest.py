"""Dataset scan and manifest: layouts, splits, named problems, headers only, on local disk and S3."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from auralflow_dist import audio, ffmpeg, storage
from auralflow_dist.data import manifest
from auralflow_dist.data.generate import write_dataset
from auralflow_dist.errors import AuralflowError

RATE = 8000
STEMS = ["bass", "drums", "other", "vocals"]


def noise(frames: int, seed: int = 0, channels: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.3, 0.3, (channels, frames)).astype(np.float32)


def write_track(url: str, files: list[str], frames: int = RATE, rate: int = RATE) -> None:
    """A track folder with one file per name (``vocals.wav``, ``guitar.ogg``, ...)."""
    for i, name in enumerate(files):
        audio.write(storage.join(url, name), noise(frames, i), rate)


@pytest.fixture
def generated(storage_root: str) -> str:
    url = storage.join(storage_root, "ds")
    write_dataset(url, tracks=6, seconds=2, seed=0, sample_rate=RATE)
    return url


def test_scan_generated_dataset(generated: str) -> None:
    result = manifest.scan(generated)
    table = result.table
    assert result.problems == []
    assert table.schema == manifest.SCHEMA
    rows = table.to_pylist()
    # 6 tracks: the generator puts 2 in test; 10% of the 4 train tracks (at least one) is carved.
    assert [r["split"] for r in rows] == ["train"] * 3 + ["valid"] + ["test"] * 2
    for split in ("train", "test"):
        names = [r["track"] for r in rows if r["split"] == split]
        assert names == sorted(names)
    for r in rows:
        assert r["stem_names"] == STEMS
        assert r["stem_urls"] == [
            storage.join(generated, _folder(r), r["track"], f"{s}.wav") for s in STEMS
        ]
        assert r["mixture_url"] == storage.join(generated, _folder(r), r["track"], "mixture.wav")
        assert (r["frames"], r["sample_rate"], r["channels"], r["duration"]) == (
            2 * RATE,
            RATE,
            2,
            2.0,
        )
    assert manifest.scan(generated).table.equals(table)
    # Other seeds carve other tracks.
    assert any(not manifest.scan(generated, seed=s).table.equals(table) for s in (1, 2, 3))


def _folder(row: dict) -> str:
    return "test" if row["split"] == "test" else "train"


def test_scan_reads_headers_only(storage_root: str) -> None:
    """A FLAC whose audio frames are garbage scans fine: only its header is read."""
    url = storage.join(storage_root, "ds")
    write_dataset(url, tracks=2, seconds=2, seed=1, sample_rate=RATE, fmt="flac")
    victim = storage.find_files(url, ["flac"])[0]
    data = bytearray(storage.read_bytes(victim))
    data[len(data) // 4 :] = np.random.default_rng(0).bytes(len(data) - len(data) // 4)
    storage.write_bytes(victim, bytes(data))
    with pytest.raises(sf.LibsndfileError):
        sf.read(io.BytesIO(bytes(data)))  # decoding the whole file would fail
    result = manifest.scan(url)
    assert result.problems == []
    assert result.table.num_rows == 2


def test_broken_tracks_are_named_and_skipped(generated: str) -> None:
    tracks = sorted(
        u.rsplit("/", 1)[0] for u in storage.find_files(generated, ["wav"]) if "/train/" in u
    )
    t0, t1, t2, t3 = sorted(set(tracks))
    storage.remove(storage.join(t0, "bass.wav"))
    audio.write(storage.join(t1, "vocals.wav"), noise(2 * RATE - 100), RATE)
    storage.write_bytes(storage.join(t2, "drums.wav"), np.random.default_rng(0).bytes(3000))
    audio.write(storage.join(t3, "other.wav"), noise(RATE), RATE // 2)

    result = manifest.scan(generated)
    problems = " | ".join(result.problems)
    names = [t.rsplit("/", 1)[1] for t in (t0, t1, t2, t3)]
    assert len(result.problems) == 4
    assert f"train/{names[0]}: missing stem bass" in problems
    assert f"train/{names[1]}: lengths differ" in problems
    assert f"train/{names[2]}: unreadable" in problems and "drums.wav" in problems
    assert f"train/{names[3]}: sample rates differ" in problems
    assert not set(names) & set(result.table.column("track").to_pylist())
    assert result.table.num_rows == 2  # the two test tracks

    with pytest.raises(AuralflowError, match="4 problem") as err:
        manifest.scan(generated, strict=True)
    assert all(name in str(err.value) for name in names)


def test_custom_stem_names_without_mixture(storage_root: str) -> None:
    url = storage.join(storage_root, "custom")
    for split, name in [("train", "a"), ("train", "b"), ("test", "c")]:
        write_track(storage.join(url, split, name), ["guitar.ogg", "piano.flac", "backing.wav"])
    rows = manifest.scan(url).table.to_pylist()
    assert [r["split"] for r in rows] == ["train", "valid", "test"]
    assert sorted(r["track"] for r in rows[:2]) == ["a", "b"] and rows[2]["track"] == "c"
    assert all(r["mixture_url"] is None for r in rows)
    assert rows[0]["stem_names"] == ["backing", "guitar", "piano"]
    assert rows[0]["stem_urls"][1].endswith(f"/train/{rows[0]['track']}/guitar.ogg")


def test_root_without_splits_is_split_by_seeded_fractions(storage_root: str) -> None:
    url = storage.join(storage_root, "pool")
    for i in range(10):
        write_track(storage.join(url, f"song {i}"), ["vocals.wav", "rest.wav"], frames=800)
    splits = [manifest.scan(url, seed=s).table.column("split").to_pylist() for s in (0, 0, 1)]
    assert splits[0] == ["train"] * 7 + ["valid"] + ["test"] * 2
    table = manifest.scan(url, seed=0).table
    assert manifest.scan(url, seed=0).table.equals(table)
    other = manifest.scan(url, seed=1).table
    assert set(table.column("track").to_pylist()) == set(other.column("track").to_pylist())
    assert table.column("track").to_pylist() != other.column("track").to_pylist()


def test_musdb_validation_tracks_are_used(tmp_path: Path) -> None:
    url = str(tmp_path / "musdb")
    official = ["ANiMAL - Rockshow", "Leaf - Summerghost", "Triviul - Angelsaint"]
    for name in [*official, "A - B", "C - D", "E - F"]:
        write_track(storage.join(url, "train", name), [f"{s}.wav" for s in STEMS], frames=400)
    write_track(storage.join(url, "test", "G - H"), [f"{s}.wav" for s in STEMS], frames=400)
    table = manifest.scan(url).table
    valid = [r["track"] for r in table.to_pylist() if r["split"] == "valid"]
    assert valid == official


def test_valid_folder_is_kept(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    for split, name in [("train", "a"), ("train", "b"), ("validation", "v"), ("test", "t")]:
        write_track(storage.join(url, split, name), ["vocals.wav", "rest.wav"], frames=400)
    rows = manifest.scan(url).table.to_pylist()
    assert [(r["split"], r["track"]) for r in rows] == [
        ("train", "a"),
        ("train", "b"),
        ("valid", "v"),
        ("test", "t"),
    ]


def test_missing_or_empty_dataset_is_named(storage_root: str, tmp_path: Path) -> None:
    missing = storage.join(storage_root, "nothing-here")
    with pytest.raises(AuralflowError, match="nothing-here: dataset folder not found"):
        manifest.scan(missing)
    storage.write_bytes(storage.join(storage_root, "empty", "README.txt"), b"no audio")
    with pytest.raises(AuralflowError, match="empty: no audio files"):
        manifest.scan(storage.join(storage_root, "empty"))


def test_prepare_writes_a_manifest_that_reads_back(generated: str, storage_root: str) -> None:
    out, result = manifest.prepare(generated)
    assert out == storage.join(generated, "manifest.parquet")
    assert manifest.read_manifest(out).equals(result.table)
    assert manifest.scan(generated).table.equals(
        result.table
    )  # the manifest is not scanned as audio
    elsewhere = storage.join(storage_root, "manifests", "other.parquet")
    assert manifest.prepare(generated, out_url=elsewhere)[0] == elsewhere
    assert manifest.read_manifest(elsewhere).num_rows == result.table.num_rows


def test_manifest_says_which_tracks_are_16_bit(tmp_path: Path) -> None:
    """16-bit tracks can travel through the pipeline as int16; wider ones must not."""
    url = str(tmp_path / "ds")
    write_track(f"{url}/train/pcm16", [f"{s}.wav" for s in STEMS])
    for i, s in enumerate(STEMS):  # 24-bit FLAC and float WAV: 16 bits would lose precision
        audio.write(f"{url}/train/pcm24/{s}.flac", noise(RATE, i), RATE, subtype="PCM_24")
        audio.write(f"{url}/train/float/{s}.wav", noise(RATE, i), RATE, subtype="FLOAT")
    table = manifest.scan(url, val_fraction=0).table
    assert {t.name: t.pcm16 for t in manifest.tracks(table, "train")} == {
        "float": False,
        "pcm16": True,
        "pcm24": False,
    }
    older = tmp_path / "older.parquet"  # written before the column existed
    manifest.write_manifest(table.drop_columns(["pcm16"]), str(older))
    assert not any(t.pcm16 for t in manifest.tracks(manifest.read_manifest(str(older)), "train"))


def test_read_manifest_refuses_other_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(AuralflowError, match=r"junk\.parquet: not a parquet manifest"):
        manifest.read_manifest(str(junk))
    other = tmp_path / "other.parquet"
    manifest.write_manifest(pa.table({"x": [1]}), str(other))
    with pytest.raises(AuralflowError, match="not an auralflow manifest"):
        manifest.read_manifest(str(other))


def test_stem_mp4_without_ffmpeg_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = tmp_path / "musdb"
    (url / "train").mkdir(parents=True)
    (url / "train" / "Some Artist - Some Song.stem.mp4").write_bytes(b"\0" * 64)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(
        AuralflowError, match=r"Some Song\.stem\.mp4: \.stem\.mp4 needs ffmpeg: install it"
    ):
        manifest.scan(str(url))


@pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="needs ffmpeg"
)
def test_stem_mp4_is_read_with_ffmpeg(tmp_path: Path) -> None:
    parts = [noise(RATE * 2, seed) for seed in range(5)]
    inputs = []
    for i, part in enumerate(parts):
        sf.write(tmp_path / f"{i}.wav", part.T, RATE, subtype="FLOAT")
        inputs += ["-i", str(tmp_path / f"{i}.wav")]
    (tmp_path / "musdb" / "train").mkdir(parents=True)
    target = tmp_path / "musdb" / "train" / "X - Y.stem.mp4"
    maps = [a for i in range(5) for a in ("-map", f"{i}:a")]
    subprocess.run(
        ["ffmpeg", "-v", "error", *inputs, *maps, "-c:a", "flac", "-strict", "-2", str(target)],
        check=True,
    )
    row = manifest.scan(str(tmp_path / "musdb")).table.to_pylist()[0]
    assert row["stem_names"] == ["bass", "drums", "other", "vocals"]
    assert row["mixture_url"] == f"{target}#0"
    assert abs(row["frames"] - 2 * RATE) <= 1
    drums = ffmpeg.read(str(target), 1, 1000, 500, RATE, 2)
    np.testing.assert_allclose(drums, parts[1][:, 1000:1500], atol=1e-4)


@pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="needs ffmpeg"
)
def test_ranged_reads_of_an_aac_stem_mp4_equal_a_whole_decode(tmp_path: Path) -> None:
    """MUSDB18 ships AAC: a seek in the input gives wrong first frames, and the concat demuxer
    keeps AAC's 1024 frames of priming on its timeline; both would shift or garble chunks."""
    inputs = []
    for i in range(2):
        sf.write(tmp_path / f"{i}.wav", noise(RATE * 2, i).T, RATE, subtype="FLOAT")
        inputs += ["-i", str(tmp_path / f"{i}.wav")]
    target = tmp_path / "X - Y.stem.mp4"
    maps = [a for i in range(2) for a in ("-map", f"{i}:a")]
    subprocess.run(
        ["ffmpeg", "-v", "error", *inputs, *maps, "-c:a", "aac", str(target)], check=True
    )
    for stream in range(2):
        raw = subprocess.run(
            [
                *("ffmpeg", "-v", "error", "-i", str(target), "-map", f"0:a:{stream}"),
                *("-f", "f32le", "-acodec", "pcm_f32le", "-"),
            ],
            check=True,
            capture_output=True,
        ).stdout
        whole = np.frombuffer(raw, "<f4").reshape(-1, 2).T
        for offset in (0, 1000, RATE):
            chunk = ffmpeg.read(str(target), stream, offset, 4000, RATE, 2)
            np.testing.assert_array_equal(chunk, whole[:, offset : offset + 4000])
