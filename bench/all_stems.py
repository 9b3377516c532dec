"""All stems in one job beside one job per target, and what the Wiener filter costs, in one run.

Generates a folder of songs and a bundle of one model per target (random weights: speed does not
need trained ones), then runs on one local Ray, one after another: a single-target job for each
target (what a user without bundles runs: every job lists, decodes and writes again, and starts
its own actors), the all-stems job with ``--wiener 0``, and the all-stems job with ``--wiener 1``.
Prints each run's wall-clock time and x real time (audio seconds per wall-clock second), the
four jobs / all-stems ratio, and the Wiener filter's cost as a ratio of the two all-stems runs.

    python -m bench.all_stems [--tracks 16] [--seconds 30] [--workers 1] [--hidden-channels 16]

``--hidden-channels`` below the seeds' 16 makes the networks cheaper, so that the work one job
shares (listing, decoding, the STFT, actor starts) is a larger part: how the ratio depends on
the network's cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch

from auralflow_dist import audio, runtime, storage
from auralflow_dist.config import ModelConfig
from auralflow_dist.data.generate import synthesize_track
from auralflow_dist.models.registry import build_network
from auralflow_dist.separate import SeparateConfig, run_separation
from auralflow_dist.session import save_network

TARGETS = ("vocals", "drums", "bass", "other")


def make_songs(folder: str, tracks: int, seconds: float, rate: int) -> None:
    for i in range(tracks):
        mixture = synthesize_track(i, seconds, rate)["mixture"]
        audio.write(storage.join(folder, f"song_{i:02d}.wav"), mixture, rate)


def make_bundle(folder: str, config: ModelConfig) -> None:
    for seed, target in enumerate(TARGETS):
        torch.manual_seed(seed)
        member = dataclasses.replace(config, target=target).validate()
        save_network(storage.join(folder, target), member, build_network(member))


def timed(job: SeparateConfig) -> float:
    start = time.perf_counter()
    summary = run_separation(job, echo=lambda line: None)
    if summary.failed:
        raise SystemExit(f"{summary.failed} file(s) failed: {summary.results[0].error}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--workers", type=int, default=1, help="actors per job")
    parser.add_argument("--hidden-channels", type=int, default=16, help="16: the seeds' default")
    args = parser.parse_args()

    config = ModelConfig(sample_rate=args.sample_rate, hidden_channels=args.hidden_channels)
    config = config.validate()
    audio_seconds = args.tracks * args.seconds
    with tempfile.TemporaryDirectory(prefix="bench-all-stems-") as tmp:
        songs, bundle = storage.join(tmp, "songs"), storage.join(tmp, "bundle")
        make_songs(songs, args.tracks, args.seconds, args.sample_rate)
        make_bundle(bundle, config)
        runtime.connect(None)

        def job(model: str, save: str, **options: object) -> SeparateConfig:
            return SeparateConfig(
                model=model,
                audio=songs,
                save=storage.join(tmp, save),
                workers=args.workers,
                residual=True,
                **options,
            )

        runs: dict[str, float] = {}
        runs["4 single-target jobs"] = sum(
            timed(job(storage.join(bundle, t), f"single-{t}")) for t in TARGETS
        )
        runs["all stems, --wiener 0"] = timed(job(bundle, "all-0", wiener=0))
        runs["all stems, --wiener 1"] = timed(job(bundle, "all-1", wiener=1))

    print(
        f"{args.tracks} songs of {args.seconds:g} s at {args.sample_rate} Hz, "
        f"{len(TARGETS)} targets ({config.model_type}, hidden channels "
        f"{config.hidden_channels}; 16 is the seeds' default), "
        f"{args.workers} actor(s) per job, {torch.get_num_threads()} CPU threads"
    )
    for name, seconds in runs.items():
        print(f"  {name:<24} {seconds:7.1f} s  {audio_seconds / seconds:6.2f}x real time")
    single, plain, filtered = runs.values()
    print(f"  all stems in one job vs one job per target: {single / plain:.2f}x faster")
    print(f"  --wiener 1 costs {filtered / plain:.2f}x the time of --wiener 0")


if __name__ == "__main__":
    main()
