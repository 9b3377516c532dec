"""The bulk separation job: outputs equal ``separate()``, naming, bad files, re-runs, crashes.

Everything runs for real: files written with soundfile into a local folder and onto the test S3
server, a 2-actor Ray Data job on the session's local Ray, and a worker process that really exits
mid-job. A tiny model keeps it fast; `separate()` on the whole file is the reference.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from auralflow_dist import audio, storage
from auralflow_dist.config import ModelConfig
from auralflow_dist.errors import AuralflowError, ConfigError
from auralflow_dist.models.mask_model import SpectrogramMaskModel
from auralflow_dist.models.separator import Bundle
from auralflow_dist.observability import REGISTRY
from auralflow_dist.separate import SeparateConfig, SeparationSummary, run_separation, track
from auralflow_dist.separate.job import CRASH_ONCE_ENV, _files_at_once
from auralflow_dist.separate.sources import Source, list_sources, track_names
from auralflow_dist.separate.track import TrackSeparator
from auralflow_dist.session import save_network

RATE = 16000
TOL = 1e-4


def tiny_config(num_channels: int = 1, sample_rate: int = RATE, target: str = "vocals"):
    return ModelConfig(
        hidden_channels=4,
        sample_rate=sample_rate,
        sample_length=0.5,
        num_fft=256,
        window_size=256,
        hop_length=128,
        num_channels=num_channels,
        target=target,
    ).validate()


def tiny_model(
    num_channels: int = 1, sample_rate: int = RATE, target: str = "vocals", seed: int = 0
) -> SpectrogramMaskModel:
    torch.manual_seed(seed)
    return SpectrogramMaskModel(tiny_config(num_channels, sample_rate, target), device="cpu")


def save_model(
    url: str, num_channels: int = 1, sample_rate: int = RATE, target: str = "vocals", seed: int = 0
) -> str:
    model = tiny_model(num_channels, sample_rate, target, seed)
    save_network(url, model.config, model.model)
    return url


def save_bundle(url: str, targets: tuple[str, ...] = ("drums", "vocals")) -> str:
    """A folder of one model per target, as ``train --targets`` leaves."""
    for seed, target in enumerate(targets):
        save_model(storage.join(url, target), target=target, seed=seed)
    return url


def noise(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    """(frames, channels) float32 in [-0.4, 0.4]: soundfile's layout."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.4, 0.4, (round(seconds * rate), channels)).astype(np.float32)


def put(url: str, data: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> None:
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    storage.write_bytes(url, buf.getvalue())


# ------------------------------------------------------------------------------------------------
# Inputs and outputs


@pytest.mark.parametrize(
    ("files", "workers", "gpus", "cpus", "at_once"),
    [
        (12, 2, 0.0, 4.0, 4),  # CPU, files for every CPU: one file per CPU, a thread each
        (7, 2, 0.0, 4.0, 1),  # fewer files than CPUs: each file gets all of an actor's threads
        (100, 1, 1.0, 4.0, 4),  # a GPU: files side by side share its forward passes
        (2, 1, 1.0, 1.0, 4),  # however few files and CPUs
        (100, 3, 0.0, 1.5, 1),  # one whole CPU
    ],
)
def test_actors_separate_a_file_per_cpu_when_there_are_files_enough(
    files: int, workers: int, gpus: float, cpus: float, at_once: int
) -> None:
    assert _files_at_once(files, workers, gpus, cpus) == at_once


def test_track_names_follow_the_seeds_and_never_collide() -> None:
    assert track_names(["song.wav", "b/intro.flac", "c/intro.flac", "test/Song A/mixture.wav"]) == [
        "song",
        "b/intro",
        "c/intro",
        "test/Song A",
    ]
    # Same name twice in one folder: both keep their file names.
    assert track_names(["a/x.wav", "a/x.flac", "a/y/mixture.wav", "a/y.mp3"]) == [
        "a/x.wav",
        "a/x.flac",
        "a/y/mixture.wav",
        "a/y.mp3",
    ]


def test_sources_skip_outputs_inside_the_input_folder(tmp_path: Path) -> None:
    put(str(tmp_path / "in" / "a.wav"), noise(0.1, RATE, 1), RATE, "WAV")
    put(str(tmp_path / "in" / "out" / "a" / "vocals.wav"), noise(0.1, RATE, 1), RATE, "WAV")
    (tmp_path / "in" / "notes.txt").write_text("not audio")
    sources = list_sources(str(tmp_path / "in"), exclude=str(tmp_path / "in" / "out"))
    assert sources == [Source(str(tmp_path / "in" / "a.wav"), "a")]
    single = list_sources(str(tmp_path / "in" / "a.wav"))
    assert [s.track for s in single] == ["a"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"padding": -1}, "padding"),
        ({"format": "aiff"}, "format"),
        ({"format": "flac", "subtype": "float"}, "subtype"),
        ({"duration": 0}, "duration"),
        ({"workers": 0}, "workers"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_config_errors_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        SeparateConfig(model="m", audio="a", save="s", **change).validate()
    assert err.value.field == field


# ------------------------------------------------------------------------------------------------
# The job on Ray


GOOD = {  # name: (seconds, rate, channels, format, subtype)
    "stereo.wav": (2.3, RATE, 2, "WAV", "PCM_16"),
    "mono.flac": (1.7, RATE, 1, "FLAC", "PCM_24"),
    "six.wav": (1.2, RATE, 6, "WAV", "PCM_16"),
    "hires.wav": (1.1, 96000, 2, "WAV", "PCM_24"),
    "eight_bit.wav": (1.0, 22050, 1, "WAV", "PCM_U8"),
    "song/mixture.ogg": (1.5, 44100, 2, "OGG", "VORBIS"),
    "clip.mp3": (1.2, 44100, 2, "MP3", "MPEG_LAYER_III"),
    "voice.aiff": (1.0, RATE, 1, "AIFF", "PCM_16"),
}
NOT_AUDIO = ("cover.jpg", "notes.txt")  # listed as not separated, never opened
BAD = {  # name: part of the one-line error
    "empty.wav": "is empty (0 bytes)",
    "zero_frames.wav": "contains no audio frames",
    "text.mp3": "not readable as audio",
    "truncated.flac": "corrupt or truncated",
    "nan.wav": "contains NaN/inf samples",
}


def write_inputs(root: str) -> None:
    for i, (name, (seconds, rate, channels, fmt, subtype)) in enumerate(GOOD.items()):
        put(storage.join(root, name), noise(seconds, rate, channels, seed=i), rate, fmt, subtype)
    storage.write_bytes(storage.join(root, "empty.wav"), b"")
    put(storage.join(root, "zero_frames.wav"), np.zeros((0, 2), np.float32), RATE, "WAV")
    storage.write_bytes(storage.join(root, "text.mp3"), b"ID3? no: just some text\n" * 40)
    buf = io.BytesIO()
    sf.write(buf, noise(2.0, RATE, 2), RATE, format="FLAC")
    storage.write_bytes(
        storage.join(root, "truncated.flac"), buf.getvalue()[: len(buf.getvalue()) // 2]
    )
    nan = noise(1.0, RATE, 1)
    nan[12000] = np.nan
    put(storage.join(root, "nan.wav"), nan, RATE, "WAV", "FLOAT")
    for name in NOT_AUDIO:
        storage.write_bytes(storage.join(root, name), b"not audio")


def check_outputs(bundle_url: str, inputs: str, summary, residual: bool) -> None:
    """Every target's stem equals its own model's `separate()` of the file; the residual is the
    mixture minus them all."""
    references = {
        t: SpectrogramMaskModel.from_checkpoint(storage.join(bundle_url, t), device="cpu")
        for t in ("drums", "vocals")
    }
    rows = {r.input_url[len(inputs) + 1 :]: r for r in summary.results}
    for name in GOOD:
        row = rows[name]
        assert row.status in ("ok", "skipped"), row
        x, rate = audio.read(storage.join(inputs, name))
        rest = x.copy()
        for target, reference in references.items():
            want = reference.separate(x, sample_rate=rate).numpy()
            got, out_rate = audio.read(row.output(target))
            assert (out_rate, got.shape) == (rate, x.shape), name
            assert np.abs(got - want).max() < TOL, (name, target)
            rest -= want
        if residual:
            got, _ = audio.read(row.output("residual"))
            assert np.abs(got - rest).max() < TOL, name
    assert rows["song/mixture.ogg"].track == "song"


def run(model_url: str, inputs: str, save: str, **options) -> SeparationSummary:
    job = SeparateConfig(
        model=model_url,
        audio=inputs,
        save=save,
        residual=True,
        workers=2,
        subtype="FLOAT",
        batch_size=1,  # lets blocks be as short as one window: every file streams in several
        block_seconds=0.4,
        **options,
    )
    return run_separation(job, echo=lambda line: None)


def files_metric(job: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "auralflow_separate_files_total", {"job": job, "status": status}
    )
    return value or 0.0


@pytest.mark.usefixtures("ray_local")
def test_job_separates_good_files_reports_bad_ones_and_resumes(
    storage_root: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    local = not storage_root.startswith("s3://")
    model_url = save_bundle(storage.join(storage_root, "bundle"))
    inputs, save = storage.join(storage_root, "in"), storage.join(storage_root, "out")
    write_inputs(inputs)
    if local:  # a worker process exits for real on its first look at this file
        monkeypatch.setenv(CRASH_ONCE_ENV, "stereo.wav")

    label = f"test-{uuid.uuid4().hex[:8]}"
    first = run(model_url, inputs, save, job_name=label)
    assert (first.files, first.ok, first.failed, first.skipped) == (
        len(GOOD) + len(BAD),
        len(GOOD),
        len(BAD),
        0,
    )
    check_outputs(model_url, inputs, first, residual=True)
    rows = {r.input_url.rsplit("/", 1)[1]: r for r in first.results}
    for name, message in BAD.items():
        assert rows[name].status == "failed"
        assert message in rows[name].error and name in rows[name].error
        assert "\n" not in rows[name].error
    assert rows["stereo.wav"].attempts == (2 if local else 1)
    assert first.not_audio == len(NOT_AUDIO)
    for name in NOT_AUDIO:
        assert rows[name].status == "skipped" and "is not among --extensions" in rows[name].note
    table = pq.read_table(io.BytesIO(storage.read_bytes(first.results_url))).to_pylist()
    assert sorted(r["input_url"] for r in table) == sorted(r.input_url for r in first.results)
    assert storage.exists(first.results_csv_url)
    assert rows["hires.wav"].sample_rate == 96000 and rows["six.wav"].channels == 6
    assert (files_metric(label, "ok"), files_metric(label, "failed")) == (len(GOOD), len(BAD))

    monkeypatch.delenv(CRASH_ONCE_ENV, raising=False)
    second = run(model_url, inputs, save)
    assert (second.ok, second.skipped, second.failed) == (0, len(GOOD), len(BAD))
    assert second.audio_seconds == 0

    if local:
        target = Path(rows["mono.flac"].output("drums"))
        before = target.stat().st_mtime_ns
        third = run(model_url, inputs, save, overwrite=True, duration=1.0)
        assert (third.ok, third.skipped) == (len(GOOD), 0)
        assert target.stat().st_mtime_ns != before
        trimmed = {r.input_url.rsplit("/", 1)[1]: r for r in third.results}
        assert trimmed["stereo.wav"].trimmed and trimmed["stereo.wav"].duration_s == 1.0
        assert sf.info(str(target)).frames == RATE


def test_unreadable_model_or_inputs_fail_at_the_edge(tmp_path: Path) -> None:
    with pytest.raises(AuralflowError, match="no trained model"):
        run_separation(SeparateConfig(model=str(tmp_path), audio=str(tmp_path), save="x"))
    model_url = save_model(str(tmp_path / "model"))
    (tmp_path / "in").mkdir()
    with pytest.raises(AuralflowError, match=r"no \.wav"):
        run_separation(SeparateConfig(model=model_url, audio=str(tmp_path / "in"), save="x"))
    with pytest.raises(ConfigError, match="padding"):
        run_separation(SeparateConfig(model=model_url, audio=str(tmp_path), save="x", padding=RATE))


def test_job_entrypoint_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(__file__).resolve().parents[1] / "jobs" / "separate.py"
    spec = importlib.util.spec_from_file_location("separate_entrypoint", path)
    entrypoint = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entrypoint)
    assert entrypoint.main([str(tmp_path / "nomodel"), str(tmp_path), "--save", "out"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nomodel: not found" in err
    assert entrypoint.main(["m", "a", "--save", "s", "--format", "flac", "--subtype", "f"]) == 2
    assert capsys.readouterr().err.startswith(
        "auralflow separate: error: --subtype: flac cannot hold F"
    )


# ------------------------------------------------------------------------------------------------
# One hour in bounded memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_one_hour_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    rate, seconds = 8000, 3600
    # A tiny model gains nothing from a second thread, and loses much on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _separate_one_hour(tmp_path, rate, seconds)
    finally:
        torch.set_num_threads(threads)


def _separate_one_hour(tmp_path: Path, rate: int, seconds: int) -> None:
    model = tiny_model(sample_rate=rate)
    path = tmp_path / "hour.wav"
    with sf.SoundFile(path, "w", rate, 1, "PCM_16") as f:
        for i in range(60):
            f.write(noise(60, rate, 1, seed=i))
    job = SeparateConfig(
        model="unused", audio=str(path), save=str(tmp_path / "out"), residual=True
    ).validate()
    separate = TrackSeparator(Bundle([model.separator]), job, model_key="k", run_id="r")
    warm = tmp_path / "warm.wav"
    sf.write(warm, noise(65, rate, 1), rate)  # warms up every buffer at full block size
    assert separate(Source(str(warm), "warm")).status == "ok"

    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = separate(Source(str(path), "hour"))
    finally:
        done.set()
        sampler.join()
    assert result.status == "ok", result.error
    assert sf.info(result.output("vocals")).frames == rate * seconds
    # The file is 115 MB as float32: holding it whole, let alone its windows, would show here.
    assert peak[0] - base < 60 * 2**20, f"RSS grew by {(peak[0] - base) / 2**20:.0f} MiB"


def test_every_stem_comes_from_one_decode_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = save_bundle(str(tmp_path / "bundle"), ("bass", "drums", "vocals"))
    song = tmp_path / "song.flac"
    x = noise(2.0, RATE, 2)
    put(str(song), x, RATE, "FLAC", "PCM_24")
    opened: list[str] = []
    real_open = track.open_audio

    def counting_open(url: str):
        opened.append(url)
        return real_open(url)

    monkeypatch.setattr(track, "open_audio", counting_open)
    job = SeparateConfig(
        model=bundle,
        audio=str(song),
        save=str(tmp_path / "out"),
        residual=True,
        wiener=1,
        subtype="FLOAT",
    ).validate()
    separate = TrackSeparator(
        Bundle.from_checkpoints(bundle, "cpu", wiener=job.wiener_filter), job, "k", "r"
    )
    result = separate(Source(str(song), "song"))
    assert result.status == "ok", result.error
    assert opened == [str(song)]  # decoded once for three targets and the residual
    stems = {name: audio.read(url)[0] for name, url in json.loads(result.outputs).items()}
    assert list(stems) == ["bass", "drums", "vocals", "residual"]
    # Every stem was written whole: with the residual (mixture minus the filtered targets) they
    # add up to the input.
    assert np.abs(sum(stems.values()) - audio.read(str(song))[0]).max() < 1e-4


# ------------------------------------------------------------------------------------------------
# Bad inputs fail as rows, before anything large is allocated (issue 16)


def _track_separator(tmp_path: Path, **options) -> TrackSeparator:
    job = SeparateConfig(
        model="unused", audio=str(tmp_path), save=str(tmp_path / "out"), **options
    ).validate()
    return TrackSeparator(Bundle([tiny_model().separator]), job, model_key="k", run_id="r")


def _cut(path: Path, data: np.ndarray, rate: int, fmt: str) -> None:
    """``data`` written to ``path``, then cut to half its bytes; the header is kept."""
    put(str(path), data, rate, fmt)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


@pytest.mark.parametrize(
    ("name", "rate", "fmt", "held"),
    [("cut.wav", RATE, "WAV", "1.499 s"), ("cut.mp3", 44100, "MP3", "")],
)
def test_a_truncated_file_fails_and_is_not_marked_done(
    tmp_path: Path, name: str, rate: int, fmt: str, held: str
) -> None:
    path = tmp_path / name
    _cut(path, noise(3, rate, 1), rate, fmt)
    result = _track_separator(tmp_path)(Source(str(path), "cut"))
    assert result.status == "failed"
    assert f"{path}: truncated: the header promises 3.000 s, the file holds {held}" in result.error
    assert len(result.error.splitlines()) == 1
    assert not (tmp_path / "out" / "cut" / "_done.json").exists()
    assert not (tmp_path / "out" / "cut" / "vocals.wav").exists()


def test_a_truncated_wav_still_gives_the_seconds_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    _cut(path, noise(3, RATE, 1), RATE, "WAV")
    result = _track_separator(tmp_path, duration=1.0)(Source(str(path), "cut"))
    assert result.status == "ok", result.error
    assert result.duration_s == 1.0


def test_an_odd_rate_fails_as_a_row_not_an_8_gb_kernel(tmp_path: Path) -> None:
    odd = tmp_path / "odd.wav"
    put(str(odd), noise(0.5, 44101, 1), 44101, "WAV")
    result = _track_separator(tmp_path)(Source(str(odd), "odd"))
    assert result.status == "failed"
    assert f"{odd}: cannot resample 44101 Hz to 16000 Hz" in result.error
    assert "standard rate" in result.error and len(result.error.splitlines()) == 1

    good = tmp_path / "good.wav"
    put(str(good), noise(0.5, RATE, 1), RATE, "WAV")
    result = _track_separator(tmp_path, sr=44101)(Source(str(good), "good"))
    assert result.status == "failed"
    assert f"{good}: cannot resample 16000 Hz to 44101 Hz" in result.error
    assert not (tmp_path / "out" / "good" / "_done.json").exists()
