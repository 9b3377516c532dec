"""Audio files in and out through soundfile over fsspec, so S3 reads fetch only the frames asked for.

Waveforms are ``(channels, frames)``; integer PCM is decoded by soundfile to float in [-1, 1].
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

import numpy as np
import soundfile as sf
import torch

from auralflow_dist import storage
from auralflow_dist.errors import AudioError, ConfigError, StorageError

# Extensions users have; everything else must name its format explicitly.
_FORMAT_BY_EXTENSION = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}
_FLOAT_SUBTYPES = {"FLOAT", "DOUBLE"}
_PCM16_SUBTYPES = {"PCM_16", "PCM_S8", "PCM_U8"}

Array = np.ndarray | torch.Tensor

# A read allocates its whole output, by the header's frame count, before decoding a sample, so a
# corrupt or forged header (FLAC counts frames in 36 bits) could make it ask for terabytes. Reads
# of more samples than this (64 MB of float32) first check the claim against the file's size.
_CHECKED_READ_SAMPLES = 1 << 24
# Bytes per sample where every sample is stored at a fixed width (not in FLAC, which names its
# sample formats the same way): the data cannot be smaller than frames * channels * this.
_BYTES_PER_SAMPLE = {
    "PCM_S8": 1, "PCM_U8": 1, "ULAW": 1, "ALAW": 1,
    "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8,
}  # fmt: skip
# The densest any codec gets: a FLAC frame of 65535 frames of one constant value still takes a
# few bytes per channel (libsndfile's FLAC of digital silence: about 550 samples per byte). So
# not "8 samples a byte", which a silent stem would fail.
_MAX_SAMPLES_PER_BYTE = 1 << 15
# libsndfile counts only the frames a WAV/AIFF file holds, and logs a data chunk that says it
# holds more: "data : 96000 (should be 47978)" (bytes).
_SHORT_DATA_CHUNK = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
# Data sizes writers put in the header of a stream whose length they do not know yet (0xFFFFFFFF,
# or just under 2**31): not a promise, so such a file is not truncated.
_UNKNOWN_DATA_SIZE = 0x7FFF0000


@dataclass(frozen=True)
class AudioInfo:
    frames: int
    sample_rate: int
    channels: int
    format: str
    subtype: str | None

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.frames / self.sample_rate

    @property
    def pcm16(self) -> bool:
        """Whether 16-bit integer samples hold every sample exactly (PCM of 16 bits or fewer)."""
        return self.subtype in _PCM16_SUBTYPES


@contextlib.contextmanager
def _source(url: str) -> Iterator[str | IO[bytes]]:
    """What soundfile opens: the OS path of a local file, else a file object with ranged reads."""
    local = storage.local_path(url)
    if local is not None:
        # A named pipe or device has no size; libsndfile reads it as a stream.
        if storage.size(url) == 0 and os.path.isfile(local):
            raise AudioError(f"{url}: is empty (0 bytes)")
        yield local
        return
    with storage.open_file(url, "rb") as f:
        # Seeking to the end costs no read, and names the problem better than libsndfile.
        if f.seek(0, os.SEEK_END) == 0:
            raise AudioError(f"{url}: is empty (0 bytes)")
        f.seek(0)
        yield f


class GuardedFile:
    """A file for libsndfile's callbacks, which lose an exception raised in them (cffi prints
    it and goes on, and libsndfile reads a failed read as the end of the file or a bad format):
    the first error is kept for `check`, and every later call is a no-op."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file: IO[bytes] = file
        self.error: Exception | None = None

    def _call(self, name: str, *args: object, failed: object) -> Any:
        if self.error is None:
            try:
                return getattr(self.file, name)(*args)
            except Exception as err:  # an S3 connection dropped, a full disk, ...
                self.error = err
        return failed

    def write(self, data: bytes) -> int:
        return self._call("write", data, failed=len(data))

    def read(self, size: int = -1) -> bytes:
        return self._call("read", size, failed=b"")

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._call("seek", offset, whence, failed=0)

    def tell(self) -> int:
        return self._call("tell", failed=0)

    def check(self) -> None:
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def open_audio(url: str) -> Iterator[sf.SoundFile]:
    """A SoundFile on ``url``; every failure becomes one AudioError naming the URL.

    A remote read that fails (the connection dropped) is reported as itself, not as what
    libsndfile made of the missing bytes ("Format not recognised", a short file).
    """
    guard: GuardedFile | None = None
    try:
        with _source(url) as source:
            guard = None if isinstance(source, str) else GuardedFile(source)
            with sf.SoundFile(guard or source) as snd:
                yield snd
    except Exception as err:
        if guard is not None and guard.error is not None:
            raise _read_failed(url, guard.error) from guard.error
        if isinstance(err, StorageError):
            raise AudioError(str(err)) from err
        if isinstance(err, sf.LibsndfileError):
            # str(err) names the file object, not the URL; the libsndfile reason is what helps.
            raise AudioError(f"{url}: not readable as audio ({err.error_string})") from err
        if isinstance(err, (sf.SoundFileError, OSError)):
            raise AudioError(f"{url}: {err}") from err
        raise
    if guard is not None and guard.error is not None:  # a failed read looked like the end
        raise _read_failed(url, guard.error) from guard.error


def _read_failed(url: str, err: Exception) -> AudioError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return AudioError(f"{url}: read failed ({type(err).__name__}{': ' + reason if reason else ''})")


def promised_frames(snd: sf.SoundFile) -> int:
    """Frames the header of ``snd`` promises: more than ``snd.frames`` when the file was cut short.

    libsndfile reports the frames a cut WAV or AIFF file still holds as its length; only its log
    shows the header's promise. Elsewhere (FLAC) ``snd.frames`` is the promise itself, and reading
    stops or fails before it.
    """
    match = _SHORT_DATA_CHUNK.search(snd.extra_info)
    if match is None:
        return snd.frames
    promised, held = int(match[1]), int(match[2])
    if promised >= _UNKNOWN_DATA_SIZE or held <= 0:
        return snd.frames
    return max(snd.frames, snd.frames * promised // held)


def _check_claim(url: str, snd: sf.SoundFile, frames: int) -> None:
    """Refuse to decode ``frames`` frames the file's size could not hold (a corrupt header)."""
    samples = frames * snd.channels
    if samples <= _CHECKED_READ_SAMPLES:
        return
    try:
        size = storage.size(url)
    except StorageError as err:
        raise AudioError(str(err)) from err
    width = _BYTES_PER_SAMPLE.get(snd.subtype) if snd.format != "FLAC" else None
    if samples > (size // width if width else size * _MAX_SAMPLES_PER_BYTE):
        raise AudioError(
            f"{url}: the header claims {snd.frames} frames ({snd.frames / snd.samplerate:.1f} s) "
            f"of {snd.channels} channels, more than the file's {size} bytes can hold "
            "(a corrupt header, or a truncated file)"
        )


def info(url: str) -> AudioInfo:
    """Length, rate and format from the header alone (no samples are decoded)."""
    with open_audio(url) as snd:
        return AudioInfo(snd.frames, snd.samplerate, snd.channels, snd.format, snd.subtype)


def read(
    url: str,
    offset: int = 0,
    frames: int = -1,
    dtype: str = "float32",
    always_2d: bool = True,
    fill_value: float | None = None,
    contiguous: bool = True,
) -> tuple[np.ndarray, int]:
    """Frames ``[offset, offset + frames)`` of ``url`` as ``((channels, frames), sample_rate)``.

    Only that range is decoded (and on object stores, only its bytes fetched). ``frames=-1`` reads to
    the end; a range past the end is cut short unless ``fill_value`` pads it to ``frames``. Mono comes
    back as ``(frames,)`` when ``always_2d`` is False. Non-finite samples are returned as they are.
    ``contiguous=False`` returns a transposed view of the decoder's interleaved buffer, saving a
    copy for callers that copy the samples anyway.
    """
    with open_audio(url) as snd:
        if snd.frames == 0:
            raise AudioError(f"{url}: contains no audio frames")
        if not 0 <= offset < snd.frames:
            raise AudioError(f"{url}: offset {offset} is outside the file ({snd.frames} frames)")
        # What soundfile allocates and decodes before any padding: the header's frames from offset.
        claimed = snd.frames - offset
        _check_claim(url, snd, claimed if frames < 0 else min(frames, claimed))
        snd.seek(offset)
        data = snd.read(frames, dtype=dtype, always_2d=always_2d, fill_value=fill_value).T
        return (np.ascontiguousarray(data) if contiguous else data), snd.samplerate


def _format_for(url: str, format: str | None) -> str:
    if format is not None:
        return format.upper()
    ext = os.path.splitext(url.rstrip("/"))[1].lower()
    if ext not in _FORMAT_BY_EXTENSION:
        raise AudioError(
            f"{url}: cannot infer the audio format from the extension "
            f"(use one of {', '.join(_FORMAT_BY_EXTENSION)} or pass format=)"
        )
    return _FORMAT_BY_EXTENSION[ext]


def write(
    url: str,
    audio: Array,
    sample_rate: int,
    format: str | None = None,
    subtype: str | None = None,
    clip: Literal["error", "limit", "clip"] = "limit",
) -> float:
    """Encode ``audio`` ``(channels, frames)`` (or ``(frames,)``) and write it to ``url`` atomically.

    ``format`` defaults to the one named by the extension, ``subtype`` to the format's default
    (WAV/FLAC: PCM_16, OGG: VORBIS, MP3: MPEG_LAYER_III). Separated stems can peak slightly above
    1.0, which a non-float subtype cannot hold; ``clip`` decides: ``"limit"`` scales the whole
    signal so its peak is 1.0, ``"clip"`` clips the overshooting samples, ``"error"`` raises.
    Float subtypes store any value. Returns the gain applied (1.0 when the samples are untouched).
    """
    if clip not in ("error", "limit", "clip"):
        raise ConfigError("clip", f"must be 'error', 'limit' or 'clip', not {clip!r}")
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().to("cpu", torch.float32).numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise AudioError(f"{url}: expected (channels, frames) audio, got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise AudioError(f"{url}: cannot write NaN or infinite samples")
    fmt = _format_for(url, format)
    if fmt not in sf.available_formats():
        raise AudioError(f"{url}: unknown audio format {fmt}")
    subtype = (subtype or sf.default_subtype(fmt) or "").upper()
    if not sf.check_format(fmt, subtype):
        raise AudioError(f"{url}: format {fmt} with subtype {subtype or None} is not supported")

    gain = 1.0
    peak = float(np.abs(audio).max())
    if peak > 1.0 and subtype not in _FLOAT_SUBTYPES:
        if clip == "error":
            raise AudioError(f"{url}: peak {peak:.4f} exceeds 1.0 and {subtype} cannot store it")
        if clip == "limit":
            gain = 1.0 / peak
            audio = audio * np.float32(gain)
        else:
            audio = np.clip(audio, -1.0, 1.0)

    buf = io.BytesIO()
    try:
        sf.write(buf, audio.T, sample_rate, format=fmt, subtype=subtype)
    except (sf.SoundFileError, ValueError) as err:
        raise AudioError(f"{url}: cannot encode as {fmt}/{subtype} ({err})") from err
    storage.write_bytes(url, buf.getvalue())
    return gain
