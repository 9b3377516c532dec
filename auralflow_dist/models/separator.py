"""``Separator``: a mask network and its STFT; ``Bundle``: one separator per target, together.

Neither keeps anything between calls, so one object can serve many threads at once (a separation
actor working on several files) and the same object serves evaluation, the bulk job and the
seeds' ``SpectrogramMaskModel.separate``. The STFT runs here, on the separator's device, so data
workers only ever move small waveform arrays: the networks see the mixture magnitude and return
masks; each target's estimate is its masked magnitude with the mixture's phase, or, with a Wiener
filter, the mixture split among all targets at once (`audio.wiener`), inverted back to audio.
A single separator is a bundle of one: every path goes through `Bundle.estimate`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from auralflow_dist import session
from auralflow_dist.audio.engine import Estimator, SeparationEngine
from auralflow_dist.audio.stft import STFT
from auralflow_dist.audio.wiener import wiener
from auralflow_dist.config import DEFAULT_BATCH_SIZE, DEFAULT_PADDING, ModelConfig, WienerConfig
from auralflow_dist.errors import CheckpointError, ConfigError
from auralflow_dist.models import registry


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware has it (no loss scaling needed), else fp16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def to_float_audio(audio: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Integer PCM -> float32 in [-1, 1]; float input is kept as is (never rescaled)."""
    if isinstance(audio, np.ndarray):
        if audio.dtype == np.uint8:
            return torch.from_numpy((audio.astype(np.float32) - 128.0) / 128.0)
        if np.issubdtype(audio.dtype, np.integer):
            scale = float(-np.iinfo(audio.dtype).min)
            return torch.from_numpy(audio.astype(np.float32) / scale)
        return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    if audio.dtype == torch.uint8:
        return (audio.float() - 128.0) / 128.0
    if not audio.is_floating_point():
        return audio.float() / float(-torch.iinfo(audio.dtype).min)
    return audio.float()


class Separator:
    """Mixture waveforms in, target waveforms out, through one mask network."""

    def __init__(
        self,
        config: ModelConfig,
        network: nn.Module | None = None,
        device: str | torch.device | None = None,
        use_amp: bool = False,
    ) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else default_device()
        self.network: nn.Module = (network or registry.build_network(config)).to(self.device)
        self.stft = STFT(config.num_fft, config.window_size, config.hop_length)
        self.use_amp = use_amp
        self.amp_dtype = amp_dtype(self.device)

    @classmethod
    def from_checkpoint(
        cls, url: str, device: str | torch.device | None = None, use_amp: bool = False
    ) -> Separator:
        """The separator of a checkpoint or session folder (its ``best/`` if it has one)."""
        dev = torch.device(device) if device is not None else default_device()
        config, network = session.load_network(session.resolve_model_dir(url), dev)
        return cls(config, network, dev, use_amp)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def mask(
        self, mix_mag: torch.Tensor, return_latent: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The network's mask (float32) of a magnitude, with the VAE's latent when asked."""
        mu = log_var = None
        with self.autocast():
            if return_latent and self.config.model_type == "SpectrogramNetVAE":
                mask, mu, log_var = self.network(mix_mag, return_latent=True)
            else:
                mask = self.network(mix_mag)
        return mask.float(), mu, log_var

    def masks(self, mix_mag: torch.Tensor) -> torch.Tensor:
        """Masks of magnitudes ``(count, channels, bins, frames)`` of any channel count.

        The channel rules: a mono network takes every channel on its own; a stereo one takes
        stereo as it is, and any other count as each channel duplicated to stereo, its two masks
        averaged (what averaging the two separated channels would give: they share a phase).
        """
        count, channels = mix_mag.shape[:2]
        if self.config.num_channels == 2 and channels == 2:
            return self.mask(mix_mag)[0]
        single = mix_mag.reshape(count * channels, 1, *mix_mag.shape[2:])
        if self.config.num_channels == 1:
            return self.mask(single)[0].reshape(mix_mag.shape)
        return self.mask(single.expand(-1, 2, -1, -1))[0].mean(dim=1).reshape(mix_mag.shape)

    def estimate(self, windows: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
        """Target audio of mixture windows ``(count, channels, samples)``, ``batch_size`` at a time."""
        return Bundle([self]).estimate(windows, batch_size)[:, 0]

    def engine(
        self,
        sample_rate: int,
        channels: int,
        output_rate: int | None = None,
        padding: int = DEFAULT_PADDING,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> SeparationEngine:
        """A streaming separation of one file of this rate and channel count."""
        return Bundle([self]).engine(sample_rate, channels, output_rate, padding, batch_size)

    def separate(
        self,
        audio: torch.Tensor | np.ndarray,
        sample_rate: int | None = None,
        duration: float | None = None,
        padding: int = DEFAULT_PADDING,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> torch.Tensor:
        """The target of audio of any length, on the CPU, with the input's shape and rate.

        ``audio`` is (samples,), (channels, samples) or (batch, channels, samples), integer PCM
        or float; ``duration`` (seconds) trims it first. Long audio is cut into network-sized
        windows overlapping by ``padding`` samples and blended back without seams.
        """
        bundle = Bundle([self])
        return bundle.separate(audio, sample_rate, duration, padding, batch_size)[
            self.config.target
        ]


# The STFT and window every member of a bundle must share: they mask one STFT of one window.
_SHARED = ("sample_rate", "num_fft", "window_size", "hop_length", "sample_length")


def check_bundle(configs: Sequence[ModelConfig], wiener: WienerConfig | None = None) -> None:
    """Refuse models that cannot separate in one pass, and a filter with one source only."""
    if not configs:
        raise ConfigError("model", "a bundle needs at least one model")
    first = configs[0]
    for other in configs[1:]:
        differ = [f for f in _SHARED if getattr(other, f) != getattr(first, f)]
        if differ:
            raise CheckpointError(
                f"the {other.target} model differs from the {first.target} one in "
                f"{', '.join(differ)}: a bundle's models must share their STFT and window"
            )
    names = [c.target for c in configs]
    if len(set(names)) != len(names):
        raise CheckpointError(f"a bundle holds one model per target, got {', '.join(names)}")
    if wiener is not None and wiener.active and len(names) == 1 and not wiener.residual:
        raise ConfigError(
            "wiener",
            f"filters several sources; the bundle has only {names[0]}: add --residual "
            "(the mixture minus the target as a second source) or more targets",
        )


class Bundle:
    """Separators of different targets over one STFT of each window: all stems in one pass."""

    def __init__(self, separators: Sequence[Separator], wiener: WienerConfig | None = None) -> None:
        check_bundle([s.config for s in separators], wiener)
        self.separators = list(separators)
        self.targets = [s.config.target for s in separators]
        self.wiener = wiener or WienerConfig()
        self.config = separators[0].config
        self.device = separators[0].device
        self.stft = separators[0].stft

    @classmethod
    def from_checkpoints(
        cls,
        url: str,
        device: str | torch.device | None = None,
        use_amp: bool = False,
        wiener: WienerConfig | None = None,
    ) -> Bundle:
        """The bundle of ``url``: a model or session, a folder of one per target, or several
        comma-separated (`session.bundle_dirs`)."""
        members = [Separator.from_checkpoint(d, device, use_amp) for d in session.bundle_dirs(url)]
        return cls(sorted(members, key=lambda s: s.config.target), wiener)

    def estimate(self, windows: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
        """Every target's audio ``(count, targets, channels, samples)`` of mixture windows
        ``(count, channels, samples)``, about ``batch_size`` network inputs per call."""
        for separator in self.separators:
            if separator.network.training:
                separator.network.eval()
        per_call = self.windows_per_pass(windows.shape[1], batch_size)
        out = []
        with torch.inference_mode():
            for batch in windows.split(per_call):
                x = to_float_audio(batch).to(self.device, non_blocking=True)
                spec = self.stft(x)  # (count, channels, bins, frames)
                mag = spec.abs()
                masks = torch.stack([s.masks(mag) for s in self.separators], dim=1)
                sources = self._filter(masks, mag, spec)
                length = x.shape[-1]
                flat = self.stft.inverse(sources.flatten(0, 1), length=length)
                out.append(flat.reshape(*sources.shape[:3], length))
        return torch.cat(out)

    def windows_per_pass(self, channels: int, batch_size: int) -> int:
        """Windows of ``channels`` in one forward pass of ``batch_size`` network inputs: each
        channel of a window is one input, but a stereo network's stereo pair is one."""
        inputs = max(
            1 if s.config.num_channels == 2 and channels == 2 else channels for s in self.separators
        )
        return max(1, batch_size // inputs)

    def _filter(self, masks: torch.Tensor, mag: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        """Complex target STFTs ``(count, targets, channels, bins, frames)`` from the masks."""
        if not self.wiener.active:
            return masks * spec[:, None]
        w = self.wiener
        filtered = [
            wiener(m * a, x, w.iterations, softmask=w.softmask, residual=w.residual)
            for m, a, x in zip(masks, mag, spec, strict=True)
        ]
        return torch.stack(filtered)[:, : len(self.targets)]

    def engine(
        self,
        sample_rate: int,
        channels: int,
        output_rate: int | None = None,
        padding: int = DEFAULT_PADDING,
        batch_size: int = DEFAULT_BATCH_SIZE,
        estimate: Estimator | None = None,
    ) -> SeparationEngine:
        """A streaming separation of one file of this rate and channel count into every target;
        ``estimate`` replaces the bundle's own (windows of several files in one forward pass)."""
        self._check_padding(padding)
        return SeparationEngine(
            estimate or functools.partial(self.estimate, batch_size=batch_size),
            model_rate=self.config.sample_rate,
            window=self.config.num_samples,
            sample_rate=sample_rate,
            channels=channels,
            padding=padding,
            targets=len(self.targets),
            output_rate=output_rate,
            device=self.device,
        )

    def separate(
        self,
        audio: torch.Tensor | np.ndarray,
        sample_rate: int | None = None,
        duration: float | None = None,
        padding: int = DEFAULT_PADDING,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> dict[str, torch.Tensor]:
        """Every target (and ``residual``) of audio of any length: `Separator.separate`'s shapes."""
        x = to_float_audio(audio)
        shape = x.shape
        if x.dim() == 1:
            x = x[None, None]
        elif x.dim() == 2:
            x = x[None]
        elif x.dim() != 3:
            raise ValueError(f"audio must be 1-, 2- or 3-D, got shape {tuple(shape)}")
        rate = sample_rate or self.config.sample_rate
        if duration is not None:
            x = x[..., : round(duration * rate)]
        length = x.shape[-1]
        self._check_padding(padding)
        names = [*self.targets, "residual"]
        if length == 0:
            return {name: x.reshape(*shape[:-1], 0) for name in names}
        stems = torch.stack(
            [
                self.engine(rate, x.shape[1], padding=padding, batch_size=batch_size).run(item)
                for item in x
            ],
            dim=1,
        )  # (targets + 1, batch, channels, samples)
        return {
            name: stem.reshape(*shape[:-1], length) for name, stem in zip(names, stems, strict=True)
        }

    def _check_padding(self, padding: int) -> None:
        window = self.config.num_samples
        if not 0 <= padding < window:
            raise ConfigError("padding", f"must be in 0..{window - 1} samples (window is {window})")
