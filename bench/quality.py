"""Separation quality on real (sampled) instruments against the oracle mask, on a fixed budget.

The set is Debian's planetblupi MIDI songs rendered part by part with fluidsynth and the
FluidR3 GM soundfont (`auralflow make-dataset --source midi`, `data/midi.py`), each song cut to
its first ``--seconds``: 6 train, 1 valid and 3 test songs. For every target this prints, over
the test songs (medians, as `auralflow test` reports them):

- the mixture's SI-SDR against the target, the oracle's, and the oracle's improvement: the
  ideal ratio mask |S_t| / sum_j |S_j| on the mixture's STFT with the mixture's phase, at the
  model's STFT settings: the best a magnitude mask at those settings can do;
- each recipe's SI-SDR improvement after training each target alone for ``--minutes`` of
  wall-clock (``--max-minutes``: training stops at the step that reaches it) on this machine, one
  Ray Train worker with every CPU (or one GPU), one target after another, scored together by
  `evaluate`, and its share of the oracle's improvement. A recipe is a ``config --preset``
  with fields changed: ``PRESET[:key=value,...]``.

Each recipe's line gives its epoch, batch, rate and loss, and its separation speed.

    python -m bench.quality [--seconds 240] [--minutes 30] [--recipes R ...]
    python -m bench.quality --recipes seeds:model_type=SpectrogramNetLSTM,lr=0.001 fast-cpu
    python -m bench.quality --device cuda --minutes 15
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from auralflow_dist import presets, ray_logs, storage
from auralflow_dist.audio.stft import STFT
from auralflow_dist.config import ModelConfig, TrainerConfig, leaves
from auralflow_dist.data import manifest, midi
from auralflow_dist.data.decode import read_source
from auralflow_dist.evaluate import EvalConfig, evaluate
from auralflow_dist.metrics import si_sdr
from auralflow_dist.models.separator import Separator
from auralflow_dist.runtime import connect
from auralflow_dist.train.targets import train_targets

TARGETS = ("vocals", "drums", "bass", "other")
SILENT_DB = -60.0  # a target quieter than this (mean square, dBFS) in a test song is not scored
# A dataset folder with this file is complete and is reused; renamed when the grouping or the
# split rule changes, so an older render is not scored as if it were this one.
DONE = "_rendered-bass-by-register"
# The seeds' U-Net at batch 8 (batch 32 needs about 18 GB per CPU worker) and lr 0.001, and the
# preset measured for CPUs.
DEFAULT_RECIPES = ("seeds:batch_size=8,lr=0.001", "fast-cpu")


def render(root: str, seconds: float) -> str:
    """The MIDI set cut to ``seconds``, rendered once per workdir; its manifest's URL."""
    data = storage.join(root, f"midi-{seconds:g}s")
    if not storage.exists(storage.join(data, DONE)):
        start = time.perf_counter()
        midi.write_midi_dataset(data, seconds=seconds)
        storage.write_bytes(storage.join(data, DONE), b"")
        print(f"rendered the MIDI set in {time.perf_counter() - start:.0f} s", flush=True)
    url, _ = manifest.prepare(data)
    return url


def _stem(track: manifest.Track, name: str) -> torch.Tensor:
    url = track.mixture_url if name == manifest.MIXTURE else track.stem_url(name)
    return torch.from_numpy(read_source(track, url, 0, track.frames))


def _audible(x: torch.Tensor) -> bool:
    return 10 * math.log10(float(x.square().mean()) + 1e-20) > SILENT_DB


def oracle(manifest_url: str, config: ModelConfig) -> dict[str, dict[str, tuple[float, float]]]:
    """Per target and test song where the target is audible: the SI-SDR of the mixture and of
    the ideal ratio mask. A silent target (a song without a bass part) has no SI-SDR to improve."""
    table = manifest.read_manifest(manifest_url)
    stft = STFT(config.num_fft, config.window_size, config.hop_length)
    scores: dict[str, dict[str, tuple[float, float]]] = {t: {} for t in TARGETS}
    for track in manifest.tracks(table, "test"):
        mixture = _stem(track, manifest.MIXTURE)
        stems = {t: _stem(track, t) for t in TARGETS}
        with torch.inference_mode():
            mix_spec = stft(mixture)
            mags = {t: stft(x).abs() for t, x in stems.items()}
            total = torch.stack(list(mags.values())).sum(0) + 1e-8
            for target, reference in stems.items():
                if not _audible(reference):
                    continue
                estimate = stft.inverse(mix_spec * (mags[target] / total), mixture.shape[-1])
                scores[target][track.name] = (
                    float(si_sdr(mixture, reference).mean()),
                    float(si_sdr(estimate, reference).mean()),
                )
    return scores


@dataclass(frozen=True)
class Recipe:
    """``PRESET[:key=value,...]``: a `config --preset` recipe with model or trainer fields
    changed, e.g. ``seeds:model_type=SpectrogramNetLSTM,lr=0.001``."""

    text: str
    preset: str
    changes: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Recipe:
        name, _, rest = text.partition(":")
        if name not in presets.PRESETS:
            raise argparse.ArgumentTypeError(f"unknown preset {name!r} in {text!r}")
        pairs = [p.split("=", 1) for p in rest.split(",") if p]
        if any(len(p) != 2 for p in pairs):
            raise argparse.ArgumentTypeError(f"expected PRESET[:key=value,...], got {text!r}")
        return cls(text, name, dict(pairs))

    def configs(self, bench: dict[str, object]) -> tuple[ModelConfig, TrainerConfig]:
        """The recipe's configs, with the bench's budget and cluster on top of its trainer."""
        model_keys = leaves(ModelConfig)
        model = {k: v for k, v in self.changes.items() if k in model_keys}
        trainer = {k: v for k, v in self.changes.items() if k not in model_keys}
        return presets.apply(self.preset, model, {**trainer, **bench})


def trained(
    root: str,
    manifest_url: str,
    model: ModelConfig,
    trainer: TrainerConfig,
    targets: tuple[str, ...],
) -> tuple[dict[str, dict[str, float]], float]:
    """SI-SDR improvement per target and test song after the budget, and the training minutes
    per target."""
    session = storage.join(root, f"session-{model.model_type}-{time.strftime('%H%M%S')}")
    start = time.perf_counter()
    for target in targets:
        (outcome,) = train_targets(session, manifest_url, model, trainer, [target])
        if outcome.result is None:
            raise SystemExit(f"training {target} failed: {outcome.error}")
    minutes = (time.perf_counter() - start) / 60 / len(targets)
    _, rows = evaluate(EvalConfig(session=session, dataset=manifest_url, workers=1))
    songs = [r for r in rows if r["track"] not in ("median", "mean")]
    return {t: {r["track"]: r[f"{t}_si_sdri"] for r in songs} for t in targets}, minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/auralflow-quality"))
    parser.add_argument("--seconds", type=float, default=240.0, help="each song's first seconds")
    parser.add_argument(
        "--recipes",
        nargs="+",
        type=Recipe.parse,
        default=[Recipe.parse(r) for r in DEFAULT_RECIPES],
        help=f"PRESET[:key=value,...] each (default: {' '.join(DEFAULT_RECIPES)})",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        choices=TARGETS,
        default=list(TARGETS),
        help="the targets to train and score (default: all four)",
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per target")
    parser.add_argument("--samples", type=int, default=256, help="chunks per epoch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--oracle-only", action="store_true")
    args = parser.parse_args()
    ray_logs.filter_stderr()  # Ray's routine C++ notices, dropped as the command line drops them

    manifest_url = render(args.workdir, args.seconds)
    reference = ModelConfig().validate()  # the seeds' STFT settings: every recipe here shares them
    ceiling = oracle(manifest_url, reference)
    gpu = args.device.startswith("cuda")
    machine = torch.cuda.get_device_name() if gpu else f"{os.cpu_count()} CPUs"
    print(
        f"planetblupi MIDI set, songs cut to {args.seconds:g} s, test split medians; "
        f"STFT {reference.num_fft}/{reference.hop_length}; {platform.node()}, {machine}"
    )
    bench = {
        "max_minutes": args.minutes,
        "max_epochs": 10_000,  # the minutes end training
        "val_chunks": 16,
        "num_workers": 2,
        "gpus_per_worker": 1.0 if gpu else 0.0,
        "cpus_per_worker": 1 if gpu else os.cpu_count() or 1,
        "workers_min": 1,
        "workers_max": 1,
        "max_samples": args.samples,
    }
    results = {}
    if not args.oracle_only:
        connect(None, bench["cpus_per_worker"])
        for recipe in args.recipes:
            model, trainer = recipe.configs(bench)
            results[recipe.text] = trained(
                args.workdir, manifest_url, model, trainer, tuple(args.targets)
            )
            speed = separation_speed(model)
            print(
                f"{recipe.text}: {model.model_type}, {trainer.data.max_samples} chunks of "
                f"{model.sample_length:g} s per epoch, batch {trainer.data.batch_size}, "
                f"lr {trainer.optim.lr:g}, {trainer.optim.criterion} loss; separates one "
                f"target at {speed:.0f}x real time",
                flush=True,
            )
        print(
            f"budget: {args.minutes:g} min of training per target, one target at a time, one worker"
        )
    header = "| target | mixture SI-SDR | oracle SI-SDR | oracle SI-SDRi |"
    rule = "|---|---|---|---|"
    for name, (_, minutes) in results.items():
        header += f" {name} SI-SDRi ({minutes:.1f} min/target) | of oracle |"
        rule += "---|---|"
    print(header)
    print(rule)
    for target in args.targets:
        songs = ceiling[target]  # the songs where the target is audible
        mixture = statistics.median(m for m, _ in songs.values())
        best = statistics.median(o for _, o in songs.values())
        gain = statistics.median(o - m for m, o in songs.values())
        line = (
            f"| {target} ({len(songs)} songs) | {mixture:+.2f} dB | {best:+.2f} dB "
            f"| {gain:+.2f} dB |"
        )
        for improvements, _ in results.values():
            ours = statistics.median(improvements[target][name] for name in songs)
            line += f" {ours:+.2f} dB | {ours / gain:.0%} |"
        print(line)


def separation_speed(config: ModelConfig, seconds: float = 30.0) -> float:
    """x real time of one target on a stereo clip, random weights: what the model's shape costs."""
    separator = Separator(config, device="cpu")
    clip = torch.randn(2, round(seconds * config.sample_rate)) * 0.1
    separator.separate(clip)  # warm-up
    start = time.perf_counter()
    separator.separate(clip)
    return seconds / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
