"""The per-worker training loop that Ray Train runs on every rank.

Every rank trains on its own shard of freshly cut chunks, validates on the same fixed chunks,
and all-reduces the validation sums, so the LR schedule and early stopping decide identically
everywhere. Every rank calls ``ray.train.report`` once per epoch (it is a barrier); rank 0
passes the checkpoint, and only once it is reported writes ``best/`` and the extras (history,
images, TensorBoard), so neither a storage hiccup there costs the epoch's checkpoint nor does
``best/`` ever hold an epoch no checkpoint records.

Every random stream a rank draws from (dropout, the local shuffle buffer, numpy, ``random``) is
seeded at each epoch's start from ``(seed, epoch, rank)``, so a resumed run draws exactly what
an uninterrupted one would, without any RNG state in the checkpoint (and whatever the world
size of the run that wrote it).
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from auralflow_dist import storage
from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict
from auralflow_dist.data.pipeline import ChunkStats, get_or_create_epoch_clock, iter_batches
from auralflow_dist.metrics import si_sdr
from auralflow_dist.models.mask_model import SpectrogramMaskModel
from auralflow_dist.session import BEST, WEIGHTS, load_tensors, save_network
from auralflow_dist.train import state as ckpt_state
from auralflow_dist.train.reporting import EpochReporter, tag

STATUS_FILE = "train_status.json"


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    """Sum over ranks (identity on a single worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _slowest(seconds: float, device: torch.device) -> float:
    """The slowest rank's time: every rank then counts the same budget and stops together."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return seconds
    tensor = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def _seconds_left(trainer: TrainerConfig, loop: ckpt_state.LoopState) -> float | None:
    """What is left of the ``--max-minutes`` budget (None: no budget)."""
    budget = trainer.optim.max_minutes
    return None if budget is None else budget * 60 - loop.train_seconds


def _out_of_time(trainer: TrainerConfig, loop: ckpt_state.LoopState) -> bool:
    left = _seconds_left(trainer, loop)
    return left is not None and left <= 0


def seed_epoch(seed: int, epoch: int, rank: int) -> int:
    """Seed torch (every device), numpy and ``random`` for ``epoch`` on ``rank``; the seed."""
    value = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)
    return value


def steps_per_epoch(trainer: TrainerConfig, world: int) -> int:
    """Full batches each rank trains on per epoch (Ray Train splits the chunks equally)."""
    return trainer.data.max_samples // world // trainer.data.batch_size


def _train_epoch(
    model: SpectrogramMaskModel,
    shard: Any,
    trainer: TrainerConfig,
    reporter: EpochReporter | None,
    loop: ckpt_state.LoopState,
    shuffle_seed: int,
) -> dict[str, float]:
    model.train()
    device = model.device
    loss_sum, count, samples, wait, nonfinite = 0.0, 0, 0, 0.0, 0
    start = tick = time.perf_counter()
    stats = ChunkStats()
    data = trainer.data
    batches = iter_batches(
        shard,
        data.batch_size,
        data.shuffle_buffer,
        data.pre_fetch,
        device,
        pin_memory=data.pin_memory,
        stats=stats,
        shuffle_seed=shuffle_seed,
    )
    seconds_left = _seconds_left(trainer, loop)
    for mixture, target in batches:
        wait += time.perf_counter() - tick
        model.set_data(mixture, target)
        model.forward()
        loss = model.compute_loss()
        if not math.isfinite(loss):
            nonfinite += 1
            model.optimizer.zero_grad(set_to_none=True)
            break  # every rank learns of it at the all-reduce below
        model.backward()
        if reporter is None:
            grad_norm = model.optimizer_step()
        else:
            grad_norm = model.optimizer_step(
                reporter.gradient_inspector(first=count == 0), want_norm=reporter.wants_norm
            )
        loss_sum += loss
        count += 1
        samples += mixture.shape[0]
        loop.global_step += 1
        if reporter is not None:
            reporter.step(loop.global_step, loss, grad_norm, mixture.shape[0])
        tick = time.perf_counter()
        # The budget ends the epoch mid-way: an epoch of real songs can last longer than the
        # budget itself. The slowest rank's clock decides, so every rank stops at the same step
        # (DDP's next all-reduce would wait forever for a rank that stopped alone).
        if seconds_left is not None and _slowest(tick - start, device) >= seconds_left:
            break
    elapsed = time.perf_counter() - start
    loss_sum, count, samples, wait_sum, time_sum, nonfinite, silent = _all_reduce(
        [loss_sum, count, samples, wait, elapsed, nonfinite, stats.silent_dropped], device
    )
    world = dist.get_world_size() if dist.is_initialized() else 1
    return {
        "train_loss": loss_sum / max(count, 1),
        "train_batches": count,
        "samples_per_s": samples / max(time_sum / world, 1e-9),
        "data_wait_share": wait_sum / max(time_sum, 1e-9),
        "nonfinite": nonfinite,
        "silent_chunks_replaced": int(silent),
    }


def _validate(
    model: SpectrogramMaskModel, shard: Any, trainer: TrainerConfig
) -> tuple[dict[str, float], tuple]:
    """Loss and SI-SDR (estimate and mixture) on the fixed validation chunks."""
    model.eval()
    loss_sum = est_sum = mix_sum = 0.0
    count = silent = 0
    silence = 10 ** (trainer.data.silence_threshold_db / 10)
    example = None
    with torch.no_grad():
        for mixture, target in iter_batches(
            shard, trainer.data.batch_size, 0, trainer.data.pre_fetch, model.device, drop_last=False
        ):
            model.set_data(mixture, target)
            model.forward()
            n = mixture.shape[0]
            loss_sum += model.compute_loss() * n
            estimate = model.estimate()
            est_sum += float(si_sdr(estimate, model.target).mean(dim=-1).sum())
            mix_sum += float(si_sdr(model.mixture, model.target).mean(dim=-1).sum())
            silent += int((model.target.square().mean(dim=(-2, -1)) <= silence).sum())
            count += n
            if example is None:
                example = (
                    model.mixture[0].cpu(),
                    model.target[0].cpu(),
                    estimate[0].cpu(),
                    model.mix_spec[0].abs().cpu(),
                    model.estimate_spec[0].cpu(),
                    model.stft(model.target[:1])[0].abs().cpu(),
                )
    # Every rank validates the same chunks; the sum keeps the decision identical regardless.
    loss_sum, est_sum, mix_sum, count, silent = _all_reduce(
        [loss_sum, est_sum, mix_sum, count, silent], model.device
    )
    count = max(count, 1)
    metrics = {
        "val_silent_share": silent / count,  # chunks whose target stayed silent after redraws
        "val_loss": loss_sum / count,
        "val_si_sdr": est_sum / count,
        "val_si_sdr_mixture": mix_sum / count,
    }
    metrics["val_si_sdri"] = metrics["val_si_sdr"] - metrics["val_si_sdr_mixture"]
    return metrics, example


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    model_config = from_dict(ModelConfig, loop_config["model"])
    trainer = from_dict(TrainerConfig, loop_config["trainer"])
    session: str = loop_config["session"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(trainer.optim.seed + rank)

    model = SpectrogramMaskModel(model_config, trainer, device=device)
    loop = ckpt_state.LoopState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            loop = ckpt_state.load(directory, model)
        if rank == 0 and loop.best_epoch == loop.epoch > 0:
            # The run may have stopped between reporting this checkpoint and exporting it.
            save_network(storage.join(session, BEST), model_config, model.model)
    elif loop_config.get("init_from"):
        loop = ckpt_state.load(loop_config["init_from"], model)
        # A handed-over checkpoint (PBT) brings its optimizer; this run's LRs are the new ones.
        for group in model.optimizer.param_groups:
            group["lr"] = (
                trainer.optim.lr_lstm if group["name"] == "recurrent" else trainer.optim.lr
            )
    elif loop_config.get("init_weights"):
        state = load_tensors(loop_config["init_weights"], WEIGHTS, map_location=device)
        model.model.load_state_dict(state, strict=True)
    if world > 1:
        model.model = ray.train.torch.prepare_model(model.model, move_to_device=False)
    clock = get_or_create_epoch_clock(loop_config["clock"])
    reporter = EpochReporter(session, model_config, trainer, world) if rank == 0 else None
    if rank == 0:
        memory = f"; peak memory {loop_config['memory']}" if loop_config.get("memory") else ""
        print(
            f"{tag(model_config)} {world} worker(s) on {device}; batch {trainer.data.batch_size} per worker, "
            f"{trainer.data.batch_size * world} global{memory}; starting at epoch "
            f"{loop.epoch + 1}",
            flush=True,
        )

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    # Where a resume finds nothing left to train, the status reports its last epoch's figures.
    stop, trained = False, 0
    out_of_time = _out_of_time(trainer, loop)
    metrics = dict(loop.history[-1]) if loop.history else {}
    metrics.update(epoch=loop.epoch, global_step=loop.global_step, out_of_time=out_of_time)
    while loop.epoch < trainer.optim.max_epochs and not out_of_time:
        epoch = loop.epoch + 1
        if rank == 0:
            ray.get(clock.set.remote(epoch))
        _barrier()
        shuffle_seed = seed_epoch(trainer.optim.seed, epoch, rank)
        epoch_start = time.perf_counter()
        if reporter is not None:
            reporter.start_epoch(epoch, steps_per_epoch(trainer, world))
        metrics = _train_epoch(model, train_shard, trainer, reporter, loop, shuffle_seed)
        diverged = metrics.pop("nonfinite") > 0
        val, example = ({}, None) if diverged else _validate(model, val_shard, trainer)
        metrics.update(val)
        metrics.update(
            epoch=epoch,
            global_step=loop.global_step,
            diverged=diverged,
            lr=model.optimizer.param_groups[0]["lr"],
        )
        if diverged:
            # Stop without a checkpoint: the last good one stays the latest.
            if rank == 0:
                write_status(session, "diverged", metrics)
            ray.train.report(metrics)
            return
        stop = model.scheduler_step(metrics["val_loss"])
        loop.train_seconds += _slowest(time.perf_counter() - epoch_start, device)
        out_of_time = _out_of_time(trainer, loop)
        stop = stop or out_of_time
        improved = metrics["val_loss"] < loop.best_val_loss
        if improved:
            loop.best_val_loss, loop.best_epoch = metrics["val_loss"], epoch
        loop.epoch, trained = epoch, trained + 1
        metrics.update(
            best_val_loss=loop.best_val_loss,
            best_epoch=loop.best_epoch,
            stopped_early=stop,
            out_of_time=out_of_time,
            train_minutes=loop.train_seconds / 60,
        )
        loop.history.append({k: v for k, v in metrics.items() if isinstance(v, int | float)})
        with tempfile.TemporaryDirectory() as tmp:
            report_checkpoint = None
            if rank == 0:
                ckpt_state.save(tmp, model, loop)
                report_checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(
                metrics,
                checkpoint=report_checkpoint,
                checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}",
            )
        if rank == 0:
            if improved:  # a failure here fails the run; resuming exports it again (above)
                save_network(storage.join(session, BEST), model_config, model.model)
            reporter.epoch(loop, metrics, model, example)
        if stop:
            break
    if rank == 0:
        state = "out_of_time" if out_of_time else "stopped_early" if stop else "finished"
        write_status(session, state, metrics, trained)
    if reporter is not None:
        reporter.close(loop.epoch)


def write_status(
    session: str, state: str, metrics: dict[str, Any], trained: int | None = None
) -> None:
    """How the run ended, for the driver (Train's result only carries checkpointed metrics),
    with the epochs this attempt trained and, where it trained none, the last epoch's metrics."""
    status = {"state": state, "epoch": metrics["epoch"], "global_step": metrics["global_step"]}
    if trained is not None:
        status["trained"] = trained
    if trained == 0:
        status["metrics"] = metrics
    storage.write_bytes(storage.join(session, STATUS_FILE), json.dumps(status).encode())
