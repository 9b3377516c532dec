"""What ``separate`` writes: formats and their bitrate or quality, and what happens to peaks.

Each runs the per-file separator in this process on a tiny model (the job around it is the
same for every format: tests/test_separate_job.py), and reads the stems back with soundfile.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_separate_job import RATE, noise, tiny_model

from auralflow_dist import cli, flags
from auralflow_dist.config import EvalConfig, from_dict
from auralflow_dist.data.generate import synthesize_track
from auralflow_dist.errors import ConfigError
from auralflow_dist.metrics import si_sdr
from auralflow_dist.models.separator import Bundle, Separator
from auralflow_dist.separate import SeparateConfig, from_args
from auralflow_dist.separate.sources import Source, list_inputs
from auralflow_dist.separate.track import TrackSeparator, check_output_paths


def _separate(tmp_path: Path, data: np.ndarray, input_subtype: str = "PCM_16", **options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    song = tmp_path / "song.wav"
    sf.write(song, data, RATE, subtype=input_subtype)
    job = SeparateConfig(
        model="unused", audio=str(song), save=str(tmp_path / "out"), residual=True, **options
    ).validate()
    result = TrackSeparator(Bundle([tiny_model().separator]), job, "k", "r")(Source(str(song), "s"))
    assert result.status == "ok", result.error
    return result


@pytest.mark.parametrize(
    ("fmt", "options", "rate", "kbps"),
    [
        ("mp3", {"bitrate": 64}, RATE, (48, 80)),  # constant bitrate, a standard MPEG rate
        ("mp3", {"quality": 2}, RATE, None),
        ("ogg", {"quality": 6}, RATE, None),
        ("opus", {"bitrate": 48}, 48000, (30, 70)),  # Opus runs at 48 kHz only: resampled
        ("flac", {"subtype": "PCM_24"}, RATE, None),
    ],
)
def test_every_output_format_decodes_at_its_rate_and_length(
    tmp_path: Path, fmt: str, options: dict, rate: int, kbps: tuple[int, int] | None
) -> None:
    seconds = 3.0
    result = _separate(tmp_path, noise(seconds, RATE, 2), format=fmt, **options)
    assert result.output_sample_rate == rate
    assert ("resampled to 48000 Hz for Opus" in result.note) is (fmt == "opus")
    for stem in ("vocals", "residual"):
        url = result.output(stem)
        assert url.endswith(f"{stem}.{fmt}")
        decoded, decoded_rate = sf.read(url)
        assert decoded_rate == rate and decoded.shape[1] == 2
        # Lossy codecs pad with a frame or two of their own.
        assert abs(len(decoded) - seconds * rate) <= 0.1 * rate, len(decoded)
        if kbps is not None:
            rate_kbps = Path(url).stat().st_size * 8 / seconds / 1000
            assert kbps[0] <= rate_kbps <= kbps[1], rate_kbps
    if fmt == "flac":
        assert sf.info(result.output("vocals")).subtype == "PCM_24"


def test_clip_modes_rescale_clamp_or_keep_the_peaks_and_the_gain_is_recorded(
    tmp_path: Path,
) -> None:
    loud = noise(2.0, RATE, 1) * 8.0  # peaks near 3.2: float WAV holds them, PCM cannot
    rescaled = _separate(tmp_path / "r", loud, input_subtype="FLOAT")
    gains = json.loads(rescaled.gains)
    assert set(gains) == {"vocals", "residual"} and all(0 < g < 1 for g in gains.values())
    for stem in gains:
        written, _ = sf.read(rescaled.output(stem))
        assert np.abs(written).max() == pytest.approx(1.0, abs=1e-4)  # peak times gain

    clamped = _separate(tmp_path / "c", loud, input_subtype="FLOAT", clip_mode="clamp")
    assert json.loads(clamped.gains) == {"vocals": 1.0, "residual": 1.0}
    written, _ = sf.read(clamped.output("residual"))
    assert np.abs(written).max() <= 1.0 and (np.abs(written) >= 0.9999).sum() > 10

    kept = _separate(tmp_path / "n", loud, input_subtype="FLOAT", clip_mode="none", subtype="FLOAT")
    written, _ = sf.read(kept.output("residual"))
    assert np.abs(written).max() > 1.5  # a float file keeps what the model gave


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "wav", "bitrate": 128}, "--bitrate is for mp3 and opus"),
        ({"format": "mp3", "bitrate": 400}, "8..320 kbps"),
        ({"format": "ogg", "quality": 11}, "0 to 10"),
        ({"format": "mp3", "bitrate": 128, "quality": 2}, "not both"),
        ({"format": "opus", "sr": 44100}, "Opus runs at 48000 Hz"),
        ({"clip_mode": "none"}, "PCM_16 cannot hold samples beyond"),
        ({"clip_mode": "wrap"}, "rescale, clamp or none"),
    ],
)
def test_output_options_that_cannot_work_are_refused_at_start(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SeparateConfig(model="m", audio="a", save="s", **options).validate()


def test_bf16_autocast_on_any_cpu_stays_within_25_db_of_float32() -> None:
    """``--use-amp`` on a CPU: bf16 convolutions (oneDNN emulates them where the CPU lacks bf16
    instructions, so this holds on AVX2-only machines too) and a float32 mask and ISTFT."""
    model = tiny_model()
    song = synthesize_track(3, 4.0, RATE)["mixture"]
    plain = Separator(model.config, model.model, "cpu").separate(song, RATE)
    mixed = Separator(model.config, model.model, "cpu", use_amp=True).separate(song, RATE)
    assert mixed.dtype == torch.float32 and mixed.shape == plain.shape
    assert float(si_sdr(mixed.flatten(), plain.flatten())) > 25.0


def test_use_amp_reaches_separate_and_test_from_their_flags() -> None:
    parser = cli._parser()
    args = parser.parse_args(["separate", "m", "a", "--save=s", "--use-amp"])
    assert from_args(args).use_amp is True
    args = parser.parse_args(["test", "m", "d", "--use-amp"])
    assert from_dict(EvalConfig, flags.given(args, EvalConfig)).use_amp is True


def test_a_filename_template_places_the_stems_and_a_collision_is_refused_at_start(
    tmp_path: Path,
) -> None:
    # Spleeter's layout: a folder per stem.
    result = _separate(tmp_path, noise(1.0, RATE, 1), filename="{stem}/{name}.{ext}")
    assert result.output("vocals") == str(tmp_path / "out" / "vocals" / "song.wav")
    assert (tmp_path / "out" / "residual" / "song.wav").is_file()
    job = SeparateConfig(model="m", audio="a", save="s", filename="{name}_{stem}.{ext}").validate()
    sources = [Source("in/a/intro.wav", "a/intro"), Source("in/b/intro.wav", "b/intro")]
    with pytest.raises(ConfigError, match=r"gives intro_vocals\.wav to both in/a/intro\.wav and"):
        check_output_paths(job, sources, ["vocals"])
    check_output_paths(dataclasses.replace(job, filename="{track}_{stem}.{ext}"), sources, ["v"])
    with pytest.raises(ConfigError, match="names a job file"):
        check_output_paths(
            dataclasses.replace(job, filename="{track}/{stem}"), sources, ["_done.json"]
        )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{track}.{ext}", "must hold {stem}"),
        ("{stem}.{ext}", "must hold {track} or {name}"),
        ("../{track}/{stem}.{ext}", "leaves --save"),
        ("/abs/{track}/{stem}.{ext}", "leaves --save"),
        ("{track}/{instrument}.{ext}", "unknown field"),
        ("{track/{stem}", "not a template"),
    ],
)
def test_a_filename_template_that_cannot_work_is_refused(template: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SeparateConfig(model="m", audio="a", save="s", filename=template).validate()


def test_an_mp3_bitrate_the_sample_rate_lacks_is_the_nearest_and_the_row_says_so(
    tmp_path: Path,
) -> None:
    result = _separate(tmp_path, noise(2.0, RATE, 1), format="mp3", bitrate=192)
    assert result.note == "mp3 at 16000 Hz: 160 kbps"  # MPEG-2's highest at 16 kHz
    assert Path(result.output("vocals")).stat().st_size * 8 / 2.0 / 1000 > 120


def test_files_without_a_taken_extension_are_reported_and_extensions_widen_or_narrow(
    tmp_path: Path,
) -> None:
    for name in ("a.wav", "b.aiff", "c.caf"):
        sf.write(tmp_path / name, noise(0.2, RATE, 1), RATE)
    (tmp_path / "notes.txt").write_text("liner notes")
    sources, others = list_inputs(str(tmp_path))
    assert [s.track for s in sources] == ["a", "b"]  # CAF is readable but not taken by default
    assert [Path(u).name for u in others] == ["c.caf", "notes.txt"]
    sources, others = list_inputs(str(tmp_path), extensions=("wav", "caf"))
    assert [s.track for s in sources] == ["a", "c"]
    job = SeparateConfig(model="m", audio="a", save="s", extensions=" WAV, .caf ").validate()
    assert job.extension_set == ("wav", "caf")
    with pytest.raises(ConfigError, match="xyz: choose among"):
        SeparateConfig(model="m", audio="a", save="s", extensions="wav,xyz").validate()


def test_a_marker_written_before_the_output_options_existed_still_skips_the_file(
    tmp_path: Path,
) -> None:
    """Markers of earlier runs lack filename/bitrate/quality/clip_mode: they mean the defaults."""
    song = tmp_path / "song.wav"
    sf.write(song, noise(1.0, RATE, 1), RATE)

    def separate(run: str, **options):
        job = SeparateConfig(model="m", audio=str(song), save=str(tmp_path / "out"), **options)
        bundle = Bundle([tiny_model().separator])
        return TrackSeparator(bundle, job.validate(), "k", run)(Source(str(song), "song"))

    assert separate("r1").status == "ok"
    marker = tmp_path / "out" / "song" / "_done.json"
    record = json.loads(marker.read_text())
    for name in ("filename", "bitrate", "quality", "clip_mode"):
        del record["settings"][name]
    marker.write_text(json.dumps(record))
    assert separate("r2").status == "skipped"
    assert separate("r3", clip_mode="clamp").status == "ok"  # another setting: done again
