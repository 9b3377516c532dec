"""What a bulk separation job does (`SeparateConfig`), and the flags that set it.

The flags are defined once here so that ``auralflow separate`` and ``jobs/separate.py`` accept
the same ones; both then call `run_separation` with the config `from_args` builds.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import soundfile as sf

from auralflow_dist import flags
from auralflow_dist.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PADDING,
    WienerConfig,
    from_dict,
    option,
)
from auralflow_dist.errors import ConfigError

FORMATS = {"wav": "WAV", "flac": "FLAC"}
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
        help="an audio file, a folder or a bucket prefix (searched recursively "
        "for .wav, .flac, .ogg, .mp3)",
        positional=True,
        metavar="audio_url",
    )
    save: str = option(help="output folder: <save>/<track>/<target>.wav, plus _results.csv")
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
    format: str = option("wav", "output format", choices=tuple(FORMATS))
    subtype: str | None = option(
        None, "output sample format, e.g. PCM_16, PCM_24, FLOAT (default: PCM_16)"
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
            if not sf.check_format(FORMATS[self.format], self.subtype):
                choices = ", ".join(sf.available_subtypes(FORMATS[self.format]))
                raise ConfigError(
                    "subtype", f"{self.format} cannot hold {self.subtype} (choose from {choices})"
                )
        if not self.block_seconds > 0:
            raise ConfigError("block_seconds", f"must be positive, not {self.block_seconds}")
        if not 0 < self.read_timeout < float("inf"):
            raise ConfigError("read_timeout", f"must be positive seconds, not {self.read_timeout}")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise ConfigError("metrics_port", f"must be in 1..65535, not {self.metrics_port}")
        return self

    @property
    def wiener_filter(self) -> WienerConfig:
        return WienerConfig(self.wiener, self.softmask, self.residual)

    @property
    def file_format(self) -> str:
        return FORMATS[self.format]

    @property
    def file_subtype(self) -> str:
        return self.subtype or sf.default_subtype(self.file_format)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``separate`` flags, with the seeds' names and defaults (``--duration`` aside)."""
    flags.add_dataclass_flags(parser, SeparateConfig)


def from_args(args: argparse.Namespace) -> SeparateConfig:
    """The validated config for parsed `add_arguments` flags."""
    return from_dict(SeparateConfig, flags.given(args, SeparateConfig))
