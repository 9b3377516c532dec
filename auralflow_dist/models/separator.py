"""``Separator``: a mask network and its STFT, for estimates and separations only.

It keeps nothing between calls, so one separator can serve many threads at once (a separation
actor working on several files) and the same object serves evaluation, the bulk job and the
seeds' ``SpectrogramMaskModel.separate``. The STFT runs here, on the separator's device, so data
workers only ever move small waveform arrays: the network sees the mixture magnitude and returns
a mask; the estimate is the masked magnitude with the mixture's phase, inverted back to audio.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from auralflow_dist import session
from auralflow_dist.audio.engine import SeparationEngine
from auralflow_dist.audio.stft import STFT
from auralflow_dist.config import DEFAULT_BATCH_SIZE, DEFAULT_PADDING, ModelConfig
from auralflow_dist.errors import ConfigError
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

    def estimate(self, windows: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
        """Target audio of mixture windows ``(count, channels, samples)``, ``batch_size`` at a time."""
        if self.network.training:
            self.network.eval()
        out = []
        with torch.inference_mode():
            for batch in windows.split(batch_size):
                x = to_float_audio(batch).to(self.device, non_blocking=True)
                spec = self.stft(x)
                out.append(self.stft.inverse(spec * self.mask(spec.abs())[0], length=x.shape[-1]))
        return torch.cat(out)

    def engine(
        self,
        sample_rate: int,
        channels: int,
        output_rate: int | None = None,
        padding: int = DEFAULT_PADDING,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> SeparationEngine:
        """A streaming separation of one file of this rate and channel count."""
        self._check_padding(padding)
        return SeparationEngine(
            lambda windows: self.estimate(windows, batch_size),
            model_rate=self.config.sample_rate,
            model_channels=self.config.num_channels,
            window=self.config.num_samples,
            sample_rate=sample_rate,
            channels=channels,
            padding=padding,
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
    ) -> torch.Tensor:
        """The target of audio of any length, on the CPU, with the input's shape and rate.

        ``audio`` is (samples,), (channels, samples) or (batch, channels, samples), integer PCM
        or float; ``duration`` (seconds) trims it first. Long audio is cut into network-sized
        windows overlapping by ``padding`` samples and blended back without seams.
        """
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
        if length == 0:
            return x.reshape(*shape[:-1], 0)
        out = [
            self.engine(rate, x.shape[1], padding=padding, batch_size=batch_size).run(item)[0]
            for item in x
        ]
        return torch.stack(out).reshape(*shape[:-1], length)

    def _check_padding(self, padding: int) -> None:
        window = self.config.num_samples
        if not 0 <= padding < window:
            raise ConfigError("padding", f"must be in 0..{window - 1} samples (window is {window})")
