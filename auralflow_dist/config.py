"""Typed configuration: the model (``model.json``) and the trainer (``trainer.json``).

Every value a user can set passes through here once, at the edge (CLI flags, JSON files, sweep
spaces), and is validated by ``validate()``; the rest of the library trusts these objects.
Errors name the field, so the CLI can name the flag.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from auralflow_dist.errors import ConfigError

MUSDB_TARGETS = ("vocals", "drums", "bass", "other")
MODEL_TYPES = ("SpectrogramNetSimple", "SpectrogramNetLSTM", "SpectrogramNetVAE", "MaskInference")
MASK_ACTIVATIONS = ("sigmoid", "relu", "tanh", "softmax", "leaky_relu")
CRITERIA = ("component", "kl_div", "l1", "l2", "mask", "si_sdr", "rmse")
REDUCTIONS = ("mean", "sum")
CONSTRUCTION_LOSSES = ("l1", "l2")

T = TypeVar("T")


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(name, message)


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Convert JSON/CLI values to the field's type, refusing lossy or ambiguous conversions."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return _coerce(name, value, args[0])
    if origin in (list, tuple):
        (item,) = typing.get_args(kind)[:1] or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(name, f"expected a list, got {value!r}")
        return [_coerce(name, v, item) for v in value]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(name, f"expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(name, f"expected an integer, got {value!r}")
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(name, f"expected an integer, got {value!r}")
            return int(value)
        try:
            return int(str(value), 10) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"expected an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(name, f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"expected a number, got {value!r}") from None
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build and validate a config dataclass; unknown keys are errors, not silently dropped."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            unknown[0], f"unknown {cls.__name__} field (known: {', '.join(sorted(names))})"
        )
    values = {k: _coerce(k, v, hints[k]) for k, v in data.items()}
    return cls(**values).validate()  # type: ignore[attr-defined]


def replace(config: T, **changes: Any) -> T:
    """A validated copy of ``config`` with ``changes`` applied (coerced like JSON input)."""
    merged = {**dataclasses.asdict(config), **changes}  # type: ignore[call-overload]
    return from_dict(type(config), merged)


def to_json(config: Any) -> str:
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=False) + "\n"


def from_json(cls: type[T], text: str, source: str = "config") -> T:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(source, f"not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(source, "expected a JSON object")
    return from_dict(cls, data)


@dataclass
class ModelConfig:
    """The network, its target and the signal it sees: everything needed to rebuild a model."""

    model_type: str = "SpectrogramNetSimple"
    target: str = "vocals"
    num_channels: int = 1
    hidden_channels: int = 16
    sample_length: float = 3.0
    sample_rate: int = 44100
    dropout_p: float = 0.4
    leak_factor: float = 0.0
    normalize_input: bool = False
    normalize_output: bool = False
    mask_act_fn: str = "sigmoid"
    num_fft: int = 1024
    window_size: int = 1024
    hop_length: int = 512
    recurrent_depth: int = 3
    hidden_size: int = 1024
    input_axis: int = 1

    @property
    def num_fft_bins(self) -> int:
        return self.num_fft // 2 + 1

    @property
    def num_samples(self) -> int:
        """Samples in one training chunk / separation window."""
        return round(self.sample_length * self.sample_rate)

    @property
    def num_frames(self) -> int:
        return self.num_samples // self.hop_length + 1

    def validate(self) -> ModelConfig:
        _require(
            self.model_type in MODEL_TYPES,
            "model_type",
            f"unknown model {self.model_type!r} (choose from {', '.join(MODEL_TYPES)})",
        )
        _require(
            bool(self.target) and self.target.replace("_", "").replace("-", "").isalnum(),
            "target",
            f"invalid target name {self.target!r}",
        )
        _require(
            self.target not in ("mixture", "residual"),
            "target",
            f"{self.target!r} cannot be a separation target",
        )
        _require(self.num_channels in (1, 2), "num_channels", "must be 1 (mono) or 2 (stereo)")
        _require(self.hidden_channels > 0, "hidden_channels", "must be positive")
        _require(self.sample_length > 0, "sample_length", "must be positive")
        _require(8000 <= self.sample_rate <= 192000, "sample_rate", "must be in 8000..192000 Hz")
        _require(0.0 <= self.dropout_p < 1.0, "dropout_p", "must be in [0, 1)")
        _require(0.0 <= self.leak_factor < 1.0, "leak_factor", "must be in [0, 1)")
        _require(
            self.mask_act_fn in MASK_ACTIVATIONS,
            "mask_act_fn",
            f"unknown activation {self.mask_act_fn!r} (choose from {', '.join(MASK_ACTIVATIONS)})",
        )
        _require(self.num_fft >= 16, "num_fft", "must be at least 16")
        _require(0 < self.window_size <= self.num_fft, "window_size", "must be in 1..num_fft")
        _require(
            0 < self.hop_length <= self.window_size,
            "hop_length",
            "must be positive and at most window_size",
        )
        _require(
            self.num_samples >= self.window_size,
            "sample_length",
            "chunks must be at least one STFT window long",
        )
        _require(self.recurrent_depth > 0, "recurrent_depth", "must be positive")
        _require(self.hidden_size > 0, "hidden_size", "must be positive")
        _require(self.input_axis in (0, 1), "input_axis", "must be 0 (frequency) or 1 (time)")
        return self


@dataclass
class TrainerConfig:
    """How to train (``trainer.json``): the seeds' ``train`` flags plus the cluster and data knobs.

    Flags that meant a torch DataLoader now tune the Ray Data ingest: ``num_workers`` is the
    decoding parallelism, ``pre_fetch`` the batches prefetched per worker, ``persistent_workers``
    keeps decoded validation chunks materialised, ``pin_memory`` pins host batches for the GPU.
    """

    max_tracks: int = 80
    max_samples: int = 10000
    batch_size: int = 32
    num_workers: int = 8
    persistent_workers: bool = False
    pin_memory: bool = False
    pre_fetch: int = 4
    max_epochs: int = 100
    lr: float = 0.01
    criterion: str = "si_sdr"
    use_amp: bool = False
    clip_grad: bool = False
    max_grad_norm: float = 1000.0
    scale_grad: bool = False
    stop_patience: int = 5
    tensorboard: bool = False
    view_iter: bool = False
    view_epoch: bool = False
    view_weights: bool = False
    view_grad: bool = False
    view_norm: bool = False
    play_estimate: bool = False
    play_residual: bool = False
    view_spec: bool = False
    view_wav: bool = False
    construction_loss: str = "l2"
    lr_lstm: float = 1e-5
    init_scale: float = 2.0**16
    max_plateaus: int = 5
    min_delta: float = 0.01
    reduction: str = "mean"
    best_perm: bool = False
    alpha: float = 0.2
    beta: float = 0.8
    fidelity: float = 1.0
    allow_no_fidelity: bool = False
    image_freq: int = 5
    silent: bool = False
    seed: int = 0
    # Data pipeline.
    val_chunks: int = 64
    shuffle_buffer: int = 256
    silence_threshold_db: float = -60.0
    augment_gain: bool = True
    gain_range_db: float = 6.0
    augment_channel_swap: bool = True
    augment_remix: bool = True
    decode_cpus: float = 1.0
    # Cluster.
    workers_min: int = 1
    workers_max: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_failures: int = 0
    keep_checkpoints: int = 3
    storage: str | None = None

    def validate(self) -> TrainerConfig:
        for name in (
            "max_tracks",
            "max_samples",
            "batch_size",
            "max_epochs",
            "pre_fetch",
            "image_freq",
            "val_chunks",
        ):
            _require(getattr(self, name) > 0, name, "must be positive")
        for name in (
            "num_workers",
            "stop_patience",
            "max_plateaus",
            "shuffle_buffer",
            "max_failures",
            "seed",
        ):
            _require(getattr(self, name) >= 0, name, "must not be negative")
        _require(self.lr > 0, "lr", "must be positive")
        _require(self.lr_lstm > 0, "lr_lstm", "must be positive")
        _require(self.max_grad_norm > 0, "max_grad_norm", "must be positive")
        _require(self.init_scale > 0, "init_scale", "must be positive")
        _require(self.min_delta >= 0, "min_delta", "must not be negative")
        crit = self.criterion.lower().replace("-", "_")
        _require(
            crit in CRITERIA,
            "criterion",
            f"unknown criterion {self.criterion!r} (choose from {', '.join(CRITERIA)})",
        )
        self.criterion = crit
        _require(self.reduction in REDUCTIONS, "reduction", "must be 'mean' or 'sum'")
        _require(
            self.construction_loss in CONSTRUCTION_LOSSES,
            "construction_loss",
            "must be 'l1' or 'l2'",
        )
        for name in ("alpha", "beta", "fidelity"):
            _require(getattr(self, name) >= 0, name, "must not be negative")
        if self.criterion == "component" and self.fidelity == 0 and not self.allow_no_fidelity:
            raise ConfigError(
                "fidelity",
                "0 switches off the component loss's target-fidelity "
                "term; pass --allow-no-fidelity if that is intended",
            )
        _require(self.gain_range_db >= 0, "gain_range_db", "must not be negative")
        _require(self.silence_threshold_db < 0, "silence_threshold_db", "must be below 0 dBFS")
        _require(
            1 <= self.workers_min <= self.workers_max,
            "workers",
            "must be N or MIN:MAX with 1 <= MIN <= MAX",
        )
        _require(self.gpus_per_worker >= 0, "gpus_per_worker", "must not be negative")
        _require(self.cpus_per_worker > 0, "cpus_per_worker", "must be positive")
        _require(self.decode_cpus > 0, "decode_cpus", "must be positive")
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1")
        return self


def default_model_config(**overrides: Any) -> ModelConfig:
    return from_dict(ModelConfig, overrides)


__all__ = [
    "CRITERIA",
    "MASK_ACTIVATIONS",
    "MODEL_TYPES",
    "MUSDB_TARGETS",
    "ModelConfig",
    "TrainerConfig",
    "default_model_config",
    "field",
    "from_dict",
    "from_json",
    "replace",
    "to_json",
]
