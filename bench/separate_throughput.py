"""Throughput of the bulk separation job beside the bare model's ``separate()`` on the same files.

Generates a folder of tracks (by default six real-length songs of 3 to 5 minutes; ``--short``:
32 of 30 s, where the job's start-up weighs more), then measures in one run: a plain loop (read the whole file,
``separate()`` it, all CPU threads) and the whole Ray job (listing, actor start-up, streaming
reads, separation, encoding, writing, the results table) with 1 and 2 actors sharing out the
CPUs as the job does (on CPU a file per CPU side by side, a torch thread each). Prints audio
seconds per wall-clock second and the job / loop ratio; the "in workers" column leaves out the
fixed start-up (actor processes importing torch, loading the model), which a long job
amortises. The loop runs with the same heap settings as the job's actors (`allocator`), once
before the jobs and once after: the ratios are against the mean of the two, so a machine that
slows down or speeds up during the run shows as a spread between them rather than as a skewed
ratio. Each job also prints the CPU of every Ray process over the job (`ray_processes`). Floors
on a 2-core CPU machine: the one-actor job >= 0.9x the loop on the real-length files, Ray's own
processes < 0.1 core together.

    python -m bench.separate_throughput [--short] [--workers 1 2]
    python -m bench.separate_throughput --tracks 32 --seconds 30
    python -m bench.separate_throughput --device cuda --batch-size 32   # one actor per GPU

Audio seconds per second is the speed in x real time; on a GPU each actor has one GPU, so the
job's figure divided by its actors is x real time per GPU, end to end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from auralflow_dist import allocator, audio, runtime, storage
from auralflow_dist.config import ModelConfig
from auralflow_dist.data.generate import synthesize_track
from auralflow_dist.models.registry import build_network
from auralflow_dist.models.separator import Separator
from auralflow_dist.separate import SeparateConfig, run_separation
from auralflow_dist.session import save_network
from bench.gpu_utilization import UtilizationSampler
from bench.ray_processes import RayProcessCPU

ONE_ACTOR_FLOOR = 0.9
REAL_SECONDS = (180.0, 204.0, 228.0, 252.0, 276.0, 300.0)  # 3 to 5 minutes
WORK = ("FileSeparator",)  # the separation actors; every other process is Ray's own


def make_inputs(folder: str, lengths: list[float], rate: int) -> list[str]:
    urls = []
    for i, seconds in enumerate(lengths):
        url = storage.join(folder, f"track_{i:02d}.wav")
        audio.write(url, synthesize_track(i, seconds, rate)["mixture"], rate)
        urls.append(url)
    return urls


def bare_loop(model: Separator, urls: list[str], padding: int, batch_size: int) -> float:
    """Audio seconds per second of read + ``separate()``, one file after another."""
    x, rate = audio.read(urls[0], frames=5 * audio.info(urls[0]).sample_rate)
    model.separate(x, sample_rate=rate, padding=padding, batch_size=batch_size)  # warm-up
    total, start = 0.0, time.perf_counter()
    for url in urls:
        x, rate = audio.read(url)
        model.separate(x, sample_rate=rate, padding=padding, batch_size=batch_size)
        total += x.shape[-1] / rate
    return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # A bulk job's speed is its steady state: too little audio measures mostly start-up.
    parser.add_argument("--short", action="store_true", help="32 tracks of 30 s")
    parser.add_argument("--tracks", type=int, help="this many tracks of --seconds each")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--num-channels", type=int, default=2, help="1: mono model, 2: stereo")
    parser.add_argument("--workers", type=int, nargs="+", help="default: 1 2 on CPU, 1 on GPU")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: the loop and each actor")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    workers_list = args.workers or ([1] if gpu else [1, 2])
    if args.short:
        args.tracks = args.tracks or 32
    lengths = [args.seconds] * args.tracks if args.tracks else list(REAL_SECONDS)
    allocator.tune()  # the job's actors get the same heap settings
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    with tempfile.TemporaryDirectory(prefix="auralflow-bench-") as tmp:
        work = args.workdir or tmp
        config = ModelConfig(sample_rate=args.sample_rate, num_channels=args.num_channels)
        config = config.validate()
        torch.manual_seed(0)
        model_dir = storage.join(work, "model")
        save_network(model_dir, config, build_network(config))
        urls = make_inputs(storage.join(work, "in"), lengths, args.sample_rate)
        audio_s = sum(lengths)
        print(
            f"{config.model_type} ({config.num_channels} ch, {config.sample_rate} Hz), "
            f"{len(lengths)} tracks of {min(lengths):g}-{max(lengths):g} s stereo "
            f"({audio_s / 60:.1f} min), {os.cpu_count()} CPUs"
            + (f", {torch.cuda.get_device_name()}" if gpu else "")
        )
        runtime.connect()  # start Ray first: its start-up is not the job's

        torch.set_num_threads(os.cpu_count() or 1)
        model = Separator.from_checkpoint(model_dir, device=args.device)
        before = bare_loop(model, urls, 200, args.batch_size)
        rows, reports = [], []
        for workers in workers_list:
            job = SeparateConfig(
                model=model_dir,
                audio=storage.join(work, "in"),
                save=storage.join(work, f"out{workers}"),
                workers=workers,
                gpus_per_worker=1.0 if gpu else None,
                batch_size=args.batch_size,
                overwrite=True,
            )
            with UtilizationSampler(args.device) as utilization, RayProcessCPU(WORK) as processes:
                processes.open_window()
                summary = run_separation(job, echo=lambda line: None)
            assert summary.ok == len(lengths), summary.describe()
            busy = sum(r.seconds for r in summary.results) / summary.concurrent_files
            rows.append((workers, audio_s / summary.wall_seconds, audio_s / busy, utilization))
            reports.append((workers, processes.report()))
        after = bare_loop(model, urls, 200, args.batch_size)
        loop = (before + after) / 2
        print(f"{'':<22}{'audio s/s':>10}{'vs loop':>9}{'in workers':>12}{'vs loop':>9}")
        spread = f"   (before the jobs {before:.2f}, after {after:.2f})"
        print(f"{'separate() loop':<22}{loop:>10.2f}{1.0:>9.2f}{spread}")
        for workers, whole, warm, utilization in rows:
            per_gpu = f"   {whole / workers:.0f}x real time per GPU" if gpu else ""
            print(
                f"{f'job, {workers} actor(s)':<22}{whole:>10.2f}{whole / loop:>9.2f}"
                f"{warm:>12.2f}{warm / loop:>9.2f}{per_gpu}{utilization.describe()}"
            )
        for workers, whole, _, _ in rows:
            if workers == 1:
                verdict = "ok" if whole / loop >= ONE_ACTOR_FLOOR else "MISSED"
                print(
                    f"one-actor job / loop: {whole / loop:.2f} (floor {ONE_ACTOR_FLOOR}: {verdict})"
                )
        for workers, report in reports:
            print(f"CPU per process, the job with {workers} actor(s), start to end:")
            print(report)


if __name__ == "__main__":
    main()
