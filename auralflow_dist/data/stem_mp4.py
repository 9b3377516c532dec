"""MUSDB18's native ``<track>.stem.mp4`` files, decoded range by range with an ffmpeg subprocess.

libsndfile cannot read MP4/AAC, so these go through ffmpeg/ffprobe (Debian's ``ffmpeg`` package
ships both). A stem of such a file is addressed as ``<url>#<stream>``: audio streams 0..4 are
mixture, drums, bass, other, vocals. ffmpeg reads local paths itself and S3 objects through a
presigned HTTPS URL, so it fetches only the ranges it seeks to there too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from auralflow_dist import storage
from auralflow_dist.errors import AudioError

SUFFIX = ".stem.mp4"
STREAMS = ("mixture", "drums", "bass", "other", "vocals")
_SOURCE = re.compile(r"^(?P<url>.+\.stem\.mp4)#(?P<stream>\d+)$", re.IGNORECASE)
_PRESIGN_SECONDS = 6 * 3600


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


def _input(url: str) -> str:
    """What ffmpeg opens for ``url``: a local path, or a presigned URL on object stores."""
    fs, path = storage.filesystem(url)
    if isinstance(fs, LocalFileSystem):
        return path
    try:
        return fs.sign(path, expiration=_PRESIGN_SECONDS)
    except NotImplementedError:
        raise AudioError(f"{url}: .stem.mp4 is read only from local paths and s3:// URLs") from None


def _run(argv: list[str], url: str) -> bytes:
    done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["failed"]
        raise AudioError(storage.redact(f"{url}: {argv[0].rsplit('/', 1)[-1]}: {reason[0]}"))
    return done.stdout


def info(url: str) -> StemInfo:
    """Frames, rate and channels of the first audio stream and how many audio streams there are."""
    probe = _tool("ffprobe", url)
    out = _run(
        [
            probe,
            "-v",
            "error",
            "-select_streams",
            "a",
            "-of",
            "json",
            "-show_entries",
            "stream=sample_rate,channels,duration_ts,time_base",
            _input(url),
        ],
        url,
    )
    streams = json.loads(out).get("streams", [])
    if not streams:
        raise AudioError(f"{url}: no audio streams")
    first = streams[0]
    rate = int(first["sample_rate"])
    num, den = (int(v) for v in first["time_base"].split("/"))
    frames = int(first["duration_ts"]) * num * rate // den
    return StemInfo(frames, rate, int(first["channels"]), len(streams))


def read(
    url: str, stream: int, offset: int, frames: int, sample_rate: int, channels: int
) -> np.ndarray:
    """Frames ``[offset, offset + frames)`` of one stream as ``(channels, frames)``, zero-padded."""
    ffmpeg = _tool("ffmpeg", url)
    raw = _run(
        [
            ffmpeg,
            "-v",
            "error",
            "-nostdin",
            "-ss",
            f"{offset / sample_rate:.6f}",
            "-i",
            _input(url),
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
