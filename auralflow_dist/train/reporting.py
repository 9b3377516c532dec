"""Rank 0's view of training: the progress lines, images, loss curve and TensorBoard logs.

Everything lands in the session folder (local or ``s3://``): ``loss_curve.png`` and
``history.csv`` every epoch, ``spectrogram/`` and ``waveform/`` PNGs every ``image_freq`` epochs,
and with ``--tensorboard`` the event files under ``runs/``. These are extras: the loop writes
them after the epoch's checkpoint is reported, and a failure to write them is a warning.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from auralflow_dist import storage, tables, visualize
from auralflow_dist.config import ModelConfig, TrainerConfig
from auralflow_dist.errors import AuralflowError
from auralflow_dist.models import registry
from auralflow_dist.models.mask_model import SpectrogramMaskModel
from auralflow_dist.progress import eta
from auralflow_dist.train.state import LoopState


def tag(model_config: ModelConfig) -> str:
    """What every training line starts with: the target, so that side-by-side runs
    (``train --targets``) tell apart."""
    return f"[train {model_config.target}]"


class EpochProgress:
    """A line every ``interval`` seconds within an epoch, so a 17-minute epoch is not silent.

    Rank 0 sees its own shard: steps are its own, samples/s is its rate times ``world``.
    """

    def __init__(
        self,
        epoch: int,
        max_epochs: int,
        total_steps: int,
        interval: float,
        world: int = 1,
        clock: Callable[[], float] = time.monotonic,
        tag: str = "[train]",
    ) -> None:
        self.tag = tag
        self.epoch, self.max_epochs, self.total = epoch, max_epochs, total_steps
        self.interval, self.world, self.clock = interval, world, clock
        self.start = self.last = clock()
        self.steps = self.samples = 0
        self.loss_sum = 0.0

    def step(self, loss: float, samples: int) -> str | None:
        """Count a step; the progress line when ``interval`` has passed since the last one."""
        self.steps += 1
        self.samples += samples
        self.loss_sum += loss
        now = self.clock()
        if now - self.last < self.interval:
            return None
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        return (
            f"{self.tag} epoch {self.epoch:>3}/{self.max_epochs}  step {self.steps}/{self.total}  "
            f"loss {self.loss_sum / self.steps:.4f}  "
            f"{self.samples * self.world / elapsed:.1f} samples/s  ETA {eta(self.steps, self.total, elapsed)}"
        )


class EpochReporter:
    def __init__(
        self, session: str, model_config: ModelConfig, trainer: TrainerConfig, world: int = 1
    ) -> None:
        self.session = session
        self.model_config = model_config
        self.trainer = trainer
        self.world = world
        self._warned_silent = False  # the silent-validation warning is printed once per run
        self.progress: EpochProgress | None = None
        self.writer = None
        self._tb_dir: str | None = None
        if trainer.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb_dir = tempfile.mkdtemp(prefix="auralflow-tb-")
            self.writer = SummaryWriter(self._tb_dir)

    def start_epoch(self, epoch: int, total_steps: int) -> None:
        t = self.trainer
        self.progress = EpochProgress(
            epoch,
            t.optim.max_epochs,
            total_steps,
            t.logging.progress_interval,
            self.world,
            tag=tag(self.model_config),
        )

    @property
    def wants_norm(self) -> bool:
        """Whether each step's total gradient norm is logged (``--view-norm``)."""
        return self.writer is not None and self.trainer.logging.view_norm

    def gradient_inspector(self, first: bool) -> Callable[[nn.Module], None] | None:
        """``--view-grad``'s histograms and ``--view-norm``'s per-layer gradient norms, of the
        epoch's first step: the optimizer step clears the gradients, so they are read there."""
        t = self.trainer.logging
        if self.writer is None or not first or not (t.view_grad or t.view_norm):
            return None
        writer, epoch = self.writer, self.progress.epoch if self.progress else 0

        def inspect(network: nn.Module) -> None:
            for name, p in registry.unwrap(network).named_parameters():
                if p.grad is None:
                    continue
                grad = p.grad.detach().float()
                if t.view_grad:
                    writer.add_histogram(f"grads/{name}", grad.cpu(), epoch)
                if t.view_norm:
                    writer.add_scalar(f"grad_norm/{name}", float(grad.norm()), epoch)

        return inspect

    def step(self, global_step: int, loss: float, grad_norm: float | None, samples: int) -> None:
        line = self.progress.step(loss, samples) if self.progress else None
        if line:
            print(line, flush=True)
        if self.writer is None:
            return
        if self.trainer.logging.view_iter:
            self.writer.add_scalar("loss/iteration", loss, global_step)
        if self.trainer.logging.view_norm and grad_norm is not None:
            self.writer.add_scalar("grad_norm/total", grad_norm, global_step)

    def epoch(
        self,
        loop: LoopState,
        metrics: dict[str, Any],
        model: SpectrogramMaskModel,
        example: tuple | None,
    ) -> None:
        """The epoch line and every extra; one that fails is a warning and skips no other."""
        self._print(metrics)
        if not self._warned_silent and metrics.get("val_silent_share", 0.0) > 0.5:
            self._warned_silent = True
            target = self.model_config.target
            print(
                f"{tag(self.model_config)} warning: {target} is silent in "
                f"{metrics['val_silent_share']:.0%} of the validation chunks (the valid split "
                f"has little or no {target}): the validation loss and SI-SDR, and so the best "
                f"epoch and the schedule, follow near-silence; put tracks with {target} in the "
                "valid split",
                flush=True,
            )
        if not self.trainer.logging.silent:  # the seeds' checkpoint logging
            best = metrics["best_epoch"] == metrics["epoch"]
            print(
                f"{tag(self.model_config)} epoch {metrics['epoch']}: checkpoint saved"
                f"{'; best so far, exported to best/' if best else ''}",
                flush=True,
            )
        epoch = metrics["epoch"]
        image_epoch = epoch % self.trainer.logging.image_freq == 0 or epoch == 1
        _attempt(epoch, "history.csv and loss_curve.png", self._write_history, loop)
        if example is not None and image_epoch:
            _attempt(epoch, "images", self._images, epoch, example)
        if self.writer is not None:
            _attempt(
                epoch,
                "TensorBoard logs",
                self._tensorboard,
                epoch,
                metrics,
                model,
                example,
                image_epoch,
            )

    def _print(self, m: dict[str, Any]) -> None:
        print(
            f"{tag(self.model_config)} epoch {m['epoch']:>3}/{self.trainer.optim.max_epochs}  "
            f"loss {m['train_loss']:.4f}  val {m['val_loss']:.4f}  "
            f"val SI-SDR {m['val_si_sdr']:+.2f} dB (mixture {m['val_si_sdr_mixture']:+.2f})  "
            f"{m['samples_per_s']:.1f} samples/s  data wait {100 * m['data_wait_share']:.0f}%  "
            f"lr {m['lr']:.2e}{_budget(m, self.trainer.optim.max_minutes)}",
            flush=True,
        )

    def _write_history(self, loop: LoopState) -> None:
        tables.write_rows(storage.join(self.session, "history.csv"), loop.history)
        storage.write_bytes(
            storage.join(self.session, "loss_curve.png"),
            visualize.loss_curve(loop.history, title=self.model_config.model_type),
        )

    def _images(self, epoch: int, example: tuple) -> None:
        mixture, target, estimate, mix_mag, est_mag, target_mag = example
        c = self.model_config
        name = f"{c.target}_epoch_{epoch:04d}.png"
        spec_png = visualize.spectrograms(
            {
                "mixture": mix_mag[0].numpy(),
                f"estimate ({c.target})": est_mag[0].numpy(),
                f"true {c.target}": target_mag[0].numpy(),
            },
            c.sample_rate,
            c.hop_length,
            title=f"epoch {epoch}",
        )
        storage.write_bytes(storage.join(self.session, "spectrogram", name), spec_png)
        wave_png = visualize.waveforms(
            {
                "mixture": mixture[0].numpy(),
                "estimate": estimate[0].numpy(),
                "target": target[0].numpy(),
                "residual": (mixture - estimate)[0].numpy(),
            },
            c.sample_rate,
            title=f"epoch {epoch}",
        )
        storage.write_bytes(storage.join(self.session, "waveform", name), wave_png)

    def _tensorboard(
        self,
        epoch: int,
        metrics: dict[str, Any],
        model: SpectrogramMaskModel,
        example: tuple | None,
        image_epoch: bool,
    ) -> None:
        t, w = self.trainer.logging, self.writer
        if t.view_epoch:
            w.add_scalars(
                "loss/epoch",
                {"train": metrics["train_loss"], "validation": metrics["val_loss"]},
                epoch,
            )
            w.add_scalar("val/si_sdr", metrics["val_si_sdr"], epoch)
            w.add_scalar("val/si_sdri", metrics["val_si_sdri"], epoch)
        params = list(registry.unwrap(model.model).named_parameters())  # no DDP "module."
        for name, p in params:
            if t.view_weights:
                w.add_histogram(f"weights/{name}", p.detach().float().cpu(), epoch)
            if t.view_norm:
                w.add_scalar(f"weight_norm/{name}", float(p.detach().norm()), epoch)
        if example is not None and image_epoch:
            mixture, target, estimate, mix_mag, est_mag, _ = example
            rate = self.model_config.sample_rate
            if t.play_estimate:
                w.add_audio("audio/estimate", _mono(estimate), epoch, sample_rate=rate)
            if t.play_residual:
                w.add_audio("audio/residual", _mono(mixture - estimate), epoch, sample_rate=rate)
            if t.view_spec:
                w.add_image("spectrogram/estimate", _spec_image(est_mag), epoch, dataformats="HW")
                w.add_image("spectrogram/mixture", _spec_image(mix_mag), epoch, dataformats="HW")
            if t.view_wav:
                png = visualize.waveforms(
                    {"estimate": estimate[0].numpy(), "target": target[0].numpy()}, rate
                )
                w.add_image("waveform", _decode_png(png), epoch, dataformats="HWC")
        self._sync_tensorboard()

    def _sync_tensorboard(self) -> None:
        """Upload what is new: each sync closes the event files, the next event opens new ones.

        Object stores cannot append, so a file that kept growing would go up whole every epoch;
        TensorBoard reads every event file of a folder in order. Uploaded files leave the disk,
        and a file that failed to go up is tried again at the next sync.
        """
        self.writer.close()  # SummaryWriter reopens (a new file) on its next event
        for root, _, files in os.walk(self._tb_dir):
            for name in sorted(files):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, self._tb_dir)
                with open(path, "rb") as f:
                    storage.write_bytes(storage.join(self.session, "runs", rel), f.read())
                os.remove(path)

    def close(self, epoch: int) -> None:
        if self.writer is not None:
            _attempt(epoch, "TensorBoard logs", self._sync_tensorboard)
            shutil.rmtree(self._tb_dir, ignore_errors=True)


def _budget(metrics: dict[str, Any], minutes: float | None) -> str:
    """The --max-minutes budget spent, where there is one."""
    return "" if minutes is None else f"  {metrics['train_minutes']:.1f}/{minutes:g} min"


def _attempt(epoch: int, what: str, write: Callable[..., None], *args: Any) -> None:
    """Write an extra; a storage failure is a warning: the checkpoint is already reported.

    Anything else is a bug, and stays an error.
    """
    try:
        write(*args)
    except (AuralflowError, OSError) as err:
        print(
            f"[train] warning: epoch {epoch}'s {what} were not written "
            f"({type(err).__name__}: {err}); training goes on, the checkpoint is saved",
            file=sys.stderr,
            flush=True,
        )


def _mono(audio: torch.Tensor) -> torch.Tensor:
    return audio.mean(dim=0).clamp(-1, 1)


def _spec_image(mag: torch.Tensor) -> np.ndarray:
    db = 20 * torch.log10(mag[0].clamp_min(1e-5))
    db = (db - db.max() + 80).clamp_min(0) / 80
    return db.flip(0).numpy()


def _decode_png(png: bytes) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
