"""Training samples/s of the Ray Train loop beside the same loop in one plain process.

Both train the same model on the same generated dataset with the same batches (chunks decoded
by `data.decode` from one epoch's draw). The plain loop decodes in-process, one batch ahead on a
thread, the way a single-process trainer would; the Ray run is `run_training` with one worker,
its data decoded by Ray Data. Both run with the same heap settings (`allocator`: this
process tuned on its main thread, Ray's workers from exec on), and both are timed over epochs
2 onwards (the first warms up). Prints both rates, their ratio and the share of step time each
spent waiting for data, and on a GPU its mean utilisation (`gpu_utilization`). Floors on a
2-core CPU machine: Ray Train with one worker >= 85% of the plain loop, data wait < 10%.

    python -m bench.train_throughput [--epochs 4] [--samples 64] [--device cpu|cuda] [--amp]
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
from auralflow_dist.models.mask_model import SpectrogramMaskModel
from bench.gpu_utilization import UtilizationSampler


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


def ray_train(table, model: ModelConfig, trainer: TrainerConfig) -> dict:
    """``run_training`` with one worker; rates over epochs 2.. (as the plain loop's) from history."""
    from auralflow_dist.runtime import connect
    from auralflow_dist.train.trainer import run_training

    connect(None, trainer.cluster.cpus_per_worker)
    with tempfile.TemporaryDirectory() as session:
        run_training(session, "bench", table, model, trainer)
        with open(os.path.join(session, "history.csv"), newline="") as f:
            epochs = list(csv.DictReader(f))[1:]
    # Every epoch trains the same number of samples: time per sample adds up across epochs.
    per_sample = [1.0 / float(row["samples_per_s"]) for row in epochs]
    waits = [float(row["data_wait_share"]) * t for row, t in zip(epochs, per_sample, strict=True)]
    return {
        "samples_per_s": len(per_sample) / sum(per_sample),
        "data_wait_share": sum(waits) / sum(per_sample),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=64)
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
    with tempfile.TemporaryDirectory() as root:
        write_dataset(root, tracks=6, seconds=20.0, seed=0)
        table = manifest.scan(root).table
        with UtilizationSampler(args.device) as plain_gpu:
            plain = plain_loop(table, model, trainer, args.device)
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        print(
            f"device {name}, {'AMP' if args.amp else 'fp32'}, {model.model_type} stereo, "
            f"batch {args.batch_size}, {args.samples} chunks/epoch of {model.sample_length} s"
        )
        print(
            f"plain loop:  {plain['samples_per_s']:8.2f} samples/s, "
            f"data wait {100 * plain['data_wait_share']:.1f}%{plain_gpu.describe()}"
        )
        if args.plain_only:
            return
        with UtilizationSampler(args.device) as ray_gpu:
            ray_run = ray_train(table, model, trainer)
    print(
        f"Ray Train:   {ray_run['samples_per_s']:8.2f} samples/s, "
        f"data wait {100 * ray_run['data_wait_share']:.1f}%{ray_gpu.describe()}"
    )
    print(
        f"ratio Ray Train / plain: {ray_run['samples_per_s'] / plain['samples_per_s']:.2f} "
        f"(floor 0.85)"
    )


if __name__ == "__main__":
    main()
