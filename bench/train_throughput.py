"""Training samples/s of the Ray Train loop beside the same loop in one plain process.

Both train the same model on the same generated dataset with the same batches (chunks decoded
by `data.decode` from one epoch's draw). The plain loop decodes in-process, one batch ahead on a
thread, the way a single-process trainer would; the Ray run is `run_training` with one worker,
its data decoded by Ray Data. Both run with the same heap settings (`allocator`: this
process tuned on its main thread, Ray's workers from exec on), and both are timed over epochs
2 onwards (the first warms up). Prints both rates, their ratio, the share of step time each
spent waiting for data, the CPU of every Ray process over the timed epochs (`ray_processes`),
and on a GPU its mean utilisation (`gpu_utilization`).

The default material is real-length: five training songs of 3 to 4.6 minutes and a
validation song, and Ray Data's object-store budget held to ``--budget-blocks`` decode blocks,
smaller than an epoch, so the trainer holds the executor back for most of the epoch as it does
on a CPU trainer with a full-size epoch (issue 19). ``--short`` is the earlier case: the same
six songs at 20 s, Ray's default budget. Floors on a 2-core CPU machine: Ray Train with one
worker >= 0.9x the plain loop, data wait < 5%, Ray's own processes < 0.1 core together.

    python -m bench.train_throughput [--epochs 3] [--samples 128] [--short] [--device cuda --amp]
    python -m bench.train_throughput --plain-only --device cuda --amp   # a GPU without Ray
"""

from __future__ import annotations

import argparse
import csv
import os
import queue
import tempfile
import threading
import time

import numpy as np
import torch

from auralflow_dist import allocator
from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict
from auralflow_dist.data import manifest
from auralflow_dist.data.chunks import ChunkDrawer
from auralflow_dist.data.decode import DecodeSettings, decode_chunk
from auralflow_dist.data.generate import write_dataset
from auralflow_dist.data.pipeline import CHUNKS_PER_TASK
from auralflow_dist.models.mask_model import SpectrogramMaskModel
from bench.gpu_utilization import UtilizationSampler
from bench.ray_processes import RayProcessCPU

RATIO_FLOOR, WAIT_FLOOR = 0.9, 0.05
# The training worker and the decode tasks are the work; every other process is Ray's own.
WORK = ("RayTrainWorker", "_decode_batch")
REAL_SECONDS = (180.0, 204.0, 228.0, 252.0, 276.0)  # five training songs of 3 to 5 minutes
SHORT_SECONDS = 20.0


def write_songs(root: str, short: bool) -> None:
    """Five training songs and one validation song, real-length unless ``short``."""
    lengths = [SHORT_SECONDS] * 5 if short else REAL_SECONDS
    for seed, seconds in enumerate(lengths):
        write_dataset(root, tracks=1, seconds=seconds, seed=seed, splits=("train",))
    write_dataset(root, tracks=1, seconds=lengths[0], seed=len(lengths), splits=("valid",))


def _batches(table, model: ModelConfig, trainer: TrainerConfig, epoch: int):
    settings = DecodeSettings.from_configs(model, trainer, augment=True)
    data = trainer.data
    tracks = manifest.tracks(table, "train")[: data.max_tracks]
    drawer = ChunkDrawer(tracks, settings.chunk_seconds)
    for start in range(0, data.max_samples - data.batch_size + 1, data.batch_size):
        chunks = [
            decode_chunk(drawer, drawer.draw(trainer.optim.seed, epoch, i), settings)
            for i in range(start, start + data.batch_size)
        ]
        yield (
            torch.from_numpy(np.stack([c.mixture for c in chunks])),
            torch.from_numpy(np.stack([c.target for c in chunks])),
        )


def _produce(
    ahead: queue.Queue, table, model: ModelConfig, trainer: TrainerConfig, epoch: int
) -> None:
    for batch in _batches(table, model, trainer, epoch):
        ahead.put(batch)
    ahead.put(None)


def plain_loop(table, model: ModelConfig, trainer: TrainerConfig, device: str) -> dict:
    """One process: decode on a thread one batch ahead, train on ``device``."""
    net = SpectrogramMaskModel(model, trainer, device=device)
    net.train()
    samples, wait, busy = 0, 0.0, 0.0
    for epoch in range(1, trainer.optim.max_epochs + 1):
        ahead: queue.Queue = queue.Queue(maxsize=trainer.data.pre_fetch)
        threading.Thread(
            target=_produce, args=(ahead, table, model, trainer, epoch), daemon=True
        ).start()
        tick = time.perf_counter()
        while (batch := ahead.get()) is not None:
            got = time.perf_counter()
            if epoch > 1:  # the first epoch warms up allocators, threads and caches
                wait += got - tick
            net.set_data(*batch)
            net.forward()
            net.compute_loss()
            net.backward()
            net.optimizer_step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            tick = time.perf_counter()
            if epoch > 1:
                busy += tick - got
                samples += batch[0].shape[0]
    return {"samples_per_s": samples / (busy + wait), "data_wait_share": wait / (busy + wait)}


def _epochs_done(history: str) -> int:
    try:
        with open(history, newline="") as f:
            return len(list(csv.DictReader(f)))
    except FileNotFoundError:
        return 0


def ray_train(
    table, model: ModelConfig, trainer: TrainerConfig, budget_bytes: int | None
) -> tuple[dict, RayProcessCPU]:
    """``run_training`` with one worker; rates over epochs 2.. (as the plain loop's) from history,
    and the CPU of each Ray process over the same epochs (from the first epoch's history row)."""
    import ray
    from ray.data import ExecutionResources

    from auralflow_dist.runtime import connect
    from auralflow_dist.train.trainer import run_training

    connect(None, trainer.cluster.cpus_per_worker)
    if budget_bytes is not None:  # Ray Train's ingest options start from the driver's context
        ray.data.DataContext.get_current().execution_options.resource_limits = ExecutionResources(
            object_store_memory=budget_bytes
        )
    with tempfile.TemporaryDirectory() as session:
        history = os.path.join(session, "history.csv")
        last = trainer.optim.max_epochs
        with RayProcessCPU(
            WORK,
            opens=lambda: _epochs_done(history) >= 1,
            closes=lambda: _epochs_done(history) >= last,
        ) as processes:
            run_training(session, "bench", table, model, trainer)
        with open(history, newline="") as f:
            epochs = list(csv.DictReader(f))[1:]
    # Every epoch trains the same number of samples: time per sample adds up across epochs.
    per_sample = [1.0 / float(row["samples_per_s"]) for row in epochs]
    waits = [float(row["data_wait_share"]) * t for row, t in zip(epochs, per_sample, strict=True)]
    rates = {
        "samples_per_s": len(per_sample) / sum(per_sample),
        "data_wait_share": sum(waits) / sum(per_sample),
    }
    return rates, processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=128, help="chunks per epoch")
    parser.add_argument("--short", action="store_true", help="20 s songs, Ray's default budget")
    parser.add_argument(
        "--budget-blocks",
        type=int,
        default=2,
        help="Ray Data's object-store budget in decode blocks (real-length case only)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--plain-only", action="store_true")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch warms up and is not timed")
    allocator.tune()  # before the decode thread starts; Ray's workers get the same settings
    torch.manual_seed(0)
    model = from_dict(ModelConfig, {"num_channels": 2})  # the seeds' defaults, stereo
    trainer = from_dict(
        TrainerConfig,
        {
            "max_epochs": args.epochs,
            "max_samples": args.samples,
            "batch_size": args.batch_size,
            "use_amp": args.amp,
            "num_workers": 2,
            "val_chunks": 8,
            "lr": 1e-3,
            "gpus_per_worker": 1 if args.device.startswith("cuda") else 0,
            # The plain process trains on every core; so does the worker (its torch threads).
            "cpus_per_worker": 1 if args.device.startswith("cuda") else os.cpu_count() or 1,
        },
    )
    chunk_bytes = 2 * model.num_channels * model.num_samples * 4  # float32 mixture and target
    budget = None if args.short else args.budget_blocks * CHUNKS_PER_TASK * chunk_bytes
    with tempfile.TemporaryDirectory() as root:
        write_songs(root, args.short)
        table = manifest.scan(root).table
        songs = manifest.tracks(table, "train")
        minutes = sum(t.duration for t in songs) / 60
        with UtilizationSampler(args.device) as plain_gpu:
            plain = plain_loop(table, model, trainer, args.device)
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        print(
            f"device {name}, {'AMP' if args.amp else 'fp32'}, {model.model_type} stereo, "
            f"batch {args.batch_size}, {args.samples} chunks/epoch of {model.sample_length} s, "
            f"{len(songs)} training songs ({minutes:.1f} min), Ray Data budget "
            + ("Ray's default" if budget is None else f"{budget / 1e6:.0f} MB")
        )
        print(
            f"plain loop:  {plain['samples_per_s']:8.2f} samples/s, "
            f"data wait {100 * plain['data_wait_share']:.1f}%{plain_gpu.describe()}"
        )
        if args.plain_only:
            return
        with UtilizationSampler(args.device) as ray_gpu:
            ray_run, processes = ray_train(table, model, trainer, budget)
    ratio = ray_run["samples_per_s"] / plain["samples_per_s"]
    wait = ray_run["data_wait_share"]
    print(
        f"Ray Train:   {ray_run['samples_per_s']:8.2f} samples/s, "
        f"data wait {100 * wait:.1f}%{ray_gpu.describe()}"
    )
    print(
        f"ratio Ray Train / plain: {ratio:.2f} (floor {RATIO_FLOOR}: {_verdict(ratio >= RATIO_FLOOR)})"
    )
    print(f"data wait: {100 * wait:.1f}% (floor < {WAIT_FLOOR:.0%}: {_verdict(wait < WAIT_FLOOR)})")
    print("CPU per process of the Ray run, epochs 2 on:")
    print(processes.report())


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


if __name__ == "__main__":
    main()
