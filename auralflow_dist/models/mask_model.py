"""``SpectrogramMaskModel``: the seeds' ``SeparationModel`` interface, as a thin facade.

Inference lives in the stateless ``Separator`` (network + STFT) and training in
``train.optimization.TrainingState`` (loss, optimizer, schedule, grad scaler, early stopping);
the checkpoint files are ``session``'s. What this class adds is the seeds' batch-at-a-time
calling convention (``set_data``, ``forward``, ``compute_loss``, ``backward``, ...), which keeps
the current batch on the object: one thread trains it. Separation goes straight to the separator,
so threads may share ``separate``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from auralflow_dist import session, storage
from auralflow_dist.config import (
    ModelConfig,
    TrainerConfig,
    from_dict,
)
from auralflow_dist.losses import LossInputs
from auralflow_dist.models import registry
from auralflow_dist.models.separator import Separator, default_device, to_float_audio
from auralflow_dist.train.optimization import TrainingState


def load_config(path: str) -> dict[str, Any]:
    """The model config of a ``.json`` file or of a folder's ``model.json``, checked, as a dict.

    The seeds' ``auralflow.utils.load_config``: the dict goes straight into
    ``SpectrogramMaskModel(config)``.
    """
    return dataclasses.asdict(session.read_model_config(path))


class SpectrogramMaskModel:
    """Deep mask estimation in the spectrogram domain (the seeds' ``SeparationModel``).

    ``config`` is a ``ModelConfig`` or the dict of a ``model.json``; with ``trainer`` the model
    can also train. ``checkpoint_dir`` is where the seeds' ``save(global_step)`` writes
    ``checkpoint_<step>/`` folders (an explicit ``directory=`` overrides it).
    """

    def __init__(
        self,
        config: ModelConfig | dict[str, Any],
        trainer: TrainerConfig | None = None,
        device: str | torch.device | None = None,
        network: nn.Module | None = None,
        checkpoint_dir: str | None = None,
    ) -> None:
        self.config = config if isinstance(config, ModelConfig) else from_dict(ModelConfig, config)
        self.trainer = trainer
        dev = torch.device(device) if device is not None else default_device()
        self.separator = Separator(
            self.config, network, dev, use_amp=bool(trainer and trainer.optim.use_amp)
        )
        self.device, self.stft = self.separator.device, self.separator.stft
        self.training = (
            None
            if trainer is None
            else TrainingState(
                self.model, self.config.model_type, trainer.optim, dev, self.separator.amp_dtype
            )
        )
        self.checkpoint_dir = checkpoint_dir
        self.mixture = self.target = None
        self.mix_spec = self.mask = self.estimate_spec = self.estimate_audio = None
        self.mu = self.log_var = None
        self.batch_loss: torch.Tensor | None = None

    @classmethod
    def from_checkpoint(
        cls,
        directory: str,
        device: str | torch.device | None = None,
        trainer: TrainerConfig | None = None,
    ) -> SpectrogramMaskModel:
        """An evaluation-mode model from a checkpoint or session folder (its ``best/`` if any)."""
        separator = Separator.from_checkpoint(directory, device)
        model = cls(separator.config, trainer, separator.device, separator.network)
        model.eval()
        return model

    # The network under the seeds' name; replacing it replaces what separates.
    @property
    def model(self) -> nn.Module:
        return self.separator.network

    @model.setter
    def model(self, network: nn.Module) -> None:
        self.separator.network = network

    @property
    def use_amp(self) -> bool:
        return self.separator.use_amp

    def _state(self) -> TrainingState:
        if self.training is None:
            raise RuntimeError("this model was built without a TrainerConfig: it cannot train")
        return self.training

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._state().optimizer

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
        return self._state().scheduler

    @property
    def grad_scaler(self) -> torch.amp.GradScaler:
        return self._state().grad_scaler

    @property
    def early_stopping(self) -> Any:
        return self._state().early_stopping

    # -- the SeparationModel interface ---------------------------------------------------------

    def set_data(self, mixture: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Mixture and target waveforms, (batch, channels, samples), moved to the model's device."""
        self.mixture = to_float_audio(mixture).to(self.device, non_blocking=True)
        self.target = (
            None if target is None else to_float_audio(target).to(self.device, non_blocking=True)
        )

    def forward(self) -> None:
        """Estimate the target: mask the mixture magnitude, keep the mixture phase."""
        self.mix_spec = self.stft(self.mixture)
        mix_mag = self.mix_spec.abs()
        self.mask, self.mu, self.log_var = self.separator.mask(mix_mag, return_latent=True)
        self.estimate_spec = self.mask * mix_mag
        self.estimate_audio = None

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
        criterion = self._state().criterion
        needs_audio = getattr(criterion, "needs_audio", False)
        inputs = LossInputs(
            est_spec=self.estimate_spec,
            target_spec=self.stft(self.target).abs(),
            mix_spec=self.mix_spec.abs(),
            mask=self.mask,
            est_audio=self.estimate() if needs_audio else None,
            target_audio=self.target if needs_audio else None,
            mix_audio=self.mixture,
            mu=self.mu,
            log_var=self.log_var,
        )
        self.batch_loss = criterion(inputs)
        return float(self.batch_loss.detach())

    def backward(self) -> None:
        self._state().backward(self.batch_loss)

    def optimizer_step(
        self, inspect: Callable[[nn.Module], None] | None = None, want_norm: bool = False
    ) -> float | None:
        """Clip (after unscaling), step, zero grads. Returns the pre-clip gradient norm."""
        return self._state().optimizer_step(inspect, want_norm)

    def scheduler_step(self, val_loss: float) -> bool:
        """Reduce the LR on plateau; return whether training should stop."""
        return self._state().scheduler_step(val_loss)

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def test(self) -> None:
        """Forward in evaluation mode without building a graph."""
        self.eval()
        with torch.inference_mode():
            self.forward()

    def separate(self, audio: torch.Tensor | np.ndarray, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The target of audio of any length, same shape and rate (``Separator.separate``)."""
        return self.separator.separate(audio, *args, **kwargs)

    # -- checkpoints (the seeds' save/load by global step) ---------------------------------------

    def _dir(self, global_step: int, directory: str | None) -> str:
        if directory is not None:
            return directory
        if self.checkpoint_dir is None:
            raise ValueError("no checkpoint_dir set and no directory given")
        return storage.join(self.checkpoint_dir, f"checkpoint_{global_step:06d}")

    def save_model(self, global_step: int, directory: str | None = None) -> None:
        session.save_network(self._dir(global_step, directory), self.config, self.model)

    def load_model(self, global_step: int, directory: str | None = None) -> None:
        state = session.load_tensors(self._dir(global_step, directory), session.WEIGHTS)
        registry.unwrap(self.model).load_state_dict(state, strict=True)

    def save_optim(self, global_step: int, directory: str | None = None) -> None:
        folder = self._dir(global_step, directory)
        session.save_tensors(folder, session.OPTIMIZER, self.optimizer.state_dict())

    def load_optim(self, global_step: int, directory: str | None = None) -> None:
        folder = self._dir(global_step, directory)
        self.optimizer.load_state_dict(session.load_tensors(folder, session.OPTIMIZER))

    def save_scheduler(self, global_step: int, directory: str | None = None) -> None:
        folder = self._dir(global_step, directory)
        session.save_tensors(folder, session.SCHEDULER, self._state().scheduler_state())

    def load_scheduler(self, global_step: int, directory: str | None = None) -> None:
        folder = self._dir(global_step, directory)
        self._state().load_scheduler_state(session.load_tensors(folder, session.SCHEDULER))

    def save_grad_scaler(self, global_step: int, directory: str | None = None) -> None:
        folder = self._dir(global_step, directory)
        session.save_tensors(folder, session.GRAD_SCALER, self.grad_scaler.state_dict())

    def load_grad_scaler(self, global_step: int, directory: str | None = None) -> None:
        state = session.load_tensors(self._dir(global_step, directory), session.GRAD_SCALER)
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
        wanted = {
            "model": model,
            "optim": optim,
            "scheduler": scheduler,
            "grad_scaler": grad_scaler,
        }
        self._each("save", wanted, global_step, directory)

    def load(
        self,
        global_step: int,
        model: bool = True,
        optim: bool = True,
        scheduler: bool = True,
        grad_scaler: bool = True,
        directory: str | None = None,
    ) -> None:
        wanted = {
            "model": model,
            "optim": optim,
            "scheduler": scheduler,
            "grad_scaler": grad_scaler,
        }
        self._each("load", wanted, global_step, directory)

    def _each(
        self, verb: str, wanted: dict[str, bool], global_step: int, directory: str | None
    ) -> None:
        """``save_model``, ``save_optim``, ... (or ``load_*``) for each part asked for."""
        for part, on in wanted.items():
            if on:
                getattr(self, f"{verb}_{part}")(global_step, directory)
