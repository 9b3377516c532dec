"""What the heap settings (`auralflow_dist.allocator`) are worth: default glibc heap vs tuned.

Each case runs twice in a fresh process, once on glibc's default heap and once tuned, and the
ratio is printed: ``separate()`` over generated 30 s stereo tracks, and training steps of the
default stereo SpectrogramNetSimple on random batches, the latter both on the main thread (a
plain script) and on a second thread (where Ray Train runs the loop).

    python -m bench.heap [--threads 2] [--tracks 4] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

CASES = ("separate", "train-main", "train-thread")


def run_case(case: str, folder: str, threads: int, tracks: int, steps: int) -> float:
    import torch

    from auralflow_dist import audio
    from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict
    from auralflow_dist.models.mask_model import SpectrogramMaskModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if case == "separate":
        model = SpectrogramMaskModel.from_checkpoint(os.path.join(folder, "model"), device="cpu")
        urls = [os.path.join(folder, f"track_{i:02d}.wav") for i in range(tracks)]
        x, rate = audio.read(urls[0], frames=5 * 44100)
        model.separate(x, sample_rate=rate)  # warm-up
        start, total = time.perf_counter(), 0.0
        for url in urls:
            x, rate = audio.read(url)
            model.separate(x, sample_rate=rate)
            total += x.shape[-1] / rate
        return total / (time.perf_counter() - start)

    config = from_dict(ModelConfig, {"num_channels": 2})
    net = SpectrogramMaskModel(config, from_dict(TrainerConfig, {"lr": 1e-3}), device="cpu")
    net.train()
    g = torch.Generator().manual_seed(0)
    batch = (
        torch.rand(8, 2, config.num_samples, generator=g) - 0.5,
        (torch.rand(8, 2, config.num_samples, generator=g) - 0.5) * 0.3,
    )
    rates: list[float] = []

    def train() -> None:
        for timed in (False, True):  # the first round warms up
            start = time.perf_counter()
            for _ in range(steps):
                net.set_data(*batch)
                net.forward()
                net.compute_loss()
                net.backward()
                net.optimizer_step()
            if timed:
                rates.append(steps * 8 / (time.perf_counter() - start))

    if case == "train-thread":
        worker = threading.Thread(target=train)
        worker.start()
        worker.join()
    else:
        train()
    return rates[0]


def _child(args: argparse.Namespace) -> None:
    from auralflow_dist import allocator

    if args.tuned:
        assert allocator.tune(), "the C library did not take the settings"
    rate = run_case(args.child, args.folder, args.threads, args.tracks, args.steps)
    print(json.dumps({"rate": rate}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tracks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    from auralflow_dist import audio, storage
    from auralflow_dist.config import ModelConfig
    from auralflow_dist.data.generate import synthesize_track
    from auralflow_dist.models.registry import build_network
    from auralflow_dist.session import save_network

    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}  # glibc's defaults
    with tempfile.TemporaryDirectory(prefix="auralflow-bench-") as folder:
        config = ModelConfig(num_channels=2).validate()
        save_network(os.path.join(folder, "model"), config, build_network(config))
        for i in range(args.tracks):
            track = synthesize_track(i, 30.0, 44100)["mixture"]
            audio.write(storage.join(folder, f"track_{i:02d}.wav"), track, 44100)
        print(f"{args.threads} torch thread(s); default glibc heap vs `allocator.tune()`")
        print(f"{'case':<14}{'default':>10}{'tuned':>10}{'ratio':>8}")
        for case in CASES:
            rates = []
            for tuned in (False, True):
                command = [
                    sys.executable,
                    "-m",
                    "bench.heap",
                    "--child",
                    case,
                    "--folder",
                    folder,
                    "--threads",
                    str(args.threads),
                    "--tracks",
                    str(args.tracks),
                    "--steps",
                    str(args.steps),
                ]
                done = subprocess.run(
                    command + ["--tuned"] * tuned,
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                rates.append(json.loads(done.stdout.strip().splitlines()[-1])["rate"])
            unit = "audio s/s" if case == "separate" else "samples/s"
            print(
                f"{case:<14}{rates[0]:>10.2f}{rates[1]:>10.2f}{rates[1] / rates[0]:>7.2f}x"
                f"  ({unit})"
            )


if __name__ == "__main__":
    main()
