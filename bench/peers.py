"""This project's separation speed beside Open-Unmix's and Demucs' on the same 60 s stereo clip.

Every system runs with random weights (speed does not need trained ones; none can be downloaded
here) at its own defaults, each in a fresh process of its own so that its peak memory is its
own: this project's `Separator` (one target) and `Bundle` (four stems) with SpectrogramNetSimple
at the seeds' defaults, stereo; Open-Unmix's `openunmix.umx(pretrained=False)` (its umx
architecture, four BiLSTM networks, one Wiener iteration as it ships, and one target without
it); Demucs' `apply_model` with an `HTDemucs` (four stems, its defaults: one shift, 25%
overlap). Each process gets this project's heap settings (`allocator`). A 5 s warm-up runs first in each process; the clip is then separated once. Prints
x real time (clip seconds per wall-clock second) and peak memory (the process's peak RSS, and
on a GPU torch's peak allocation) per system, one table.

    pip install -e '.[peers]'   # demucs; openunmix is already a runtime dependency
    python -m bench.peers [--seconds 60] [--device cpu|cuda] [--systems ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

RATE = 44100
TARGETS = ("vocals", "drums", "bass", "other")
Separate = Callable[[torch.Tensor], object]  # a (channels, samples) clip in, its stems out


def _ours(device: str, targets: tuple[str, ...]) -> Separate:
    import dataclasses

    from auralflow_dist.config import ModelConfig
    from auralflow_dist.models.registry import build_network
    from auralflow_dist.models.separator import Bundle, Separator

    members = []
    for seed, target in enumerate(targets):
        torch.manual_seed(seed)
        config = dataclasses.replace(ModelConfig(num_channels=2), target=target).validate()
        members.append(Separator(config, build_network(config), device=device))
    bundle = Bundle(members)
    return lambda clip: bundle.separate(clip, sample_rate=RATE)


def _open_unmix(device: str, targets: tuple[str, ...], niter: int) -> Separate:
    import openunmix

    torch.manual_seed(0)
    separator = openunmix.umx(
        targets=list(targets), niter=niter, device=device, pretrained=False
    ).eval()

    def run(clip: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return separator(clip[None].to(device))

    return run


def _demucs(device: str) -> Separate:
    from demucs.apply import apply_model
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    model = HTDemucs(sources=list(TARGETS)).eval()

    def run(clip: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return apply_model(model, clip[None], device=device)

    return run


SYSTEMS: dict[str, tuple[str, Callable[[str], Separate]]] = {
    "ours-1": ("auralflow-dist SpectrogramNetSimple, 1 target", lambda d: _ours(d, TARGETS[:1])),
    "ours-4": ("auralflow-dist SpectrogramNetSimple x4, 4 stems", lambda d: _ours(d, TARGETS)),
    "umx-1": (
        "Open-Unmix umx, 1 target, no Wiener",
        lambda d: _open_unmix(d, TARGETS[:1], niter=0),
    ),
    "umx-4": (
        "Open-Unmix umx, 4 stems, 1 Wiener iteration",
        lambda d: _open_unmix(d, TARGETS, niter=1),
    ),
    "htdemucs": ("Demucs HTDemucs, 4 stems", _demucs),
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(system: str, clip_path: str, device: str) -> dict[str, float]:
    """In this process: load ``system``, warm it up, and time it on the clip."""
    from auralflow_dist import allocator

    allocator.tune()  # every system gets the heap settings this project's workers run with
    clip = torch.from_numpy(np.load(clip_path))
    separate = SYSTEMS[system][1](device)
    separate(clip[:, : 5 * RATE])
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    separate(clip)
    sync()
    seconds = time.perf_counter() - start
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {
        "x_real_time": clip.shape[-1] / RATE / seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_gpu_mb": gpu_mb,
    }


def _in_child(system: str, clip_path: str, device: str) -> dict | str:
    """``measure`` in a fresh interpreter; the reason as a string where the system cannot run."""
    command = [sys.executable, "-m", "bench.peers", "--child", system, clip_path, device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"failed: {last}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return

    from auralflow_dist.data.generate import synthesize_track

    clip = synthesize_track(0, args.seconds, RATE)["mixture"]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"{args.seconds:g} s stereo at {RATE} Hz, random weights, {name}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads per process"
    )
    print("| system | x real time | peak RSS | peak GPU memory |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        path = os.path.join(tmp, "clip.npy")
        np.save(path, clip)
        for system in args.systems:
            result = _in_child(system, path, args.device)
            label = SYSTEMS[system][0]
            if isinstance(result, str):
                print(f"| {label} | {result} | | |")
                continue
            gpu = "" if result["peak_gpu_mb"] is None else f"{result['peak_gpu_mb']:.0f} MB"
            print(
                f"| {label} | {result['x_real_time']:.1f}x | {result['peak_rss_mb']:.0f} MB "
                f"| {gpu} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
