"""Separate one file, in bounded memory, into ``<save>/<track>/<target>.<ext>`` for every target
of the bundle (+ residual), decoding it once.

Decoding, separation and writing overlap: a reader thread decodes the next block while the
model separates the current one, and a writer thread spools finished samples to local disk.
Outputs are spooled as float32 first because limiting (scaling by 1 / peak when a PCM file
cannot hold the peak, as `audio.write` does) needs the whole file's peak; the spool is then
encoded and moved into place atomically, so a reader never sees a partial stem. ``_done.json``
is written last: it is what a re-run checks to skip a finished track.

Spools (full-length float32 stems) live in the process's `scratch` folder: a worker killed
outright (SIGKILL, OOM) cannot remove its own, so each new `TrackSeparator` sweeps those of
processes no longer running, and a track's folder is cleared of a dead writer's partial stems
before it is written again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import posixpath
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
import torch

from auralflow_dist import audio, ffmpeg, scratch, storage
from auralflow_dist.audio.engine import SeparationEngine
from auralflow_dist.audio.io import GuardedFile, open_audio, promised_frames
from auralflow_dist.errors import AudioError, AuralflowError, ConfigError, StorageError
from auralflow_dist.models.separator import Bundle
from auralflow_dist.separate.config import SeparateConfig
from auralflow_dist.separate.results import FAILED, OK, SKIPPED, FileResult
from auralflow_dist.separate.shared_batches import SharedBatches
from auralflow_dist.separate.sources import JOB_FILES, Source

DONE_NAME = "_done.json"
# Settings added to the marker after it was first written, with the value every earlier run
# had: an earlier run's marker without them still counts (its outputs are what these give).
_LATER_SETTINGS = {"filename": "{track}/{stem}.{ext}", "bitrate": None, "quality": None,
                   "clip_mode": "rescale"}  # fmt: skip
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
_ENCODE_FRAMES = 1 << 18
_PREFETCH = 2  # blocks decoded ahead of the model
_END = object()
T = TypeVar("T")


def fingerprint(url: str) -> str:
    """A token that changes when the file at ``url`` changes (S3 ETag; local size and mtime)."""
    fs, path = storage.filesystem(url)
    try:
        return str(fs.ukey(path))
    except Exception as err:
        raise StorageError(
            f"{storage.mask_url(url)}: cannot stat ({type(err).__name__}: {err})"
        ) from err


def _sndfile_blocks(url: str, block_frames: int, limit: int | None) -> Iterator[np.ndarray]:
    """Decoded blocks ``(channels, n)`` read in order by libsndfile, up to ``limit`` frames.

    A file that holds fewer frames than its header promises is an AudioError: separated, its
    stems would be silently short, and marked done, never retried.
    """

    def truncated(promised: int, held: int) -> AudioError:
        return AudioError(
            f"{storage.mask_url(url)}: truncated: the header promises "
            f"{promised / snd.samplerate:.3f} s, the file holds {held / snd.samplerate:.3f} s"
        )

    with open_audio(url) as snd:
        promised = promised_frames(snd)  # WAV/AIFF: snd.frames counts only the frames held
        if promised > snd.frames and (limit is None or limit > snd.frames):
            raise truncated(promised, snd.frames)
        left = snd.frames if limit is None else min(limit, snd.frames)
        start = 0
        while left > 0:
            try:
                block = snd.read(min(block_frames, left), dtype="float32", always_2d=True)
            except sf.LibsndfileError as err:
                reason = f": {err.error_string}" if err.error_string else ""
                raise AudioError(
                    f"{storage.mask_url(url)}: cannot decode past "
                    f"{start / snd.samplerate:.3f} s (corrupt or truncated"
                    f"{reason})"
                ) from err
            if len(block) == 0:  # the decoder ran out before the header's count (FLAC, MP3)
                # A VBR MP3 without a Xing header only estimates its length: a shortfall of up
                # to a second (or 1%) is that estimate, not a cut.
                if left > max(snd.samplerate, snd.frames // 100):
                    raise truncated(snd.frames, start)
                break
            left -= len(block)
            start += len(block)
            yield np.ascontiguousarray(block.T)


def _blocks(
    url: str,
    header: audio.AudioInfo | ffmpeg.StreamInfo,
    block_frames: int,
    limit: int | None,
    stall_s: float,
) -> Iterator[np.ndarray]:
    """The input's blocks from libsndfile or ffmpeg (by extension); NaN/inf is an AudioError."""
    if ffmpeg.decodes(url):
        decoded = ffmpeg.blocks(url, header, block_frames, limit, stall_s)
    else:
        decoded = _sndfile_blocks(url, block_frames, limit)
    start = 0
    with contextlib.closing(decoded):
        for block in decoded:
            finite = np.isfinite(block)
            if not finite.all():
                first = start + int(np.argmin(finite.all(axis=0)))
                raise AudioError(
                    f"{storage.mask_url(url)}: contains NaN/inf samples "
                    f"(first at {first / header.sample_rate:.3f} s)"
                )
            start += block.shape[-1]
            yield block


class _Prefetch:
    """Runs an iterator in a thread, ``depth`` items ahead; errors surface in the consumer.

    A read that hangs (a stuck mount, an object store that stops answering) would hang the
    consumer and, joined, the worker: the consumer waits ``timeout`` seconds for an item, then
    fails this file, and leaves the (daemon) thread to its read.
    """

    def __init__(self, items: Iterator[Any], depth: int, timeout: float, url: str) -> None:
        self.items, self.timeout, self.url = items, timeout, url
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.stalled = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self.items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:
            self._put(err)
        finally:
            close = getattr(self.items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                item = self.queue.get(timeout=self.timeout)
            except queue.Empty:
                self.stalled = True
                raise StorageError(
                    f"{storage.mask_url(self.url)}: no data for {self.timeout:g} s (read stalled)"
                ) from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stopped.set()
        if not self.stalled:  # a stalled thread may never return
            self.thread.join(self.timeout)


def _bounded(call: Callable[[], T], timeout: float, url: str) -> T:
    """``call()``, run as a `_Prefetch` of one item so that a hung read fails after ``timeout``."""
    reader = _Prefetch((call() for _ in range(1)), 1, timeout, url)
    try:
        return next(iter(reader))
    finally:
        reader.close()


@contextlib.contextmanager
def _writing(where: str) -> Iterator[None]:
    """A full disk as one line naming where the bytes were going."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StorageError(f"no space left on device writing {where}") from err


class _Spool:
    """Float32 frames on local disk, and their peak, until the stem is encoded."""

    def __init__(self, path: str, channels: int) -> None:
        self.path, self.channels = path, channels
        self.file = open(path, "wb")  # noqa: SIM115 - closed by `close` before `encode`
        self.peak = 0.0
        self.frames = 0
        self.where = f"the temp spool {path} (TMPDIR can name a larger disk)"

    def append(self, block: np.ndarray) -> None:
        if block.shape[-1] == 0:
            return
        if not np.isfinite(block).all():
            raise AudioError("the model produced NaN/inf samples")
        self.peak = max(self.peak, float(np.abs(block).max()))
        with _writing(self.where):
            self.file.write(np.ascontiguousarray(block.T, dtype=np.float32).tobytes())
        self.frames += block.shape[-1]

    def close(self) -> None:
        with _writing(self.where):  # the last bytes buffered
            self.file.close()

    def encode(self, url: str, sample_rate: int, job: SeparateConfig) -> float:
        """Write the spooled audio to ``url`` as ``job`` says; returns the gain applied (1.0:
        untouched). Peaks beyond +-1 are rescaled, clamped or kept (``--clip-mode``)."""
        gain, clamp = 1.0, False
        if self.peak > 1.0 and job.file_subtype not in _FLOAT_SUBTYPES:
            gain = 1.0 / self.peak if job.clip_mode == "rescale" else 1.0
            clamp = job.clip_mode == "clamp"
        frame_bytes = 4 * self.channels
        with (
            _writing(storage.mask_url(url)),
            open(self.path, "rb") as spool,
            storage.atomic_write(url) as out,
        ):
            guarded = GuardedFile(out)
            with sf.SoundFile(
                guarded,
                "w",
                samplerate=sample_rate,
                channels=self.channels,
                format=job.file_format,
                subtype=job.file_subtype,
                **job.encoder_options(self.channels, sample_rate)[0],
            ) as snd:
                while chunk := spool.read(_ENCODE_FRAMES * frame_bytes):
                    frames = np.frombuffer(chunk, dtype=np.float32).reshape(-1, self.channels)
                    if gain != 1.0:
                        frames = frames * np.float32(gain)
                    if clamp:
                        frames = np.clip(frames, -1.0, 1.0)
                    snd.write(frames)
                    guarded.check()
            guarded.check()
        return gain


def output_paths(job: SeparateConfig, source: Source, stems: list[str]) -> list[str]:
    """Each stem's path under --save for ``source``."""
    name = posixpath.splitext(posixpath.basename(source.url.rstrip("/")))[0]
    return [job.output_path(source.track, name, stem) for stem in stems]


def check_output_paths(job: SeparateConfig, sources: list[Source], stems: list[str]) -> None:
    """Refuse a --filename under which two outputs, or an output and a job file, would share a
    path: checked for every input before any is separated."""
    seen: dict[str, str] = {}
    reserved = {f.casefold() for f in JOB_FILES}
    for source in sources:
        for path in output_paths(job, source, stems):
            key = path.casefold()
            if key in reserved or posixpath.basename(key) == DONE_NAME:
                raise ConfigError("filename", f"{job.filename!r} names a job file: {path}")
            if key in seen:
                raise ConfigError(
                    "filename",
                    f"{job.filename!r} gives {path} to both {storage.mask_url(seen[key])} and "
                    f"{storage.mask_url(source.url)} (add {{track}})",
                )
            seen[key] = source.url


class TrackSeparator:
    """Separates files with one loaded bundle, on any number of threads at once: skip, stream,
    encode, mark done."""

    def __init__(
        self,
        bundle: Bundle,
        job: SeparateConfig,
        model_key: str,
        run_id: str,
        shared: SharedBatches | None = None,
    ) -> None:
        """``shared``: forward passes shared with the files separated side by side."""
        self.bundle, self.job, self.run_id, self.shared = bundle, job, run_id, shared
        scratch.sweep()  # this may be a restarted worker: its predecessor's spools are litter
        self.stems = [*bundle.targets, "residual"] if job.residual else list(bundle.targets)
        # What the outputs depend on: a marker written under other settings does not count.
        self.settings = {
            "model": model_key,
            "targets": bundle.targets,
            "residual": job.residual,
            "wiener": dataclasses.asdict(bundle.wiener),
            "duration": job.duration,
            "sr": job.sr,
            "padding": job.padding,
            "format": job.format,
            "filename": job.filename,
            "subtype": job.file_subtype,
            "bitrate": job.bitrate,
            "quality": job.quality,
            "clip_mode": job.clip_mode,
        }

    def __call__(self, source: Source) -> FileResult:
        start = time.monotonic()
        outputs = [
            storage.join(self.job.save, p) for p in output_paths(self.job, source, self.stems)
        ]
        marker = storage.join(self.job.save, source.track, DONE_NAME)
        result = FileResult(input_url=source.url, track=source.track)
        try:
            key = _bounded(lambda: fingerprint(source.url), self.job.read_timeout, source.url)
            record = self._record(marker)
            if record is not None:
                if not self.job.overwrite and self._complete(record, key, outputs):
                    done = FileResult(**record["result"])
                    # Done earlier in this very run (a batch retried after its worker died).
                    done.status = OK if record.get("run_id") == self.run_id else SKIPPED
                    return done
                # Outputs are about to change: until the new marker, the track is not done.
                storage.remove(marker, missing_ok=True)
            self._separate(source.url, result, outputs)
            result.status = OK
            result.outputs = json.dumps(dict(zip(self.stems, outputs, strict=True)))
            result.seconds = time.monotonic() - start
            result.realtime_factor = result.duration_s / max(result.seconds, 1e-9)
            record = {
                "run_id": self.run_id,
                "input_url": source.url,
                "fingerprint": key,
                "settings": self.settings,
                "result": dataclasses.asdict(result),
            }
            with _writing(storage.mask_url(marker)):
                storage.write_bytes(marker, json.dumps(record, indent=2).encode())
            return result
        except AuralflowError as err:
            result.error = storage.redact(str(err))
        except Exception as err:  # a file must never stop the job: report it, go on
            result.error = storage.redact(f"{type(err).__name__}: {err}")
        result.status = FAILED
        if storage.mask_url(source.url) not in result.error:
            result.error = f"{storage.mask_url(source.url)}: {result.error}"
        result.seconds = time.monotonic() - start
        return result

    @staticmethod
    def _record(marker: str) -> dict[str, Any] | None:
        """The ``_done.json`` of a track, if it has a readable one."""
        try:
            return json.loads(storage.read_bytes(marker))
        except (StorageError, ValueError):
            return None

    def _complete(self, record: dict[str, Any], key: str, outputs: list[str]) -> bool:
        """Whether ``record`` shows this very input separated with these settings, outputs intact."""
        return (
            record.get("fingerprint") == key
            and {**_LATER_SETTINGS, **(record.get("settings") or {})} == self.settings
            and all(storage.exists(u) for u in outputs)
        )

    def _separate(self, url: str, result: FileResult, outputs: list[str]) -> None:
        with contextlib.ExitStack() as sending:
            # From the probe to the last window: a pass may wait for this file.
            if self.shared is not None:
                sending.enter_context(self.shared.member())
            self._separate_in(url, result, outputs, sending)

    def _separate_in(
        self, url: str, result: FileResult, outputs: list[str], sending: contextlib.ExitStack
    ) -> None:
        job = self.job
        probe = ffmpeg.info if ffmpeg.decodes(url) else audio.info
        header = _bounded(lambda: probe(url), job.read_timeout, url)
        if header.frames == 0:
            raise AudioError(f"{storage.mask_url(url)}: contains no audio frames")
        rate, channels = header.sample_rate, header.channels
        limit = None if job.duration is None else round(job.duration * rate)
        out_rate = job.output_rate(rate)
        notes = [job.encoder_options(channels, out_rate)[1]]
        if job.format == "opus" and rate != out_rate:
            notes.append(f"resampled to {out_rate} Hz for Opus")
        result.note = "; ".join(n for n in notes if n)
        result.sample_rate, result.channels, result.output_sample_rate = rate, channels, out_rate
        result.trimmed = limit is not None and limit < header.frames
        # At least one batch of windows per block, so the model always sees full batches.
        config = self.bundle.config
        hop = config.num_samples - job.padding
        batch = math.ceil(job.batch_size * hop * rate / config.sample_rate)
        block_frames = max(1, round(job.block_seconds * rate), batch)
        stream = self.bundle.engine(
            rate, channels, out_rate, job.padding, job.batch_size, estimate=self.shared
        )
        with tempfile.TemporaryDirectory(prefix="separate-", dir=scratch.process_dir()) as tmp:
            stems = [_Spool(os.path.join(tmp, f"{i}.f32"), channels) for i in range(len(outputs))]
            with contextlib.ExitStack() as closing:  # closes every spool, whichever fails
                for spool in stems:
                    closing.callback(spool.close)
                blocks = _Prefetch(
                    _blocks(url, header, block_frames, limit, job.read_timeout),
                    _PREFETCH,
                    job.read_timeout,
                    url,
                )
                frames = self._run(stream, blocks, stems)
                sending.close()
            if frames == 0:
                raise AudioError(f"{storage.mask_url(url)}: contains no audio frames")
            result.duration_s = frames / rate
            gains = {
                stem: spool.encode(out, out_rate, job)
                for stem, spool, out in zip(self.stems, stems, outputs, strict=True)
            }
            result.gains = json.dumps(gains)

    def _run(self, stream: SeparationEngine, reader: _Prefetch, stems: list[_Spool]) -> int:
        """Feed decoded blocks through the stream into the spools; returns frames read."""
        frames = 0
        pending: list[Future] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool") as writer:
            try:
                for block in reader:
                    frames += block.shape[-1]
                    pending.append(
                        writer.submit(self._spool, stems, stream.push(torch.from_numpy(block)))
                    )
                    if len(pending) > _PREFETCH:
                        pending.pop(0).result()
                if frames:
                    pending.append(writer.submit(self._spool, stems, stream.finish()))
                for future in pending:
                    future.result()
            finally:
                reader.close()
        return frames

    @staticmethod
    def _spool(stems: list[_Spool], parts: torch.Tensor) -> None:
        """The targets' samples, then the residual's where it is kept (the engine's order)."""
        for spool, part in zip(stems, parts, strict=False):
            spool.append(part.numpy())
