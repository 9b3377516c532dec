"""MUSDB18's native ``<track>.stem.mp4`` files, decoded range by range with an ffmpeg subprocess.

libsndfile cannot read MP4/AAC, so these go through ffmpeg/ffprobe (Debian's ``ffmpeg`` package
ships both). A stem of such a file is addressed as ``<url>#<stream>``: audio streams 0..4 are
mixture, drums, bass, other, vocals. ffmpeg reads local paths itself and S3 objects through a
presigned HTTPS URL, so it fetches only the ranges it seeks to there too. The URL reaches ffmpeg
in a concat list, a temp file only this user can read: on the command line its signature (and
any session token) would show to every user of the node (``ps``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from auralflow_dist import storage
from auralflow_dist.errors import AudioError

SUFFIX = ".stem.mp4"
STREAMS = ("mixture", "drums", "bass", "other", "vocals")
_SOURCE = re.compile(r"^(?P<url>.+\.stem\.mp4)#(?P<stream>\d+)$", re.IGNORECASE)
_PRESIGN_SECONDS = 6 * 3600
_LISTING = re.compile(r"^\S+\.ffconcat: ")  # ffmpeg names the input (our temp list) in errors
# The concat demuxer passes seeks on only to a file of stated duration (else ``-ss`` decodes from
# the start): one longer than any recording.
_FOREVER_S = 10**9
# Seconds an ffmpeg/ffprobe run may take before it is killed: a hung mount or object store
# would block it forever. A whole track decodes in seconds.
TIMEOUT_S = 300.0


@dataclass(frozen=True)
class StemInfo:
    frames: int
    sample_rate: int
    channels: int
    streams: int


def is_stem_mp4(url: str) -> bool:
    return url.lower().endswith(SUFFIX)


def source(url: str, stream: int) -> str:
    """The address of audio stream ``stream`` of the file at ``url``."""
    return f"{url}#{stream}"


def parse_source(address: str) -> tuple[str, int] | None:
    """``(url, stream)`` for a stem address made by `source`, None for a plain audio file URL."""
    match = _SOURCE.match(address)
    return (match["url"], int(match["stream"])) if match else None


def _tool(name: str, url: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AudioError(f"{url}: .stem.mp4 needs ffmpeg: install it (apt-get install ffmpeg)")
    return path


def require_ffmpeg(url: str) -> None:
    """Fail once, naming ``url``, where ffmpeg or ffprobe is not on PATH."""
    _tool("ffmpeg", url)
    _tool("ffprobe", url)


def _quote(text: str) -> str:
    """``text`` as one token of a concat list (single quotes; a quote inside closes and reopens)."""
    return "'" + text.replace("'", "'\\''") + "'"


@contextlib.contextmanager
def _input(url: str) -> Iterator[list[str]]:
    """ffmpeg's input options for ``url``: a private concat list naming the local path or a
    presigned URL, removed after the run."""
    fs, path = storage.filesystem(url)
    if isinstance(fs, LocalFileSystem):
        target = os.path.abspath(path)  # the list's own folder would anchor a relative one
    else:
        try:
            target = fs.sign(path, expiration=_PRESIGN_SECONDS)
        except NotImplementedError:
            raise AudioError(
                f"{url}: .stem.mp4 is read only from local paths and s3:// URLs"
            ) from None
    # mkstemp: mode 0600.
    with tempfile.NamedTemporaryFile("w", prefix="auralflow-", suffix=".ffconcat") as listing:
        listing.write(f"ffconcat version 1.0\nfile {_quote(target)}\nduration {_FOREVER_S}\n")
        listing.flush()
        yield [
            *("-f", "concat", "-safe", "0"),
            *("-protocol_whitelist", "file,http,https,tcp,tls,crypto"),
            *("-i", listing.name),
        ]


def _run(argv: list[str], url: str) -> bytes:
    tool = os.path.basename(argv[0])
    try:
        done = subprocess.run(
            argv, capture_output=True, stdin=subprocess.DEVNULL, check=False, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:  # run() has killed it
        raise AudioError(f"{url}: {tool}: no result in {TIMEOUT_S:g} s (read stalled)") from None
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["failed"]
        raise AudioError(storage.redact(f"{url}: {tool}: {_LISTING.sub('', reason[0])}"))
    return done.stdout


def info(url: str) -> StemInfo:
    """Frames, rate and channels of the first audio stream and how many audio streams there are.

    Behind the concat demuxer streams have no duration: the end of the last packet, read after a
    seek to the end, gives it.
    """
    probe = _tool("ffprobe", url)
    with _input(url) as source:
        out = _run(
            [
                *(probe, "-v", "error", "-select_streams", "a", "-of", "json"),
                *("-read_intervals", f"{_FOREVER_S - 1}%"),
                *("-show_entries", "stream=index,sample_rate,channels,time_base:packet"),
                *source,
            ],
            url,
        )
    found = json.loads(out)
    streams = found.get("streams", [])
    if not streams:
        raise AudioError(f"{url}: no audio streams")
    first = streams[0]
    ends = [
        int(p["pts"]) + int(p.get("duration", 0))
        for p in found.get("packets", [])
        if p.get("stream_index") == first["index"] and "pts" in p
    ]
    rate = int(first["sample_rate"])
    num, den = (int(v) for v in first["time_base"].split("/"))
    frames = max(ends, default=0) * num * rate // den
    return StemInfo(frames, rate, int(first["channels"]), len(streams))


def read(
    url: str, stream: int, offset: int, frames: int, sample_rate: int, channels: int
) -> np.ndarray:
    """Frames ``[offset, offset + frames)`` of one stream as ``(channels, frames)``, zero-padded."""
    ffmpeg = _tool("ffmpeg", url)
    with _input(url) as source:
        raw = _run(
            [
                *(ffmpeg, "-v", "error", "-nostdin", "-ss", f"{offset / sample_rate:.6f}"),
                *source,
                "-map",
                f"0:a:{stream}",
                "-t",
                f"{frames / sample_rate:.6f}",
                "-ac",
                str(channels),
                "-ar",
                str(sample_rate),
                "-f",
                "f32le",
                "-acodec",
                "pcm_f32le",
                "pipe:1",
            ],
            url,
        )
    audio = np.frombuffer(raw, dtype="<f4").reshape(-1, channels).T[:, :frames]
    out = np.zeros((channels, frames), dtype=np.float32)
    out[:, : audio.shape[1]] = audio
    return out
