"""What a bulk separation job does (`SeparateConfig`), and the flags that set it.

The flags are defined once here so that ``auralflow separate`` and ``jobs/separate.py`` accept
the same ones; both then call `run_separation` with the config `from_args` builds.
"""

from __future__ import annotations

import argparse
import posixpath
import string
from dataclasses import dataclass

import soundfile as sf

from auralflow_dist import ffmpeg, flags
from auralflow_dist.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PADDING,
    WienerConfig,
    from_dict,
    option,
)
from auralflow_dist.errors import ConfigError

# --format: libsndfile's container and the default sample format. libsndfile in the soundfile
# wheel encodes MP3 (LAME), Vorbis and Opus; Opus runs at 48 kHz only.
FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
}
LOSSY = ("mp3", "ogg", "opus")
OPUS_RATE = 48000
# MP3's bitrate range (kbps) by sample rate: MPEG-1 from 32 kHz, MPEG-2 from 16 kHz, MPEG-2.5.
MP3_KBPS = ((32000, (32, 320)), (16000, (8, 160)), (0, (8, 64)))
OPUS_KBPS_PER_CHANNEL = (6, 256)  # libsndfile's range: compression level 1 -> 0
CLIP_MODES = ("rescale", "clamp", "none")
# Input extensions libsndfile in the soundfile wheel decodes, and the default set of them; where
# ffmpeg is installed, its formats (`ffmpeg.EXTENSIONS`) join both.
SNDFILE_EXTENSIONS = ("wav", "flac", "ogg", "oga", "opus", "mp3", "aiff", "aif", "aifc", "caf",
                      "w64", "au", "snd")  # fmt: skip
DEFAULT_EXTENSIONS = ("wav", "flac", "ogg", "oga", "opus", "mp3", "aiff", "aif")
DEFAULT_FILENAME = "{track}/{stem}.{ext}"
FILENAME_FIELDS = ("track", "name", "stem", "ext")
MIN_RATE, MAX_RATE = 8000, 384000  # output rates (Hz) --sr accepts


@dataclass
class SeparateConfig:
    """The seeds' ``separate`` flags plus the cluster knobs. ``None`` means "decide from the input
    or the cluster" (see each field)."""

    model: str = option(
        help="a training session folder (its best/ model), a model folder or a name in the "
        "model index; for several stems in one pass, a folder of one per target or "
        "comma-separated ones",
        positional=True,
        metavar="session_or_model_url",
    )
    audio: str = option(
        help="an audio file, a folder or a bucket prefix (searched recursively for --extensions)",
        positional=True,
        metavar="audio_url",
    )
    save: str = option(help="output folder: <save>/<track>/<target>.<format>, plus _results.csv")
    extensions: str | None = option(
        None,
        f"comma-separated input extensions to separate (default: {','.join(DEFAULT_EXTENSIONS)}, "
        f"plus {','.join(ffmpeg.EXTENSIONS)} where ffmpeg is installed; libsndfile also reads "
        f"{', '.join(e for e in SNDFILE_EXTENSIONS if e not in DEFAULT_EXTENSIONS)}); other "
        "files under the input are listed in _results as not separated",
    )
    residual: bool = option(
        False,
        "also save residual.wav (the mixture minus every target; with --wiener, one more "
        "source in the filter)",
        switch=True,
    )
    wiener: int = option(
        0,
        "multichannel Wiener filter over all targets: EM iterations (0: each target's own "
        "estimate, no filter)",
    )
    softmask: bool = option(
        False, "start the Wiener filter from ratio masks of the estimates", switch=True
    )
    duration: float | None = option(
        None, "separate only the first DURATION seconds (default: whole files)"
    )
    sr: int | None = option(
        None,
        "sample rate of the outputs (default: the input's; the model always runs at its own rate)",
    )
    padding: int = option(DEFAULT_PADDING, "overlap between separation windows, in samples")
    workers: int | None = option(None, "model replicas (default: one per GPU, else one per 2 CPUs)")
    gpus_per_worker: float | None = option(
        None, "GPUs per replica (default: 1 if the cluster has GPUs, else 0)"
    )
    cpus_per_worker: float | None = option(
        None, "CPUs (and torch threads) per replica (default: shared out)"
    )
    batch_size: int = option(DEFAULT_BATCH_SIZE, "windows per forward pass")
    use_amp: bool = option(
        False,
        "mixed precision: bf16 where the device has it, else fp16 (the LSTM layers stay "
        "float32 on CPUs)",
        switch=True,
    )
    format: str = option(
        "wav", "output format (opus: always 48 kHz, resampled)", choices=tuple(FORMATS)
    )
    subtype: str | None = option(
        None, "wav/flac sample format, e.g. PCM_16, PCM_24, FLOAT (default: PCM_16)"
    )
    bitrate: int | None = option(
        None, "mp3: constant bitrate in kbps (within the rate's MPEG range); opus: target kbps"
    )
    quality: float | None = option(
        None, "mp3/ogg/opus variable-bitrate quality, 0 (smallest) to 10 (best)"
    )
    filename: str = option(
        DEFAULT_FILENAME,
        "where each stem goes under --save: {track} (the input's path under the input URL, "
        "without extension), {name} (its file name, without extension), {stem}, {ext}",
    )
    clip_mode: str = option(
        "rescale",
        "peaks beyond +-1: rescale the stem by 1/peak (the gain goes in _results), clamp "
        "them, or none (float and lossy outputs only)",
        choices=CLIP_MODES,
    )
    overwrite: bool = option(
        False, "redo tracks already separated (default: skip them)", switch=True
    )
    block_seconds: float = option(30.0, "seconds decoded and separated at a time; bounds memory")
    read_timeout: float = option(
        300.0,
        "seconds a read of one block may stall (a hung mount or object store) before that "
        "file fails as a timeout",
    )
    model_index: str | None = option(
        None, "model index (JSON, any URL) that names models (default: $AURALFLOW_MODEL_INDEX)"
    )
    address: str | None = option(
        None, "Ray cluster address (default: RAY_ADDRESS, else a local Ray)"
    )
    pushgateway: str | None = option(None, "Prometheus Pushgateway URL to push progress metrics to")
    metrics_port: int | None = option(None, "serve Prometheus /metrics on this port while running")
    job_name: str | None = option(
        None, "the metrics' job label (default: the --save folder's name)"
    )

    def validate(self) -> SeparateConfig:
        for name in ("model", "audio", "save"):
            if not getattr(self, name):
                raise ConfigError(name, "must not be empty")
        if self.duration is not None and not self.duration > 0:
            raise ConfigError("duration", f"must be positive seconds, not {self.duration}")
        # Whether a rate pair can be resampled depends on the input's rate too: each file checks
        # it (`audio.convert.check_resampling`) and fails on its own if not.
        if self.sr is not None and not MIN_RATE <= self.sr <= MAX_RATE:
            raise ConfigError("sr", f"must be in {MIN_RATE}..{MAX_RATE} Hz, not {self.sr}")
        if self.wiener < 0:
            raise ConfigError("wiener", f"must not be negative, not {self.wiener}")
        if self.padding < 0:
            raise ConfigError("padding", f"must not be negative, not {self.padding}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("workers", f"must be at least 1, not {self.workers}")
        if self.gpus_per_worker is not None and not self.gpus_per_worker >= 0:
            raise ConfigError(
                "gpus_per_worker", f"must not be negative, not {self.gpus_per_worker}"
            )
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            raise ConfigError("cpus_per_worker", f"must be positive, not {self.cpus_per_worker}")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be at least 1, not {self.batch_size}")
        if self.format not in FORMATS:
            raise ConfigError("format", f"must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if self.subtype is not None:
            self.subtype = self.subtype.upper()
            if self.format in LOSSY and self.subtype != FORMATS[self.format][1]:
                raise ConfigError("subtype", f"{self.format} has no sample format to choose")
            if not sf.check_format(self.file_format, self.subtype):
                choices = ", ".join(sf.available_subtypes(self.file_format))
                raise ConfigError(
                    "subtype", f"{self.format} cannot hold {self.subtype} (choose from {choices})"
                )
        self._check_encoding()
        self._check_filename()
        self._check_extensions()
        if not self.block_seconds > 0:
            raise ConfigError("block_seconds", f"must be positive, not {self.block_seconds}")
        if not 0 < self.read_timeout < float("inf"):
            raise ConfigError("read_timeout", f"must be positive seconds, not {self.read_timeout}")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise ConfigError("metrics_port", f"must be in 1..65535, not {self.metrics_port}")
        return self

    def _check_encoding(self) -> None:
        if self.bitrate is not None and self.quality is not None:
            raise ConfigError("bitrate", "give --bitrate or --quality, not both")
        if self.bitrate is not None:
            if self.format not in ("mp3", "opus"):
                raise ConfigError("bitrate", f"--bitrate is for mp3 and opus, not {self.format}")
            if self.format == "mp3" and not 8 <= self.bitrate <= 320:
                raise ConfigError("bitrate", f"mp3 takes 8..320 kbps, not {self.bitrate}")
            if self.format == "opus" and not 6 <= self.bitrate <= 512:
                raise ConfigError("bitrate", f"opus takes 6..512 kbps, not {self.bitrate}")
        if self.quality is not None:
            if self.format not in LOSSY:
                raise ConfigError("quality", f"--quality is for {', '.join(LOSSY)}")
            if not 0 <= self.quality <= 10:
                raise ConfigError("quality", f"goes from 0 to 10, not {self.quality}")
        if self.format == "opus" and self.sr not in (None, OPUS_RATE):
            raise ConfigError("sr", f"Opus runs at {OPUS_RATE} Hz only, not {self.sr}")
        if self.clip_mode not in CLIP_MODES:
            raise ConfigError(
                "clip_mode", f"must be rescale, clamp or none, not {self.clip_mode!r}"
            )
        subtype = self.file_subtype
        if (
            self.clip_mode == "none"
            and self.format not in LOSSY
            and subtype not in ("FLOAT", "DOUBLE")
        ):
            raise ConfigError(
                "clip_mode",
                f"none: {subtype} cannot hold samples beyond +-1 (use --subtype FLOAT, or "
                "rescale or clamp)",
            )

    def _check_filename(self) -> None:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.filename) if f is not None}
        except ValueError as err:
            raise ConfigError("filename", f"{self.filename!r} is not a template ({err})") from None
        unknown = fields - set(FILENAME_FIELDS)
        if unknown:
            known = ", ".join("{" + f + "}" for f in FILENAME_FIELDS)
            raise ConfigError("filename", f"unknown field(s) {sorted(unknown)}: use {known}")
        if "stem" not in fields:
            raise ConfigError("filename", "must hold {stem}: every stem needs its own file")
        if not fields & {"track", "name"}:
            raise ConfigError("filename", "must hold {track} or {name}: every input needs its own")
        sample = self.output_path("a/b", "c", "vocals")  # a path like any other
        if self.filename.startswith("/") or ".." in sample.split("/"):
            raise ConfigError("filename", f"{self.filename!r} leaves --save")

    def output_path(self, track: str, name: str, stem: str) -> str:
        """A stem's path under --save (``--filename`` filled in)."""
        path = self.filename.format(track=track, name=name, stem=stem, ext=self.format)
        return posixpath.normpath(path)

    def _check_extensions(self) -> None:
        if self.extensions is None:
            return
        known = (*SNDFILE_EXTENSIONS, *ffmpeg.EXTENSIONS)
        unknown = [e for e in self.extension_set if e not in known]
        if unknown or not self.extension_set:
            raise ConfigError(
                "extensions",
                f"{', '.join(unknown) or 'none given'}: choose among {', '.join(known)}",
            )
        needs = [e for e in self.extension_set if e in ffmpeg.EXTENSIONS]
        if needs and not ffmpeg.available():
            raise ConfigError(
                "extensions",
                f"{', '.join(needs)} need ffmpeg, which is not installed here "
                "(apt-get install ffmpeg)",
            )

    @property
    def extension_set(self) -> tuple[str, ...]:
        """The extensions to separate: --extensions, else the defaults this machine decodes."""
        if self.extensions is None:
            return DEFAULT_EXTENSIONS + (ffmpeg.EXTENSIONS if ffmpeg.available() else ())
        parts = (e.strip().lower().lstrip(".") for e in self.extensions.split(","))
        return tuple(dict.fromkeys(p for p in parts if p))

    def output_rate(self, input_rate: int) -> int:
        """The stems' sample rate for an input of ``input_rate``."""
        if self.format == "opus":
            return OPUS_RATE
        return self.sr or input_rate

    def encoder_options(self, channels: int, sample_rate: int) -> tuple[dict[str, object], str]:
        """soundfile's ``compression_level``/``bitrate_mode`` for --bitrate and --quality, and a
        note where the codec cannot do what was asked (an MP3 bitrate its rate lacks).

        libsndfile maps a compression level in [0, 1] linearly onto each codec's bitrate range
        (MP3: `MP3_KBPS` at the rate, snapped to MPEG's rates; Opus: 256 -> 6 kbps per channel)
        or its quality (Vorbis); measured with this wheel's libsndfile 1.2.2.
        """
        if self.bitrate is not None and self.format == "mp3":
            low, high = next(kbps for rate, kbps in MP3_KBPS if sample_rate >= rate)
            kbps = min(max(self.bitrate, low), high)
            note = "" if kbps == self.bitrate else f"mp3 at {sample_rate} Hz: {kbps} kbps"
            level = (high - kbps) / (high - low)
            return {"compression_level": level, "bitrate_mode": "CONSTANT"}, note
        if self.bitrate is not None:  # opus
            low, high = OPUS_KBPS_PER_CHANNEL
            per_channel = min(max(self.bitrate / channels, low), high)
            return {"compression_level": (high - per_channel) / (high - low)}, ""
        if self.quality is not None:
            # MP3 refuses level 1.0 (its lowest rate) in libsndfile 1.2.2.
            return {"compression_level": min(1 - self.quality / 10, 0.99)}, ""
        return {}, ""

    @property
    def wiener_filter(self) -> WienerConfig:
        return WienerConfig(self.wiener, self.softmask, self.residual)

    @property
    def file_format(self) -> str:
        return FORMATS[self.format][0]

    @property
    def file_subtype(self) -> str:
        return self.subtype or FORMATS[self.format][1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``separate`` flags, with the seeds' names and defaults (``--duration`` aside)."""
    flags.add_dataclass_flags(parser, SeparateConfig)


def from_args(args: argparse.Namespace) -> SeparateConfig:
    """The validated config for parsed `add_arguments` flags."""
    return from_dict(SeparateConfig, flags.given(args, SeparateConfig))
