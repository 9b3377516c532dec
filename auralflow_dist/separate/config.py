"""What a bulk separation job does (`SeparateConfig`), and the flags that set it.

The flags are defined once here so that ``auralflow separate`` and ``jobs/separate.py`` accept
the same ones; both then call `run_separation` with the config `from_args` builds.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import soundfile as sf

from auralflow_dist.errors import ConfigError

FORMATS = {"wav": "WAV", "flac": "FLAC"}


@dataclass
class SeparateConfig:
    """The seeds' ``separate`` flags plus the cluster knobs. ``None`` means "decide from the input
    or the cluster" (see each field)."""

    model: str  # a session folder (its best/ model) or a checkpoint folder
    audio: str  # a file, a folder or a bucket prefix, searched recursively
    save: str  # outputs go to <save>/<track>/<target>.wav (+ residual.wav)
    residual: bool = False
    duration: float | None = None  # seconds from the start; None: the whole file
    sr: int | None = None  # output sample rate; None: the input's
    padding: int = 200  # overlap of separation windows, in samples at the model's rate
    workers: int | None = None  # None: one per GPU, else one per 2 CPUs
    gpus_per_worker: float | None = None  # None: 1 where the cluster has GPUs, else 0
    cpus_per_worker: float | None = None  # None: 1 with GPUs, else the CPUs shared out
    batch_size: int = 8  # windows per forward pass
    format: str = "wav"
    subtype: str | None = None  # None: the format's default (PCM_16)
    overwrite: bool = False  # redo tracks whose outputs are complete
    block_seconds: float = 30.0  # audio decoded and separated at a time: bounds memory
    address: str | None = None  # Ray cluster; None: RAY_ADDRESS or a local instance
    pushgateway: str | None = None
    metrics_port: int | None = None
    job_name: str | None = None  # the metrics' ``job`` label; None: the --save folder's name

    def validate(self) -> SeparateConfig:
        for name in ("model", "audio", "save"):
            if not getattr(self, name):
                raise ConfigError(name, "must not be empty")
        if self.duration is not None and not self.duration > 0:
            raise ConfigError("duration", f"must be positive seconds, not {self.duration}")
        if self.sr is not None and not 1000 <= self.sr <= 384000:
            raise ConfigError("sr", f"must be in 1000..384000 Hz, not {self.sr}")
        if self.padding < 0:
            raise ConfigError("padding", f"must not be negative, not {self.padding}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("workers", f"must be at least 1, not {self.workers}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
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
            if not sf.check_format(FORMATS[self.format], self.subtype):
                choices = ", ".join(sf.available_subtypes(FORMATS[self.format]))
                raise ConfigError(
                    "subtype", f"{self.format} cannot hold {self.subtype} (choose from {choices})"
                )
        if not self.block_seconds > 0:
            raise ConfigError("block_seconds", f"must be positive, not {self.block_seconds}")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise ConfigError("metrics_port", f"must be in 1..65535, not {self.metrics_port}")
        return self

    @property
    def file_format(self) -> str:
        return FORMATS[self.format]

    @property
    def file_subtype(self) -> str:
        return self.subtype or sf.default_subtype(self.file_format)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``separate`` flags, with the seeds' names and defaults (``--duration`` aside)."""
    parser.add_argument(
        "model",
        metavar="session_or_model_url",
        help="a training session folder (its best/ model) or a model folder",
    )
    parser.add_argument(
        "audio",
        metavar="audio_url",
        help="an audio file, a folder or a bucket prefix (searched recursively "
        "for .wav, .flac, .ogg, .mp3)",
    )
    parser.add_argument(
        "--save",
        required=True,
        help="output folder: <save>/<track>/<target>.wav, plus _results.csv",
    )
    parser.add_argument("--residual", action="store_true", help="also save residual.wav")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="separate only the first DURATION seconds (default: whole files)",
    )
    parser.add_argument(
        "--sr",
        type=int,
        default=None,
        help="sample rate of the outputs (default: the input's; the model "
        "always runs at its own rate)",
    )
    parser.add_argument(
        "--padding",
        type=int,
        default=200,
        help="overlap between separation windows, in samples (default: 200)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="model replicas (default: one per GPU, else one per 2 CPUs)",
    )
    parser.add_argument(
        "--gpus-per-worker",
        "--gpus_per_worker",
        dest="gpus_per_worker",
        type=float,
        default=None,
        help="GPUs per replica (default: 1 if the cluster has GPUs, else 0)",
    )
    parser.add_argument(
        "--cpus-per-worker",
        "--cpus_per_worker",
        dest="cpus_per_worker",
        type=float,
        default=None,
        help="CPUs (and torch threads) per replica (default: shared out)",
    )
    parser.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        default=8,
        help="windows per forward pass (default: 8)",
    )
    parser.add_argument(
        "--format", choices=tuple(FORMATS), default="wav", help="output format (default: wav)"
    )
    parser.add_argument(
        "--subtype",
        default=None,
        help="output sample format, e.g. PCM_16, PCM_24, FLOAT (default: PCM_16)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="redo tracks already separated (default: skip them)",
    )
    parser.add_argument(
        "--block-seconds",
        "--block_seconds",
        dest="block_seconds",
        type=float,
        default=30.0,
        help="seconds decoded and separated at a time; bounds memory (default: 30)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)",
    )
    parser.add_argument(
        "--pushgateway", default=None, help="Prometheus Pushgateway URL to push progress metrics to"
    )
    parser.add_argument(
        "--metrics-port",
        "--metrics_port",
        dest="metrics_port",
        type=int,
        default=None,
        help="serve Prometheus /metrics on this port while running",
    )
    parser.add_argument(
        "--job-name",
        "--job_name",
        dest="job_name",
        default=None,
        help="the metrics' job label (default: the --save folder's name)",
    )


def from_args(args: argparse.Namespace) -> SeparateConfig:
    """The validated config for parsed `add_arguments` flags."""
    names = [f.name for f in dataclasses.fields(SeparateConfig)]
    return SeparateConfig(**{name: getattr(args, name) for name in names}).validate()
