"""Short files side by side in shared forward passes beside one file at a time, in one process.

What a separation actor on a GPU does with a folder of short files (`separate.shared_batches`):
`GPU_FILES_AT_ONCE` files on threads of their own, their windows gathered into one forward
pass, against the actor's old way, one file after another. Both run the whole file path of
`TrackSeparator` (decode, resample, separate, overlap-add, encode, write) on the same files,
with the same model and threads, in turns (A B A B) so that a machine that drifts shows as a
spread rather than as a skewed ratio. Prints audio seconds per second, the ratio, and the
windows per forward pass each way.

    python -m bench.shared_batches [--files 48] [--seconds 4] [--rounds 2]
    python -m bench.shared_batches --device cuda --batch-size 32

On a CPU a pass costs about in proportion to its windows, so the gain there is the overlap of
one file's decoding and encoding with another's pass; on a GPU, whose pass costs about the same
up to its width, fuller passes are the gain (absolute figures only from a GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from auralflow_dist import allocator, audio, storage
from auralflow_dist.config import ModelConfig
from auralflow_dist.data.generate import synthesize_track
from auralflow_dist.models.registry import build_network
from auralflow_dist.models.separator import Bundle, Separator
from auralflow_dist.separate import SeparateConfig
from auralflow_dist.separate.job import GPU_FILES_AT_ONCE
from auralflow_dist.separate.shared_batches import SharedBatches
from auralflow_dist.separate.sources import Source
from auralflow_dist.separate.track import TrackSeparator


class _Counting:
    """The bundle's estimate, counting its passes and windows (one file at a time's figures)."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle, self.passes, self.windows = bundle, 0, 0
        self.lock = threading.Lock()

    def __call__(self, windows: torch.Tensor, batch_size: int) -> torch.Tensor:
        with self.lock:
            self.passes += 1
            self.windows += len(windows)
        return Bundle.estimate(self.bundle, windows, batch_size)


def _job(audio_dir: str, save: str, batch_size: int) -> SeparateConfig:
    return SeparateConfig(
        model="unused", audio=audio_dir, save=save, batch_size=batch_size, overwrite=True
    ).validate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each file")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--targets", type=int, default=4, help="models in the bundle")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    allocator.tune()
    device = torch.device(args.device)
    config = ModelConfig(sample_rate=44100, num_channels=2)
    names = ["bass", "drums", "other", "vocals"][: args.targets]
    bundle = Bundle(
        [
            Separator(dataclasses.replace(config, target=t), build_network(config).eval(), device)
            for t in names
        ]
    )
    counting = _Counting(bundle)
    bundle.estimate = counting  # type: ignore[method-assign]

    with tempfile.TemporaryDirectory(prefix="auralflow-bench-") as work:
        folder = os.path.join(work, "in")
        sources = []
        for i in range(args.files):
            url = storage.join(folder, f"clip_{i:03d}.wav")
            audio.write(url, synthesize_track(i, args.seconds, 44100)["mixture"], 44100)
            sources.append(Source(url, f"clip_{i:03d}"))
        total = args.files * args.seconds
        job = _job(folder, os.path.join(work, "out"), args.batch_size)
        one = TrackSeparator(bundle, job, model_key="k", run_id="r")
        one(sources[0])  # warm-up
        rates: dict[str, list[float]] = {"one at a time": [], "shared passes": []}
        fill: dict[str, float] = {}
        for _ in range(args.rounds):
            counting.passes = counting.windows = 0
            start = time.perf_counter()
            for s in sources:
                assert one(s).status == "ok"
            rates["one at a time"].append(total / (time.perf_counter() - start))
            fill["one at a time"] = counting.windows / counting.passes

            shared = SharedBatches(bundle, args.batch_size)
            many = TrackSeparator(bundle, job, model_key="k", run_id="r", shared=shared)
            start = time.perf_counter()
            with ThreadPoolExecutor(GPU_FILES_AT_ONCE) as pool:
                assert all(r.status == "ok" for r in pool.map(many, sources))
            rates["shared passes"].append(total / (time.perf_counter() - start))
            fill["shared passes"] = shared.windows / shared.passes

    print(
        f"{args.files} files of {args.seconds:g} s, {len(names)} targets, batch {args.batch_size}"
        f", {args.device}, {torch.get_num_threads()} threads, {GPU_FILES_AT_ONCE} files at once"
    )
    print("| way | audio s/s per round | windows per pass |")
    print("|---|---|---|")
    for way, r in rates.items():
        print(f"| {way} | {' / '.join(f'{x:.2f}' for x in r)} | {fill[way]:.2f} |")
    base = sum(rates["one at a time"]) / args.rounds
    print(f"shared / one at a time: {sum(rates['shared passes']) / args.rounds / base:.2f}x")


if __name__ == "__main__":
    main()
