"""What ``separate`` reads through ffmpeg (AAC in M4A, WMA, Opus in WebM, MUSDB18's .stem.mp4),
locally and from S3, and how it says so where ffmpeg is missing or a file is cut.

The per-file separator runs in this process on a tiny model (the job around it is the same for
every input: tests/test_separate_job.py); every reference is ffmpeg's own decode of the file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_separate_job import RATE, noise, tiny_model

from auralflow_dist import audio, ffmpeg, storage
from auralflow_dist.errors import ConfigError
from auralflow_dist.models.separator import Bundle
from auralflow_dist.separate import SeparateConfig
from auralflow_dist.separate.sources import Source, list_inputs, skip_reason, track_name
from auralflow_dist.separate.track import TrackSeparator

needs_ffmpeg = pytest.mark.skipif(not ffmpeg.available(), reason="needs ffmpeg")


def _encode(path: Path, seconds: float, rate: int, codec: str, seed: int = 0) -> None:
    wav = path.with_suffix(".src.wav")
    sf.write(wav, noise(seconds, rate, 2, seed), rate, subtype="FLOAT")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", codec, str(path)], check=True
    )
    wav.unlink()


def _stem_mp4(path: Path, seconds: float) -> None:
    """Five FLAC streams in MP4, as MUSDB18 ships them; stream 0 (the mixture) is the loudest."""
    inputs = []
    for i in range(5):
        wav = path.parent.parent / f"{i}.wav"
        sf.write(wav, noise(seconds, RATE, 2, seed=i) * (1.0 if i == 0 else 0.1), RATE)
        inputs += ["-i", str(wav)]
    maps = [a for i in range(5) for a in ("-map", f"{i}:a")]
    subprocess.run(
        ["ffmpeg", "-v", "error", *inputs, *maps, "-c:a", "flac", "-strict", "-2", str(path)],
        check=True,
    )


def _separator(save: Path, **options) -> TrackSeparator:
    job = SeparateConfig(
        model="unused", audio=str(save.parent), save=str(save), residual=True, **options
    ).validate()
    return TrackSeparator(Bundle([tiny_model().separator]), job, model_key="k", run_id="r")


def _reference(path: Path) -> np.ndarray:
    """The first audio stream as ffmpeg's command line decodes it, cut to the container's length."""
    header = ffmpeg.info(str(path))
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-acodec", "pcm_f32le", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, "<f4").reshape(-1, header.channels).T[:, : header.frames]


@needs_ffmpeg
@pytest.mark.parametrize(
    ("name", "rate", "codec"),
    [("song.m4a", 44100, "aac"), ("song.wma", 44100, "wmav2"), ("song.webm", 48000, "libopus")],
)
def test_ffmpeg_formats_separate_into_stems_that_sum_to_the_decoded_input(
    tmp_path: Path, name: str, rate: int, codec: str
) -> None:
    path = tmp_path / name
    _encode(path, 2.0, rate, codec)
    result = _separator(tmp_path / "out")(Source(str(path), "song"))
    assert result.status == "ok", result.error
    assert (result.sample_rate, result.channels) == (rate, 2)
    stems = {s: audio.read(result.output(s))[0] for s in ("vocals", "residual")}
    expected = _reference(path)
    assert stems["vocals"].shape == expected.shape
    # AAC's last frame runs past the recording: the stems end where the recording does.
    assert abs(expected.shape[1] - 2.0 * rate) <= (0 if codec == "aac" else 0.03 * rate)
    assert np.abs(stems["vocals"] + stems["residual"] - expected).max() < 1e-3
    assert (tmp_path / "out" / "song" / "_done.json").exists()


@needs_ffmpeg
def test_a_musdb_stem_mp4_separates_its_mixture_stream_into_a_folder_named_for_the_track(
    tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "Artist - Title.stem.mp4"
    _stem_mp4(path, 1.5)
    sources, others = list_inputs(
        str(tmp_path / "in"), extensions=SeparateConfig("m", "a", "s").extension_set
    )
    assert [s.track for s in sources] == ["Artist - Title"] and others == []
    result = _separator(tmp_path / "out")(sources[0])
    assert result.status == "ok", result.error
    together = sum(audio.read(result.output(s))[0] for s in ("vocals", "residual"))
    mixture = sf.read(tmp_path / "0.wav", dtype="float32", always_2d=True)[0].T
    assert np.abs(together - mixture).max() < 1e-3  # stream 0, not the sum of all five
    assert result.output("vocals") == str(tmp_path / "out" / "Artist - Title" / "vocals.wav")


def test_stem_mp4_track_names_drop_the_whole_suffix() -> None:
    assert track_name("musdb/test/A - B.stem.mp4") == "musdb/test/A - B"
    assert track_name("clips/take.mp4") == "clips/take"


@needs_ffmpeg
def test_a_cut_m4a_or_wma_fails_as_its_row_and_is_not_marked_done(tmp_path: Path) -> None:
    for name, codec in (("cut.m4a", "aac"), ("cut.wma", "wmav2")):
        path = tmp_path / name
        _encode(path, 3.0, 44100, codec)
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
        result = _separator(tmp_path / "out")(Source(str(path), name))
        assert result.status == "failed"
        assert result.error.startswith(f"{path}: ff"), result.error
        assert len(result.error.splitlines()) == 1
        assert not (tmp_path / "out" / name / "_done.json").exists()
        assert not (tmp_path / "out" / name / "vocals.wav").exists()


@needs_ffmpeg
def test_an_m4a_on_s3_is_separated_through_a_presigned_url_off_the_command_line(
    tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "song.m4a"
    _encode(local, 2.0, 44100, "aac")
    url = f"s3://{s3_bucket}/in/song.m4a"
    storage.write_bytes(url, local.read_bytes())
    argvs: list[list[str]] = []
    for name in ("run", "Popen"):
        real = getattr(subprocess, name)

        def spy(argv, *args, _real=real, **kwargs):
            argvs.append(list(argv))
            return _real(argv, *args, **kwargs)

        monkeypatch.setattr(subprocess, name, spy)
    save = f"s3://{s3_bucket}/out"
    job = SeparateConfig(model="unused", audio=url, save=save, residual=True).validate()
    result = TrackSeparator(Bundle([tiny_model().separator]), job, "k", "r")(Source(url, "song"))
    assert result.status == "ok", result.error
    vocals = audio.read(f"{save}/song/vocals.wav")[0]
    residual = audio.read(f"{save}/song/residual.wav")[0]
    assert np.abs(vocals + residual - _reference(local)).max() < 1e-3
    assert {Path(a[0]).name for a in argvs} == {"ffprobe", "ffmpeg"}
    assert not any("Signature" in arg or s3_bucket in arg for argv in argvs for arg in argv)


def test_without_ffmpeg_its_formats_are_listed_as_not_separated_and_cannot_be_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.m4a").write_bytes(b"\0" * 64)
    sf.write(tmp_path / "b.wav", noise(0.1, RATE, 1), RATE)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    job = SeparateConfig(model="m", audio=str(tmp_path), save=str(tmp_path / "out")).validate()
    assert "m4a" not in job.extension_set and "wav" in job.extension_set
    sources, others = list_inputs(str(tmp_path), extensions=job.extension_set)
    assert [Path(s.url).name for s in sources] == ["b.wav"]
    assert others == [str(tmp_path / "a.m4a")]
    assert skip_reason(others[0], job.extension_set) == (
        "not separated: .m4a needs ffmpeg, which is not installed"
    )
    with pytest.raises(ConfigError, match=r"extensions: m4a need ffmpeg, which is not installed"):
        SeparateConfig(model="m", audio="a", save="s", extensions="wav,m4a").validate()


def test_unknown_extensions_are_refused_naming_the_ones_known() -> None:
    with pytest.raises(ConfigError, match=r"extensions: xyz: choose among wav, flac, .*, m4a"):
        SeparateConfig(model="m", audio="a", save="s", extensions="wav,xyz").validate()


@needs_ffmpeg
def test_a_results_row_of_an_ffmpeg_input_has_its_rate_and_length(tmp_path: Path) -> None:
    path = tmp_path / "song.m4a"
    _encode(path, 2.0, 44100, "aac")
    result = _separator(tmp_path / "out", duration=1.0)(Source(str(path), "song"))
    assert result.status == "ok", result.error
    assert result.duration_s == 1.0 and result.trimmed
    assert set(json.loads(result.gains)) == {"vocals", "residual"}
