"""Typed configuration: every command's settings, and the one way they are read.

Every value a user can set passes through here once, at the edge (CLI flags, JSON files, sweep
spaces): `from_dict` coerces it and calls the config's ``validate()``; the rest of the library
trusts these objects. Errors name the field, so the CLI can name the flag. Each field's default
and help text are written once, here (`option`); `auralflow_dist.flags` turns them into flags.

A field whose type is a dataclass is a section (``trainer.optim``): its fields keep flat names
in JSON, flags and `from_dict`/`replace`, so ``trainer.json`` is one flat object.

This module imports nothing heavy (no torch): the CLI builds its parser from it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from auralflow_dist.errors import ConfigError

MUSDB_TARGETS = ("vocals", "drums", "bass", "other")
MODEL_TYPES = ("SpectrogramNetSimple", "SpectrogramNetLSTM", "SpectrogramNetVAE", "MaskInference")
MASK_ACTIVATIONS = ("sigmoid", "relu", "tanh", "softmax", "leaky_relu")
# The loss names; `auralflow_dist.losses` implements them and checks its options with the
# `check_*` functions below, so the CLI can refuse a bad value without importing torch.
CRITERIA = ("component", "kl_div", "l1", "l2", "mask", "si_sdr", "rmse")
REDUCTIONS = ("mean", "sum")
CONSTRUCTION_LOSSES = ("l1", "l2")
# Separation (`auralflow separate`, `auralflow test`, `SpectrogramMaskModel.separate`).
DEFAULT_PADDING = 200  # overlap of separation windows, in samples at the model's rate
DEFAULT_BATCH_SIZE = 8  # windows per forward pass
# The sweep (`auralflow tune`): what the training loop reports, with the better direction.
SCHEDULERS = ("asha", "pbt", "fifo")
SEARCHES = ("random", "grid", "optuna")
METRICS = {"val_si_sdr": "max", "val_si_sdri": "max", "val_loss": "min", "train_loss": "min"}

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", **flag: Any) -> Any:
    """A field with its flag's metadata (keys: see `auralflow_dist.flags`); no default: required."""
    return field(default=default, metadata={"help": help, **flag})


def require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(name, message)


class Leaf(NamedTuple):
    field: dataclasses.Field
    kind: Any  # the resolved type hint


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


@functools.cache
def leaves(cls: type) -> dict[str, Leaf]:
    """The settable fields of ``cls`` by flat name: a section's fields stand in for it."""
    found: dict[str, Leaf] = {}
    for f in dataclasses.fields(cls):
        kind = _hints(cls)[f.name]
        inner = leaves(kind) if _is_section(kind) else {f.name: Leaf(f, kind)}
        for name, leaf in inner.items():
            if name in found:
                raise TypeError(f"{cls.__name__}: two fields named {name!r}")
            found[name] = leaf
    return found


def coerce(name: str, value: Any, kind: Any) -> Any:
    """Convert JSON/CLI values to the field's type, refusing lossy or ambiguous conversions."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return coerce(name, value, args[0])
    if origin in (list, tuple):
        (item,) = typing.get_args(kind)[:1] or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(name, f"expected a list, got {value!r}")
        return [coerce(name, v, item) for v in value]
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
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"expected a number, got {value!r}") from None
        # "inf", "nan" and JSON's Infinity/NaN parse as floats; inf passes every `> 0` check and
        # NaN every `< 0` one, and no setting means either.
        if not math.isfinite(number):
            raise ConfigError(name, f"must be a finite number, got {number}")
        return number
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"expected a string, got {value!r}")
        return value
    return value


def _build(cls: type[T], values: dict[str, Any]) -> T:
    """``cls`` from flat, coerced ``values``, sections built from their fields; not validated."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = _hints(cls)[f.name]
        if _is_section(kind):
            kwargs[f.name] = _build(kind, values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f.name, "is required")
    return cls(**kwargs)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build and validate a config from flat keys; unknown keys are errors, not dropped."""
    known = leaves(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            unknown[0], f"unknown {cls.__name__} field (known: {', '.join(sorted(known))})"
        )
    values = {k: coerce(k, v, known[k].kind) for k, v in data.items()}
    return _build(cls, values).validate()  # type: ignore[attr-defined]


def to_dict(config: Any) -> dict[str, Any]:
    """The flat form `from_dict` reads: sections' fields at the top level."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        flat.update(to_dict(value) if dataclasses.is_dataclass(value) else {f.name: value})
    return flat


def replace(config: T, **changes: Any) -> T:
    """A validated copy of ``config`` with flat ``changes`` applied (coerced like JSON input)."""
    return from_dict(type(config), {**to_dict(config), **changes})


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=False) + "\n"


def from_json(cls: type[T], text: str, source: str = "config") -> T:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(source, f"not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(source, "expected a JSON object")
    return from_dict(cls, data)


# ----------------------------------------------------------------------------------------------
# Loss options, shared by `TrainerConfig.validate` and `auralflow_dist.losses`


def criterion_name(name: str) -> str:
    """The canonical name of a criterion: ``si-sdr`` and ``SI_SDR`` both name ``si_sdr``."""
    key = name.strip().lower().replace("-", "_")
    require(
        key in CRITERIA,
        "criterion",
        f"unknown criterion {name!r} (choose from {', '.join(CRITERIA)})",
    )
    return key


def check_reduction(reduction: str) -> None:
    require(
        reduction in REDUCTIONS,
        "reduction",
        f"must be one of {', '.join(REDUCTIONS)}, got {reduction!r}",
    )


def check_construction_loss(name: str) -> None:
    require(
        name in CONSTRUCTION_LOSSES,
        "construction_loss",
        f"must be one of {', '.join(CONSTRUCTION_LOSSES)}, got {name!r}",
    )


def check_weights(alpha: float, beta: float, fidelity: float) -> None:
    for name, weight in (("alpha", alpha), ("beta", beta), ("fidelity", fidelity)):
        require(weight >= 0, name, f"must not be negative, got {weight}")


def check_component_weights(
    alpha: float, beta: float, fidelity: float, allow_no_fidelity: bool
) -> None:
    """The component loss needs its target-fidelity term unless told otherwise (see losses)."""
    check_weights(alpha, beta, fidelity)
    require(
        fidelity != 0 or allow_no_fidelity,
        "fidelity",
        "0 switches off the component loss's target-fidelity term (the mask learns only to "
        "suppress the residual): give a positive weight, or pass --allow-no-fidelity if that "
        "is intended",
    )
    require(alpha + beta + fidelity > 0, "alpha", "all three component loss weights are 0")


def check_best_perm(best_perm: bool, criterion: str) -> None:
    """``best_perm`` does nothing outside ``si_sdr``: refused there rather than ignored."""
    require(
        not best_perm or criterion == "si_sdr",
        "best_perm",
        f"applies only to the si_sdr criterion, not {criterion!r}",
    )


def parse_workers(text: str) -> dict[str, int]:
    """``--workers N`` or ``MIN:MAX`` (elastic training)."""
    try:
        low, _, high = text.partition(":")
        return {"workers_min": int(low), "workers_max": int(high or low)}
    except ValueError:
        raise ConfigError("workers", f"expected N or MIN:MAX, got {text!r}") from None


# ----------------------------------------------------------------------------------------------
# Separation's Wiener filter


@dataclass(frozen=True)
class WienerConfig:
    """The multichannel Wiener filter over a bundle's targets (see `audio.wiener.wiener`).

    ``iterations`` 0 with ``softmask`` off is no filter at all: each target's own estimate.
    ``residual`` takes the mixture minus the targets as one more source in the filter.
    """

    iterations: int = 0
    softmask: bool = False
    residual: bool = False

    @property
    def active(self) -> bool:
        return self.iterations > 0 or self.softmask


# ----------------------------------------------------------------------------------------------
# model.json


@dataclass
class ModelConfig:
    """The network, its target and the signal it sees: everything needed to rebuild a model."""

    model_type: str = option(
        "SpectrogramNetSimple", "the network", positional=True, choices=MODEL_TYPES
    )
    target: str = option("vocals", "the stem to isolate (or --vocals, --drums, ...)")
    num_channels: int = option(1, "1 for mono, 2 for stereo")
    hidden_channels: int = option(
        16, "initial number of convolution filters", aliases=["num_hidden_channels"]
    )
    sample_length: float = option(3.0, "seconds per training chunk / separation window")
    sample_rate: int = option(44100, "sample rate the model runs at (Hz)")
    dropout_p: float = option(0.4, "dropout probability")
    leak_factor: float = option(0.0, "negative slope when --mask-act-fn leaky_relu")
    normalize_input: bool = option(False, "learn per-bin input centering/scaling")
    normalize_output: bool = option(False, "learn per-bin output centering/scaling")
    mask_act_fn: str = option("sigmoid", "mask activation: " + " | ".join(MASK_ACTIVATIONS))
    num_fft: int = option(1024, "FFT size")
    window_size: int = option(1024, "STFT window length")
    hop_length: int = option(512, "STFT hop length")
    recurrent_depth: int = option(3, "number of LSTM layers")
    hidden_size: int = option(1024, "LSTM hidden size")
    input_axis: int = option(1, "LSTM recurs over 1: time, 0: frequency")

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
        require(
            self.model_type in MODEL_TYPES,
            "model_type",
            f"unknown model {self.model_type!r} (choose from {', '.join(MODEL_TYPES)})",
        )
        require(
            bool(self.target) and self.target.replace("_", "").replace("-", "").isalnum(),
            "target",
            f"invalid target name {self.target!r}",
        )
        require(
            self.target not in ("mixture", "residual"),
            "target",
            f"{self.target!r} cannot be a separation target",
        )
        require(self.num_channels in (1, 2), "num_channels", "must be 1 (mono) or 2 (stereo)")
        require(self.hidden_channels > 0, "hidden_channels", "must be positive")
        require(self.sample_length > 0, "sample_length", "must be positive")
        require(8000 <= self.sample_rate <= 192000, "sample_rate", "must be in 8000..192000 Hz")
        require(0.0 <= self.dropout_p < 1.0, "dropout_p", "must be in [0, 1)")
        require(0.0 <= self.leak_factor < 1.0, "leak_factor", "must be in [0, 1)")
        require(
            self.mask_act_fn in MASK_ACTIVATIONS,
            "mask_act_fn",
            f"unknown activation {self.mask_act_fn!r} (choose from {', '.join(MASK_ACTIVATIONS)})",
        )
        require(self.num_fft >= 16, "num_fft", "must be at least 16")
        require(0 < self.window_size <= self.num_fft, "window_size", "must be in 1..num_fft")
        require(
            0 < self.hop_length <= self.window_size,
            "hop_length",
            "must be positive and at most window_size",
        )
        require(
            self.num_samples >= self.window_size,
            "sample_length",
            "chunks must be at least one STFT window long",
        )
        require(self.recurrent_depth > 0, "recurrent_depth", "must be positive")
        require(self.hidden_size > 0, "hidden_size", "must be positive")
        require(self.input_axis in (0, 1), "input_axis", "must be 0 (frequency) or 1 (time)")
        # Upper bounds, each far above any model this project trains (defaults: 16 channels, 3 s,
        # FFT 1024, 3 LSTM layers of 1024). Without them a typo or a hostile model.json
        # (hidden_size 1e9) builds the network or its windows, and dies of an out-of-memory kill
        # instead of a message.
        for name, bound, why in (
            ("hidden_channels", 1024, "the U-Nets double it per layer, to 32x at the bottom"),
            ("sample_length", 60, "seconds per window; a batch holds batch_size of them"),
            ("num_fft", 65536, "1.5 s per STFT frame at 44.1 kHz"),
            ("recurrent_depth", 16, "LSTM layers"),
            ("hidden_size", 16384, "4 * 16384**2 LSTM weights per layer and direction already"),
        ):
            value = getattr(self, name)
            require(
                value <= bound,
                name,
                f"must be at most {bound} ({why}; larger would allocate absurd memory), "
                f"got {value:g}",
            )
        return self


# ----------------------------------------------------------------------------------------------
# trainer.json: `TrainerConfig` and its sections


def _positive(config: Any, *names: str) -> None:
    for name in names:
        require(getattr(config, name) > 0, name, "must be positive")


def _not_negative(config: Any, *names: str) -> None:
    for name in names:
        require(getattr(config, name) >= 0, name, "must not be negative")


@dataclass
class DataConfig:
    """The dataset, the Ray Data ingest and augmentation.

    Flags that meant a torch DataLoader now tune the ingest: ``num_workers`` is the decoding
    parallelism, ``pre_fetch`` the batches prefetched per worker, ``persistent_workers`` keeps
    decoded validation chunks materialised, ``pin_memory`` pins host batches for the GPU.
    """

    max_tracks: int = option(80, "max number of training tracks drawn from")
    max_samples: int = option(10000, "chunks per epoch")
    batch_size: int = option(32, "batch size per worker")
    num_workers: int = option(8, "concurrent decoding tasks of the Ray Data ingest")
    persistent_workers: bool = option(
        False, "keep decoded validation chunks materialised across epochs"
    )
    pin_memory: bool = option(False, "pin host batches for faster GPU copies")
    pre_fetch: int = option(4, "batches prefetched per worker")
    val_chunks: int = option(64, "fixed validation chunks")
    shuffle_buffer: int = option(256, "chunks shuffled together per worker (0: no shuffle)")
    silence_threshold_db: float = option(-60.0, "targets quieter than this are redrawn (dBFS)")
    augment_gain: bool = option(True, "random per-stem gains")
    gain_range_db: float = option(6.0, "gains within +- this many dB")
    augment_channel_swap: bool = option(True, "randomly swap stereo channels")
    augment_remix: bool = option(True, "mix other stems from other tracks and offsets")
    decode_cpus: float = option(1.0, "CPUs per decoding task")

    def validate(self) -> DataConfig:
        _positive(self, "max_tracks", "max_samples", "batch_size", "pre_fetch", "val_chunks")
        _not_negative(self, "num_workers", "shuffle_buffer")
        require(self.gain_range_db >= 0, "gain_range_db", "must not be negative")
        require(self.silence_threshold_db < 0, "silence_threshold_db", "must be below 0 dBFS")
        require(self.decode_cpus > 0, "decode_cpus", "must be positive")
        return self


@dataclass
class OptimConfig:
    """Optimisation and the loss."""

    max_epochs: int = option(100, "epochs to train")
    max_minutes: float | None = option(
        None, "stop training mid-epoch at this many minutes (over all runs), then validate"
    )
    lr: float = option(0.01, "learning rate")
    lr_lstm: float = option(1e-5, "learning rate of LSTM bottleneck parameters")
    criterion: str = option("si_sdr", "loss: " + " | ".join(CRITERIA))
    reduction: str = option("mean", "batch reduction: " + " | ".join(REDUCTIONS))
    alpha: float = option(0.2, "component loss: residual attenuation weight")
    beta: float = option(0.8, "component loss: residual shape weight")
    fidelity: float = option(1.0, "component loss: target fidelity weight")
    construction_loss: str = option(
        "l2", "kl_div: magnitude loss, " + " | ".join(CONSTRUCTION_LOSSES)
    )
    best_perm: bool = option(False, "si_sdr: score the best channel order")
    allow_no_fidelity: bool = option(False, "allow --fidelity 0 with the component loss")
    use_amp: bool = option(
        False, "mixed precision (bf16 where supported, else fp16 with a grad scaler)"
    )
    clip_grad: bool = option(False, "clip the gradient norm at --max-grad-norm")
    max_grad_norm: float = option(1000.0, "gradient norm clipped at with --clip-grad")
    scale_grad: bool = option(False, "use a gradient scaler (implied by fp16 AMP)")
    init_scale: float = option(2.0**16, "initial gradient scale")
    stop_patience: int = option(5, "epochs without improvement before the LR drops (a plateau)")
    max_plateaus: int = option(5, "plateaus before training stops")
    min_delta: float = option(0.01, "validation-loss improvement that counts")
    seed: int = option(0, "seed of the chunks drawn and of the weights")

    def validate(self) -> OptimConfig:
        _positive(self, "max_epochs", "lr", "lr_lstm", "max_grad_norm", "init_scale")
        require(self.max_minutes is None or self.max_minutes > 0, "max_minutes", "must be positive")
        _not_negative(self, "stop_patience", "max_plateaus", "min_delta", "seed")
        self.criterion = criterion_name(self.criterion)
        check_reduction(self.reduction)
        check_construction_loss(self.construction_loss)
        check_weights(self.alpha, self.beta, self.fidelity)
        if self.criterion == "component":
            check_component_weights(self.alpha, self.beta, self.fidelity, self.allow_no_fidelity)
        check_best_perm(self.best_perm, self.criterion)
        return self


@dataclass
class LoggingConfig:
    """What training shows: TensorBoard, images, the progress line."""

    tensorboard: bool = option(False, "write TensorBoard logs to the session folder")
    view_iter: bool = option(False, "TensorBoard: the loss of every iteration")
    view_epoch: bool = option(False, "TensorBoard: the losses and SI-SDR of every epoch")
    view_weights: bool = option(False, "TensorBoard: weight histograms")
    view_grad: bool = option(False, "TensorBoard: gradient histograms")
    view_norm: bool = option(False, "TensorBoard: weight and gradient norms")
    play_estimate: bool = option(False, "TensorBoard: the estimate's audio")
    play_residual: bool = option(False, "TensorBoard: the residual's audio")
    view_spec: bool = option(False, "TensorBoard: spectrogram images")
    view_wav: bool = option(False, "TensorBoard: waveform images", aliases=["view_wave"])
    image_freq: int = option(5, "epochs between spectrogram/waveform images")
    silent: bool = option(False, "suppress checkpoint logging (the per-epoch checkpoint line)")
    progress_interval: float = option(30.0, "seconds between progress lines within an epoch")

    def validate(self) -> LoggingConfig:
        _positive(self, "image_freq", "progress_interval")
        return self


_WORKERS = {"flag": "workers", "parse": parse_workers}


@dataclass
class ClusterConfig:
    """The Ray Train workers, their resources, failures and checkpoints."""

    workers_min: int = option(1, "training workers: N, or MIN:MAX to train elastically", **_WORKERS)
    workers_max: int = option(1, **_WORKERS)
    gpus_per_worker: float = option(0.0, "GPUs per training worker (0: CPU with gloo)")
    cpus_per_worker: float = option(1.0, "CPUs per training worker")
    max_failures: int = option(0, "worker/node failures to recover from before giving up")
    keep_checkpoints: int = option(3, "checkpoints kept (the best by validation loss)")
    storage: str | None = option(None, "where checkpoints go (default: the session folder)")
    skip_memory_check: bool = option(
        False, "train even where a CPU worker's estimated peak memory exceeds its share"
    )

    def validate(self) -> ClusterConfig:
        _not_negative(self, "max_failures", "gpus_per_worker")
        require(
            1 <= self.workers_min <= self.workers_max,
            "workers",
            "must be N or MIN:MAX with 1 <= MIN <= MAX",
        )
        require(self.cpus_per_worker > 0, "cpus_per_worker", "must be positive")
        require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1")
        return self


@dataclass
class TrainerConfig:
    """How to train (``trainer.json``): the seeds' ``train`` flags plus the cluster and data
    knobs, in sections; JSON, flags and `replace` name the fields flat (``lr``, not
    ``optim.lr``)."""

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def validate(self) -> TrainerConfig:
        for section in (self.data, self.optim, self.logging, self.cluster):
            section.validate()
        return self


def default_model_config(**overrides: Any) -> ModelConfig:
    return from_dict(ModelConfig, overrides)


# ----------------------------------------------------------------------------------------------
# The other commands: `auralflow test` and `auralflow tune`


@dataclass
class EvalConfig:
    """One ``auralflow test``: separate and score the test split (see `auralflow_dist.evaluate`)."""

    session: str = option(
        help="session folder, model directory or a name in the model index; for every stem "
        "at once, a folder of one per target or comma-separated ones",
        positional=True,
    )
    dataset: str = option(help="dataset root or prepared manifest", positional=True)
    save: str | None = option(None, "metrics CSV URL (default: SESSION/eval.csv)")
    workers: int = option(2, "Ray actors separating tracks")
    gpus_per_worker: float = option(0.0, "GPUs per actor")
    bsseval: bool = option(
        False, "add museval's BSSEval v4 SDR (1 s frames, median over frames)", switch=True
    )
    padding: int = option(DEFAULT_PADDING, "overlap between windows (samples)")
    batch_size: int = option(DEFAULT_BATCH_SIZE, "windows per forward pass")
    use_amp: bool = option(
        False,
        "mixed precision: bf16 where the device has it, else fp16 (the LSTM layers stay "
        "float32 on CPUs)",
        switch=True,
    )
    max_tracks: int | None = option(None, "score the first MAX_TRACKS test tracks (default: all)")
    wiener: int = option(
        0,
        "multichannel Wiener filter over all targets: EM iterations (0: each target's own "
        "estimate, no filter)",
    )
    softmask: bool = option(
        False, "start the Wiener filter from ratio masks of the estimates", switch=True
    )
    residual: bool = option(
        False, "with --wiener: the mixture minus the targets as one more source", switch=True
    )
    model_index: str | None = option(
        None, "model index (JSON, any URL) that names models (default: $AURALFLOW_MODEL_INDEX)"
    )

    @property
    def wiener_filter(self) -> WienerConfig:
        return WienerConfig(self.wiener, self.softmask, self.residual)

    @property
    def csv_url(self) -> str:
        from auralflow_dist import storage  # fsspec: not needed to build the CLI's parser

        return self.save or storage.join(self.session, "eval.csv")

    def validate(self) -> EvalConfig:
        for name in ("session", "dataset"):
            require(bool(getattr(self, name)), name, "must not be empty")
        for name in ("workers", "batch_size"):
            require(getattr(self, name) >= 1, name, "must be at least 1")
        _not_negative(self, "gpus_per_worker", "padding", "wiener")
        require(self.max_tracks is None or self.max_tracks >= 1, "max_tracks", "must be at least 1")
        return self


@dataclass
class SweepConfig:
    """One ``auralflow tune`` (see `auralflow_dist.tune.sweep`)."""

    sweep_url: str = option(
        help="sweep folder (local path or URL): trials/, results.csv, best/",
        positional=True,
        metavar="sweep",
    )
    dataset_url: str = option(
        help="dataset root (MUSDB18-HQ layout) or a prepared manifest",
        positional=True,
        metavar="dataset",
    )
    space: str | None = option(
        None, "search space file (.json/.yaml); a resumed sweep reuses its own"
    )
    num_samples: int = option(4, "samples drawn from the space; grid entries multiply them")
    scheduler: str = option(
        "asha",
        "asha: stop weak trials early; pbt: population based training; fifo: none",
        choices=SCHEDULERS,
    )
    search: str = option(
        "random", "random sampling, grid (choices become grid axes) or optuna", choices=SEARCHES
    )
    metric: str = option("val_si_sdr", "what the sweep optimises", choices=tuple(METRICS))
    mode: str | None = option(
        None, "max or min (default: the metric's better direction)", choices=("max", "min")
    )
    max_concurrent: int = option(0, "trials at once; 0: as many as the cluster fits")
    workers_per_trial: int = option(1, "Ray Train workers per trial")
    gpus_per_worker: float = option(0.0, "GPUs per training worker (0: CPU)")
    max_epochs: int | None = option(None, "epochs per trial (default: the base trainer.json's)")
    grace_period: int = option(1, "asha: epochs every trial runs before it can be stopped")
    perturbation_interval: int = option(1, "pbt: epochs between exploit/explore steps")
    seed: int = option(0, "seed of the search")
    base: str | None = option(
        None,
        "session whose model.json/trainer.json the trials start from "
        "(default: the sweep folder's own, else the defaults)",
    )
    model_type: str | None = option(None, "override the base model's type", choices=MODEL_TYPES)
    resume: bool = option(
        False, "continue an interrupted sweep; finished trials are kept", switch=True
    )
    address: str | None = option(None, "Ray cluster address (default: local Ray)")

    def validate(self) -> SweepConfig:
        require(bool(self.sweep_url), "sweep_url", "must not be empty")
        require(bool(self.dataset_url), "dataset_url", "must not be empty")
        require(
            self.scheduler in SCHEDULERS,
            "scheduler",
            f"unknown scheduler {self.scheduler!r} (choose from {', '.join(SCHEDULERS)})",
        )
        require(
            self.search in SEARCHES,
            "search",
            f"unknown search {self.search!r} (choose from {', '.join(SEARCHES)})",
        )
        require(
            self.metric in METRICS,
            "metric",
            f"unknown metric {self.metric!r} (choose from {', '.join(METRICS)})",
        )
        if self.mode is None:
            self.mode = METRICS[self.metric]
        require(
            self.mode == METRICS[self.metric],
            "mode",
            f"{self.metric} is better when {'higher' if METRICS[self.metric] == 'max' else 'lower'}:"
            f" use {METRICS[self.metric]}",
        )
        for name in ("num_samples", "workers_per_trial", "grace_period", "perturbation_interval"):
            require(getattr(self, name) >= 1, name, "must be at least 1")
        require(self.max_concurrent >= 0, "max_concurrent", "must not be negative (0: auto)")
        require(self.gpus_per_worker >= 0, "gpus_per_worker", "must not be negative")
        require(self.max_epochs is None or self.max_epochs >= 1, "max_epochs", "must be at least 1")
        require(self.seed >= 0, "seed", "must not be negative")
        require(
            self.model_type is None or self.model_type in MODEL_TYPES,
            "model_type",
            f"unknown model {self.model_type!r} (choose from {', '.join(MODEL_TYPES)})",
        )
        if self.scheduler == "pbt" and self.search == "optuna":
            raise ConfigError(
                "search",
                "optuna cannot steer a pbt sweep (PBT rewrites trial "
                "configs as it goes): use random or grid",
            )
        return self

    @property
    def reserved_cpus(self) -> float:
        """CPUs a local Ray must announce for the trials to start (one per worker)."""
        return max(1, self.max_concurrent) * self.workers_per_trial


__all__ = [
    "CRITERIA",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PADDING",
    "MASK_ACTIVATIONS",
    "MODEL_TYPES",
    "MUSDB_TARGETS",
    "ClusterConfig",
    "DataConfig",
    "EvalConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "SweepConfig",
    "TrainerConfig",
    "coerce",
    "default_model_config",
    "field",
    "from_dict",
    "from_json",
    "leaves",
    "option",
    "replace",
    "require",
    "to_dict",
    "to_json",
]
