"""``SpectrogramMaskModel``: the seeds' ``SeparationModel`` interface around a mask network.

Waveforms come in; the STFT runs here, on the model's device (GPU when there is one), so data
workers only ever move small waveform arrays. The network sees the mixture magnitude and returns
a mask; the estimate is the masked mixture spectrogram, i.e. the masked magnitude with the
mixture's phase, inverted back to audio.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from auralflow_dist import storage
from auralflow_dist.audio import resample
from auralflow_dist.audio.stft import STFT
from auralflow_dist.audio.windowing import frame_signal, overlap_add
from auralflow_dist.config import ModelConfig, TrainerConfig
from auralflow_dist.errors import ConfigError
from auralflow_dist.losses import LossInputs, build_criterion
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


@dataclass
class EarlyStopping:
    """Plateau bookkeeping shared by every rank: identical inputs give identical decisions."""

    patience: int
    max_plateaus: int
    min_delta: float
    best: float = float("inf")
    bad_epochs: int = 0
    plateaus: int = 0

    def step(self, val_loss: float) -> tuple[bool, bool]:
        """Returns (improved, stop)."""
        if val_loss < self.best - self.min_delta:
            self.best, self.bad_epochs = val_loss, 0
            return True, False
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.plateaus += 1
            self.bad_epochs = 0
        return False, self.plateaus >= self.max_plateaus

    def state_dict(self) -> dict[str, float | int]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "plateaus": self.plateaus}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.plateaus = int(state["plateaus"])


RECURRENT_BOTTLENECK_MODELS = ("SpectrogramNetLSTM", "SpectrogramNetVAE")


def is_recurrent_param(model_type: str, name: str) -> bool:
    """The U-Nets' LSTM bottleneck (LSTM, its projections, the VAE latent) trains at ``lr_lstm``.

    MaskInference is recurrent through and through, so it trains at ``lr`` as a whole.
    """
    return model_type in RECURRENT_BOTTLENECK_MODELS and name.startswith("bottleneck.")


class SpectrogramMaskModel:
    """Deep mask estimation in the spectrogram domain (the seeds' ``SeparationModel``)."""

    def __init__(
        self,
        config: ModelConfig,
        trainer: TrainerConfig | None = None,
        device: str | torch.device | None = None,
        network: nn.Module | None = None,
        checkpoint_dir: str | None = None,
    ) -> None:
        self.config = config
        self.trainer = trainer
        self.device = torch.device(device) if device is not None else default_device()
        self.model: nn.Module = (network or registry.build_network(config)).to(self.device)
        self.stft = STFT(config.num_fft, config.window_size, config.hop_length)
        self.checkpoint_dir = checkpoint_dir
        self.mixture = self.target = None
        self.mix_spec = self.mask = self.estimate_spec = self.estimate_audio = None
        self.mu = self.log_var = None
        self.batch_loss: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self.early_stopping: EarlyStopping | None = None
        self.use_amp = False
        self.amp_dtype = amp_dtype(self.device)
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=False)
        if trainer is not None:
            self._setup_training(trainer)

    def _setup_training(self, trainer: TrainerConfig) -> None:
        self.criterion = build_criterion(
            trainer.criterion,
            reduction=trainer.reduction,
            alpha=trainer.alpha,
            beta=trainer.beta,
            fidelity=trainer.fidelity,
            construction_loss=trainer.construction_loss,
            best_perm=trainer.best_perm,
            allow_no_fidelity=trainer.allow_no_fidelity,
        )
        if trainer.criterion == "kl_div" and self.config.model_type != "SpectrogramNetVAE":
            raise ConfigError("criterion", "kl_div needs a SpectrogramNetVAE model")
        named = list(registry.unwrap(self.model).named_parameters())
        kind = self.config.model_type
        recurrent = [p for n, p in named if is_recurrent_param(kind, n)]
        others = [p for n, p in named if not is_recurrent_param(kind, n)]
        groups = [{"params": others, "lr": trainer.lr, "name": "main"}]
        if recurrent:
            groups.append({"params": recurrent, "lr": trainer.lr_lstm, "name": "recurrent"})
        self.optimizer = torch.optim.Adam(groups)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            mode="min",
            factor=0.5,
            patience=trainer.stop_patience,
            threshold=trainer.min_delta,
            threshold_mode="abs",
        )
        self.early_stopping = EarlyStopping(
            trainer.stop_patience, trainer.max_plateaus, trainer.min_delta
        )
        self.use_amp = trainer.use_amp
        scale = trainer.scale_grad or (trainer.use_amp and self.amp_dtype == torch.float16)
        self.grad_scaler = torch.amp.GradScaler(
            self.device.type, init_scale=trainer.init_scale, enabled=scale
        )

    # -- the SeparationModel interface ---------------------------------------------------------

    def set_data(self, mixture: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Mixture and target waveforms, (batch, channels, samples), moved to the model's device."""
        self.mixture = to_float_audio(mixture).to(self.device, non_blocking=True)
        self.target = (
            None if target is None else to_float_audio(target).to(self.device, non_blocking=True)
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def forward(self) -> None:
        """Estimate the target: mask the mixture magnitude, keep the mixture phase."""
        self.mix_spec = self.stft(self.mixture)
        mix_mag = self.mix_spec.abs()
        with self.autocast():
            if self._is_vae:
                mask, self.mu, self.log_var = self.model(mix_mag, return_latent=True)
            else:
                mask = self.model(mix_mag)
        self.mask = mask.float()
        self.estimate_spec = self.mask * mix_mag
        self.estimate_audio = None

    def estimate_windows(self, windows: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Target audio of ``windows`` (count, channels, samples), ``batch_size`` at a time.

        Unlike ``set_data``/``forward``, nothing is kept on the model, so threads sharing one
        model (a separation actor working on several files) can call this at once.
        """
        self.eval()
        out = []
        with torch.inference_mode():
            for batch in windows.split(batch_size):
                x = to_float_audio(batch).to(self.device, non_blocking=True)
                spec = self.stft(x)
                with self.autocast():
                    mask = self.model(spec.abs())
                out.append(self.stft.inverse(spec * mask.float(), length=x.shape[-1]))
        return torch.cat(out)

    @property
    def _is_vae(self) -> bool:
        return self.config.model_type == "SpectrogramNetVAE"

    def estimate(self) -> torch.Tensor:
        """The estimate as audio (mixture phase), computed once per forward."""
        if self.estimate_audio is None:
            self.estimate_audio = self.stft.inverse(
                self.mix_spec * self.mask, length=self.mixture.shape[-1]
            )
        return self.estimate_audio

    def compute_loss(self) -> float:
        if self.target is None:
            raise RuntimeError("compute_loss needs set_data(mixture, target)")
        needs_audio = getattr(self.criterion, "needs_audio", False)
        target_spec = self.stft(self.target).abs()
        inputs = LossInputs(
            est_spec=self.estimate_spec,
            target_spec=target_spec,
            mix_spec=self.mix_spec.abs(),
            mask=self.mask,
            est_audio=self.estimate() if needs_audio else None,
            target_audio=self.target if needs_audio else None,
            mix_audio=self.mixture,
            mu=self.mu,
            log_var=self.log_var,
        )
        self.batch_loss = self.criterion(inputs)
        return float(self.batch_loss.detach())

    def backward(self) -> None:
        self.grad_scaler.scale(self.batch_loss).backward()

    def optimizer_step(self) -> float | None:
        """Clip (after unscaling), step, zero grads. Returns the pre-clip gradient norm."""
        norm = None
        if self.trainer.clip_grad:
            self.grad_scaler.unscale_(self.optimizer)
            norm = float(
                nn.utils.clip_grad_norm_(self.model.parameters(), self.trainer.max_grad_norm)
            )
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def scheduler_step(self, val_loss: float) -> bool:
        """Reduce the LR on plateau; return whether training should stop."""
        self.scheduler.step(val_loss)
        _, stop = self.early_stopping.step(val_loss)
        return stop

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def test(self) -> None:
        """Forward in evaluation mode without building a graph."""
        self.eval()
        with torch.inference_mode():
            self.forward()

    # -- separation of audio of any length ----------------------------------------------------

    def separate(
        self,
        audio: torch.Tensor | np.ndarray,
        sample_rate: int | None = None,
        duration: float | None = None,
        padding: int = 200,
        batch_size: int = 8,
    ) -> torch.Tensor:
        """Separate the target from audio of any length; same shape and rate as the input.

        ``audio`` is (samples,), (channels, samples) or (batch, channels, samples), integer PCM
        or float. Long audio is cut into network-sized windows overlapping by ``padding``
        samples, separated in batches and overlap-added with weights that sum to one, so there
        are no seams and the tail is kept. ``duration`` (seconds) trims the input first.
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
        if length == 0:
            return x.reshape(*shape[:-1], 0)
        window = self.config.num_samples
        if not 0 <= padding < window:
            raise ConfigError("padding", f"must be in 0..{window - 1} samples (window is {window})")
        x = x.to(self.device)
        if rate != self.config.sample_rate:
            x = resample(x, rate, self.config.sample_rate)
        out = torch.stack([self._separate_one(item, window, padding, batch_size) for item in x])
        if rate != self.config.sample_rate:
            out = resample(out, self.config.sample_rate, rate)[..., :length]
            out = torch.nn.functional.pad(out, (0, length - out.shape[-1]))
        return out.reshape(*shape[:-1], length).cpu()

    def _separate_one(self, audio: torch.Tensor, window: int, padding: int, batch_size: int):
        """(channels, samples) -> (channels, samples), channels mapped onto the network's."""
        channels = audio.shape[0]
        want = self.config.num_channels
        if want == 1:
            groups = audio[:, None]  # each channel separately: stereo in, stereo out
        elif channels == 2:
            groups = audio[None]
        else:
            groups = audio[:, None].expand(-1, 2, -1)  # duplicated mono through a stereo model
        outs = [self._separate_windows(g, window, padding, batch_size) for g in groups]
        out = (
            torch.cat(outs)
            if want == 1 or channels == 2
            else torch.stack([o.mean(dim=0) for o in outs])
        )
        return out

    def _separate_windows(self, audio: torch.Tensor, window: int, padding: int, batch_size: int):
        frames, _ = frame_signal(audio, window, window - padding)
        estimates = self.estimate_windows(frames, batch_size)
        return overlap_add(estimates, window - padding, audio.shape[-1])

    # -- checkpoints ---------------------------------------------------------------------------

    def _dir(self, global_step: int, directory: str | None) -> str:
        if directory is not None:
            return directory
        if self.checkpoint_dir is None:
            raise ValueError("no checkpoint_dir set and no directory given")
        return storage.join(self.checkpoint_dir, f"checkpoint_{global_step:06d}")

    def _save_state(self, name: str, obj: Any, global_step: int, directory: str | None) -> None:
        url = storage.join(self._dir(global_step, directory), name)
        storage.write_bytes(url, registry.tensor_bytes(obj))

    def _load_state(self, name: str, global_step: int, directory: str | None) -> Any:
        return registry.load_tensors(storage.join(self._dir(global_step, directory), name))

    def save_model(self, global_step: int, directory: str | None = None) -> None:
        registry.save_checkpoint(self._dir(global_step, directory), self.config, self.model)

    def load_model(self, global_step: int, directory: str | None = None) -> None:
        state = self._load_state(registry.WEIGHTS_FILE, global_step, directory)
        registry.unwrap(self.model).load_state_dict(state, strict=True)

    def save_optim(self, global_step: int, directory: str | None = None) -> None:
        self._save_state("optimizer.pt", self.optimizer.state_dict(), global_step, directory)

    def load_optim(self, global_step: int, directory: str | None = None) -> None:
        self.optimizer.load_state_dict(self._load_state("optimizer.pt", global_step, directory))

    def save_scheduler(self, global_step: int, directory: str | None = None) -> None:
        state = {
            "scheduler": self.scheduler.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
        }
        self._save_state("scheduler.pt", state, global_step, directory)

    def load_scheduler(self, global_step: int, directory: str | None = None) -> None:
        state = self._load_state("scheduler.pt", global_step, directory)
        self.scheduler.load_state_dict(state["scheduler"])
        self.early_stopping.load_state_dict(state["early_stopping"])

    def save_grad_scaler(self, global_step: int, directory: str | None = None) -> None:
        self._save_state("grad_scaler.pt", self.grad_scaler.state_dict(), global_step, directory)

    def load_grad_scaler(self, global_step: int, directory: str | None = None) -> None:
        state = self._load_state("grad_scaler.pt", global_step, directory)
        if state:
            self.grad_scaler.load_state_dict(state)

    def save(
        self,
        global_step: int,
        model: bool = True,
        optim: bool = True,
        scheduler: bool = True,
        grad_scaler: bool = True,
        directory: str | None = None,
    ) -> None:
        for wanted, method in (
            (model, self.save_model),
            (optim, self.save_optim),
            (scheduler, self.save_scheduler),
            (grad_scaler, self.save_grad_scaler),
        ):
            if wanted:
                method(global_step, directory)

    def load(
        self,
        global_step: int,
        model: bool = True,
        optim: bool = True,
        scheduler: bool = True,
        grad_scaler: bool = True,
        directory: str | None = None,
    ) -> None:
        for wanted, method in (
            (model, self.load_model),
            (optim, self.load_optim),
            (scheduler, self.load_scheduler),
            (grad_scaler, self.load_grad_scaler),
        ):
            if wanted:
                method(global_step, directory)

    @classmethod
    def from_checkpoint(
        cls,
        directory: str,
        device: str | torch.device | None = None,
        trainer: TrainerConfig | None = None,
    ) -> SpectrogramMaskModel:
        """An evaluation-mode model from a checkpoint or session folder (its ``best/`` if any)."""
        resolved = resolve_model_dir(directory)
        dev = torch.device(device) if device is not None else default_device()
        config, network = registry.load_network(resolved, dev)
        model = cls(config, trainer=trainer, device=dev, network=network)
        model.eval()
        return model


def resolve_model_dir(url: str) -> str:
    """A session folder's exported ``best/`` model if it has one, else ``url`` itself."""
    best = storage.join(url, "best")
    if storage.exists(storage.join(best, registry.WEIGHTS_FILE)):
        return best
    return url
