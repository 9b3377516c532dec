"""Faults on a file's way in and out (issue 16): a read that stalls, ffmpeg's command line, a dead
worker's spools, a full disk. Each ends one file as a failed row with one clear line; the worker
goes on to the next file.

Stalls are real: a named pipe that nobody writes (or that stops being written mid-file) blocks a
reader exactly as a hung mount does.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_separate_job import noise, tiny_model

from auralflow_dist import ffmpeg, scratch, storage
from auralflow_dist.errors import AudioError
from auralflow_dist.models.separator import Bundle
from auralflow_dist.separate import SeparateConfig
from auralflow_dist.separate.sources import Source
from auralflow_dist.separate.track import TrackSeparator

RATE = 16000
STALL_S = 1.0  # short for the test; long enough for a loaded machine
needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="needs ffmpeg"
)


def _separator(tmp_path: Path, **options) -> TrackSeparator:
    job = SeparateConfig(
        model="unused",
        audio=str(tmp_path),
        save=str(tmp_path / "out"),
        read_timeout=STALL_S,
        **options,
    ).validate()
    return TrackSeparator(Bundle([tiny_model().separator]), job, model_key="k", run_id="r")


def _wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, noise(seconds, RATE, 1), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _assert_failed_cleanly(result, out: Path, name: str) -> None:
    """A failed row of one line; nothing marked done, no stem left behind."""
    assert result.status == "failed"
    assert len(result.error.splitlines()) == 1
    folder = out / name
    assert not folder.exists() or not any(folder.iterdir())  # neither _done.json nor a stem


def _unblock(fifo: Path) -> None:
    """Open and close the pipe's writing end: a reader blocked on it sees the end and returns."""
    with contextlib.suppress(OSError):  # ENXIO: no reader left to release
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def _good_file_still_separates(separate: TrackSeparator, tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    good.write_bytes(_wav(0.5))
    result = separate(Source(str(good), "good"))
    assert result.status == "ok", result.error


@pytest.mark.timeout(60)
def test_a_file_that_never_answers_fails_as_a_stall_and_the_next_file_goes_on(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "stuck.wav"
    os.mkfifo(fifo)  # opening it blocks until someone writes: a hung mount
    separate = _separator(tmp_path)
    try:
        start = time.monotonic()
        result = separate(Source(str(fifo), "stuck"))
        assert time.monotonic() - start < 10
    finally:
        _unblock(fifo)
    _assert_failed_cleanly(result, tmp_path / "out", "stuck")
    assert result.error == f"{fifo}: no data for {STALL_S:g} s (read stalled)"
    _good_file_still_separates(separate, tmp_path)


@pytest.mark.timeout(60)
def test_a_read_that_stalls_mid_file_fails_the_file_not_the_worker(tmp_path: Path) -> None:
    fifo = tmp_path / "slow.wav"
    os.mkfifo(fifo)
    data, release = _wav(10.0), threading.Event()

    def serve() -> None:
        # The header read takes what it wants and closes (the rest of the write fails) ...
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as f:
            f.write(data)
        # ... then the decode gets a second of audio, and nothing more until released.
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as f:
            f.write(data[: 44 + 2 * RATE])
            f.flush()
            release.wait(30)

    writer = threading.Thread(target=serve, daemon=True)
    writer.start()
    separate = _separator(tmp_path, block_seconds=0.25, batch_size=1)
    try:
        result = separate(Source(str(fifo), "slow"))
    finally:
        release.set()
        writer.join(10)
    _assert_failed_cleanly(result, tmp_path / "out", "slow")
    assert result.error == f"{fifo}: no data for {STALL_S:g} s (read stalled)"
    _good_file_still_separates(separate, tmp_path)


# ------------------------------------------------------------------------------------------------
# .stem.mp4 through ffmpeg


def _stem_mp4(path: Path, seconds: float = 2.0) -> list[np.ndarray]:
    """A 5-stream FLAC-in-MP4 file like MUSDB's; returns the streams ``(2, frames)``."""
    parts = [noise(seconds, RATE, 2, seed).T for seed in range(5)]
    inputs = []
    for i, part in enumerate(parts):
        sf.write(path.parent / f"{i}.wav", part.T, RATE, subtype="FLOAT")
        inputs += ["-i", str(path.parent / f"{i}.wav")]
    maps = [a for i in range(5) for a in ("-map", f"{i}:a")]
    subprocess.run(
        ["ffmpeg", "-v", "error", *inputs, *maps, "-c:a", "flac", "-strict", "-2", str(path)],
        check=True,
    )
    return parts


@needs_ffmpeg
@pytest.mark.timeout(60)
def test_ffprobe_on_a_file_that_never_answers_is_killed_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "stuck.stem.mp4"
    os.mkfifo(fifo)
    monkeypatch.setattr(ffmpeg, "TIMEOUT_S", STALL_S)
    spawned: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        spawned.append(real_popen(*args, **kwargs))
        return spawned[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    try:
        with pytest.raises(
            AudioError, match=rf"^{fifo}: ffprobe: no result in {STALL_S:g} s \(read stalled\)$"
        ):
            ffmpeg.info(str(fifo))
    finally:
        _unblock(fifo)
    assert [p.poll() for p in spawned] == [-9]  # killed, not left to hang


@needs_ffmpeg
def test_stem_mp4_on_s3_keeps_the_presigned_url_off_the_command_line(
    tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "X - Y.stem.mp4"
    parts = _stem_mp4(local)
    url = f"s3://{s3_bucket}/musdb/X - Y.stem.mp4"
    storage.write_bytes(url, local.read_bytes())
    argvs: list[list[str]] = []
    real_run = subprocess.run

    def run(argv, *args, **kwargs):
        argvs.append(list(argv))
        for listing in (a for a in argv if a.endswith(".ffconcat")):
            assert os.stat(listing).st_mode & 0o777 == 0o600  # the URL's file: this user's only
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)

    header = ffmpeg.info(url)
    assert (header.sample_rate, header.channels, header.streams) == (RATE, 2, 5)
    assert abs(header.frames - 2 * RATE) <= 1
    drums = ffmpeg.read(url, 1, 1000, 500, RATE, 2)
    np.testing.assert_allclose(drums, parts[1][:, 1000:1500], atol=1e-4)

    missing = f"s3://{s3_bucket}/musdb/missing.stem.mp4"
    with pytest.raises(AudioError, match=rf"^{missing}: ffprobe: \S") as caught:
        ffmpeg.info(missing)
    assert "Signature" not in str(caught.value) and "ffconcat" not in str(caught.value)

    assert len(argvs) == 4  # the probe, the read's seek plan and decode, the missing file
    key, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    for argv in argvs:
        line = " ".join(argv)
        for leak in ("X-Amz-", "Signature", "http://", s3_bucket, key, secret):
            assert leak not in line


# ------------------------------------------------------------------------------------------------
# Spools of a worker killed outright

_SPOOL_AND_WAIT = """
import os, sys, time, tempfile
import numpy as np
from auralflow_dist import scratch, storage
from auralflow_dist.separate import track
spool = track._Spool(os.path.join(tempfile.mkdtemp(dir=scratch.process_dir()), "target.f32"), 1)
spool.append(np.zeros((1, 16000), np.float32))
spool.file.flush()
writing = storage.atomic_write(os.path.join(sys.argv[1], "vocals.wav"))
partial = writing.__enter__()
partial.write(b"RIFF")
partial.flush()
print(os.path.dirname(spool.path), flush=True)
time.sleep(600)
"""


def test_a_killed_workers_spools_and_partial_stems_are_removed_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = tmp_path / "out" / "song"
    worker = subprocess.Popen(
        [sys.executable, "-c", _SPOOL_AND_WAIT, str(out)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        spooled = Path(worker.stdout.readline().strip())
        assert (spooled / "target.f32").stat().st_size == 4 * RATE
    finally:
        worker.kill()  # SIGKILL mid-spool: no finalizer runs
        worker.wait()
    assert spooled.exists()
    (dead_partial,) = out.glob(".vocals.wav.tmp-*")
    mine = Path(scratch.process_dir())
    (mine / "live.f32").touch()
    # A live pid, but started at another time: the folder of a dead process whose pid was reused.
    reused = Path(scratch.root(), f"{os.getpid()}-1")
    reused.mkdir()

    _separator(tmp_path)

    assert not spooled.parent.exists() and not reused.exists()
    assert (mine / "live.f32").exists()
    # The next write into the dead writer's folder clears its partial stem, not a live one's.
    with storage.atomic_write(str(out / "bass.wav")) as live, open(live.name, "rb"):
        storage.write_bytes(str(out / "drums.wav"), b"x")
        assert not dead_partial.exists() and Path(live.name).exists()


# ------------------------------------------------------------------------------------------------
# A full disk


@contextlib.contextmanager
def _small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``: a disk that really fills (needs root, as in CI's image)."""
    path.mkdir()
    mounted = os.geteuid() == 0 and (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("needs root and tmpfs mounts for a disk that fills")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("full", ["output", "spool"])
def test_a_full_disk_fails_the_file_with_one_line_and_leaves_no_partial_stem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture, full: str
) -> None:
    source = tmp_path / "song.wav"
    source.write_bytes(_wav(3.0))  # stems: 96 KB as PCM_16, 192 KB spooled as float32
    with _small_disk(tmp_path / "small", "64k") as small:
        out = small / "out" if full == "output" else tmp_path / "out"
        if full == "spool":
            monkeypatch.setattr(tempfile, "tempdir", str(small))
        job = SeparateConfig(model="unused", audio=str(source), save=str(out)).validate()
        separate = TrackSeparator(Bundle([tiny_model().separator]), job, model_key="k", run_id="r")
        result = separate(Source(str(source), "song"))

        _assert_failed_cleanly(result, out, "song")
        where = f"{out}/song/vocals.wav" if full == "output" else f"the temp spool {small}/"
        assert result.error.startswith(f"{source}: no space left on device writing {where}")
        assert "Traceback" not in capfd.readouterr().err  # nothing lost in a decoder callback
        assert not any(small.rglob("*.f32"))
