"""ffmpeg and ffprobe as subprocesses, for audio libsndfile cannot read (AAC/ALAC in MP4, WMA,
WebM, Matroska, AC-3).

Debian's ``ffmpeg`` package ships ffmpeg and ffprobe. A local file is read by path; an S3
object through a presigned HTTPS URL, so ffmpeg fetches only the ranges it seeks to. The URL
reaches ffmpeg in a concat list, a temp file only this user can read: on the command line its
signature (and any session token) would show to every user of the node (``ps``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from auralflow_dist import storage
from auralflow_dist.errors import AudioError

# Extensions decoded here, never by libsndfile (``mp4`` includes MUSDB18's ``.stem.mp4``).
EXTENSIONS = ("m4a", "mp4", "aac", "alac", "wma", "webm", "mka", "ac3")
_PRESIGN_SECONDS = 6 * 3600
_LISTING = re.compile(r"^\S+\.ffconcat: ")  # ffmpeg names the input (our temp list) in errors
# The concat demuxer passes seeks on only to a file of stated duration (else ``-ss`` decodes from
# the start): one longer than any recording.
_FOREVER_S = 10**9
# Seconds an ffprobe run or ranged read may take before it is killed: a hung mount or object
# store would block it forever. A whole track decodes in seconds.
TIMEOUT_S = 300.0


@dataclass(frozen=True)
class StreamInfo:
    """The first audio stream's length, rate and channels, and how many audio streams there are."""

    frames: int
    sample_rate: int
    channels: int
    streams: int


def decodes(url: str) -> bool:
    """Whether ``url`` is read through ffmpeg rather than libsndfile (by its extension)."""
    return url.lower().rsplit(".", 1)[-1] in EXTENSIONS


def _suffix(url: str) -> str:
    name = url.lower().rsplit("/", 1)[-1]
    return ".stem.mp4" if name.endswith(".stem.mp4") else "." + name.rsplit(".", 1)[-1]


def available() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def _tool(name: str, url: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AudioError(
            f"{storage.mask_url(url)}: {_suffix(url)} needs ffmpeg: install it "
            "(apt-get install ffmpeg)"
        )
    return path


def require(url: str) -> None:
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
                f"{storage.mask_url(url)}: ffmpeg reads only local paths and s3:// URLs"
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


def _failure(url: str, tool: str, stderr: bytes) -> AudioError:
    reason = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["failed"]
    return AudioError(storage.redact(f"{url}: {tool}: {_LISTING.sub('', reason[0])}"))


def _run(argv: list[str], url: str) -> bytes:
    tool = os.path.basename(argv[0])
    try:
        done = subprocess.run(
            argv, capture_output=True, stdin=subprocess.DEVNULL, check=False, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:  # run() has killed it
        raise AudioError(f"{url}: {tool}: no result in {TIMEOUT_S:g} s (read stalled)") from None
    if done.returncode != 0:
        raise _failure(url, tool, done.stderr)
    return done.stdout


def info(url: str) -> StreamInfo:
    """What `StreamInfo` holds, from the container (no audio is decoded).

    Behind the concat demuxer streams have no duration: the end of the last packet gives it,
    read after a seek to the end, or, in a file that cannot seek there (a WebM without cues),
    by listing every packet.
    """
    try:
        found = _probe(url, ("-read_intervals", f"{_FOREVER_S - 1}%"))
    except AudioError as err:
        if "Could not read packets in interval" not in str(err):
            raise
        found = _probe(url, ())
    streams = found.get("streams", [])
    if not streams:
        raise AudioError(f"{storage.mask_url(url)}: no audio streams")
    first = streams[0]
    ends = [
        int(p["pts"]) + int(p.get("duration", 0))
        for p in found.get("packets", [])
        if p.get("stream_index") == first["index"] and "pts" in p
    ]
    rate = int(first["sample_rate"])
    num, den = (int(v) for v in first["time_base"].split("/"))
    frames = max(ends, default=0) * num * rate // den
    return StreamInfo(frames, rate, int(first["channels"]), len(streams))


def _probe(url: str, interval: tuple[str, ...]) -> dict:
    probe = _tool("ffprobe", url)
    with _input(url) as source:
        out = _run(
            [
                *(probe, "-v", "error", "-select_streams", "a", "-of", "json", *interval),
                *(
                    "-show_entries",
                    "stream=index,sample_rate,channels,time_base:packet=pts,duration,stream_index",
                ),
                *source,
            ],
            url,
        )
    return json.loads(out)


def _decode_args(stream: int, sample_rate: int, channels: int) -> list[str]:
    """Output options: audio stream ``stream`` as interleaved float32 at the given layout."""
    return [
        *("-map", f"0:a:{stream}", "-ac", str(channels), "-ar", str(sample_rate)),
        *("-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"),
    ]


# Codecs whose frames decode on their own, so a seek in the input lands exactly; the others
# (AAC, MP3, Vorbis, Opus, WMA, AC-3) overlap each frame with the one before it.
_EXACT_SEEK = re.compile(r"^(flac|alac|pcm_\w+|wavpack|tta|mlp|truehd)$")


@functools.lru_cache(maxsize=256)
def _seek_plan(url: str, stream: int, sample_rate: int) -> tuple[bool, int]:
    """Whether stream ``stream`` of ``url`` seeks exactly in the input, and the frames of codec
    priming before its first sample on the concat demuxer's timeline (AAC: 1024), which that
    demuxer does not take off as the file's edit list does."""
    probe = _tool("ffprobe", url)
    with _input(url) as source:
        out = _run(
            [
                *(probe, "-v", "error", "-select_streams", f"a:{stream}", "-of", "json"),
                *(
                    "-read_intervals",
                    "%+#1",
                    "-show_entries",
                    "stream=codec_name,time_base:packet=pts",
                ),
                *source,
            ],
            url,
        )
    found = json.loads(out)
    streams, packets = found.get("streams") or [{}], found.get("packets") or [{}]
    num, den = (int(v) for v in streams[0].get("time_base", "1/1").split("/"))
    first = int(packets[0].get("pts", 0))
    delay = max(-first, 0) * num * sample_rate // den
    return bool(_EXACT_SEEK.match(streams[0].get("codec_name", ""))), delay


def read(
    url: str, stream: int, offset: int, frames: int, sample_rate: int, channels: int
) -> np.ndarray:
    """Frames ``[offset, offset + frames)`` of one stream as ``(channels, frames)``, zero-padded.

    A lossy stream is decoded from its start and the frames before ``offset`` dropped: after a
    seek in the input, ffmpeg's AAC decoder gives samples up to 0.7 off for the first frames
    (measured). That costs a decode of everything before ``offset``: 0.2 s at 230 s into an AAC file
    (one core of this project's 2-core test VM).
    """
    ffmpeg = _tool("ffmpeg", url)
    exact, delay = _seek_plan(url, stream, sample_rate)
    at = f"{(offset + (0 if exact else delay)) / sample_rate:.6f}"
    with _input(url) as source:
        raw = _run(
            [
                *(ffmpeg, "-v", "error", "-nostdin", *(("-ss", at) if exact else ())),
                *source,
                *(() if exact else ("-ss", at)),
                *("-t", f"{frames / sample_rate:.6f}"),
                *_decode_args(stream, sample_rate, channels),
            ],
            url,
        )
    audio = np.frombuffer(raw, dtype="<f4").reshape(-1, channels).T[:, :frames]
    out = np.zeros((channels, frames), dtype=np.float32)
    out[:, : audio.shape[1]] = audio
    return out


def blocks(
    url: str, header: StreamInfo, block_frames: int, limit: int | None, stall_s: float
) -> Iterator[np.ndarray]:
    """The first audio stream decoded in order by one ffmpeg process, as ``(channels, n)``
    float32 blocks, up to ``limit`` frames and no further than the container's length (an AAC
    decoder's last frame runs past the end of the recording).

    ffmpeg is killed when no block has come for ``stall_s`` seconds (a read that hangs would
    otherwise keep it, and the thread reading its pipe, forever) and when the caller stops early.
    A decoder error is an AudioError with ffmpeg's last line, not a short file marked done.
    """
    ffmpeg = _tool("ffmpeg", url)
    frame_bytes = 4 * header.channels
    wanted = header.frames if limit is None else min(limit, header.frames)
    with _input(url) as source, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [
                *(ffmpeg, "-v", "error", "-nostdin", "-xerror", *source),
                *_decode_args(0, header.sample_rate, header.channels),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        assert process.stdout is not None
        stalled = threading.Event()

        def kill() -> None:
            stalled.set()
            process.kill()

        try:
            decoded = 0
            while decoded < wanted:
                size = min(block_frames, wanted - decoded) * frame_bytes
                watchdog = threading.Timer(stall_s, kill)
                watchdog.daemon = True
                watchdog.start()
                try:
                    raw = process.stdout.read(size)  # buffered: all of it, or up to the end
                finally:
                    watchdog.cancel()
                if stalled.is_set():
                    raise AudioError(
                        f"{storage.mask_url(url)}: ffmpeg: no data for {stall_s:g} s (read stalled)"
                    )
                usable = len(raw) - len(raw) % frame_bytes
                if usable:
                    block = np.frombuffer(raw[:usable], dtype="<f4").reshape(-1, header.channels)
                    decoded += len(block)
                    yield np.ascontiguousarray(block.T)
                if len(raw) < size:  # the end of the stream
                    if process.wait() != 0:
                        stderr.seek(0)
                        raise _failure(storage.mask_url(url), "ffmpeg", stderr.read())
                    # Container lengths can count codec padding: a cut is more than that.
                    if wanted - decoded > max(header.sample_rate, header.frames // 100):
                        raise AudioError(
                            f"{storage.mask_url(url)}: truncated: the container promises "
                            f"{wanted / header.sample_rate:.3f} s, ffmpeg decoded "
                            f"{decoded / header.sample_rate:.3f} s"
                        )
                    break
        finally:
            if process.poll() is None:  # stopped early, or at the length wanted
                process.kill()
            process.stdout.close()
            process.wait()
