"""``auralflow demo``: the main job end to end on an embedded default.

make a generated dataset -> prepare its manifest -> train a ``SpectrogramNetSimple`` per stem
(vocals, drums, bass, other), the four Ray Train runs side by side, each on 2 DDP workers ->
score the test split with the bundle -> separate a folder of new songs into every stem with the
bulk job -> print a summary with each stem's scores and the four-stem average. Local Ray and local storage by default; ``DEMO_STORAGE=s3://bucket/prefix``
runs the same against a bucket.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from auralflow_dist import audio, storage
from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict
from auralflow_dist.data.generate import synthesize_track, write_dataset
from auralflow_dist.data.manifest import prepare
from auralflow_dist.errors import AuralflowError
from auralflow_dist.evaluate import EvalConfig, evaluate
from auralflow_dist.models import count_parameters
from auralflow_dist.models.registry import build_network
from auralflow_dist.runtime import connect
from auralflow_dist.separate import SeparateConfig, run_separation
from auralflow_dist.train.targets import resolve_targets, summary_table, train_targets


@dataclass(frozen=True)
class DemoSettings:
    tracks: int = 10
    seconds: float = 16.0
    songs: int = 3
    song_seconds: float = 30.0
    sample_rate: int = 16000
    targets: str = "all"  # `train --targets`: every stem of the dataset
    model: tuple[tuple[str, object], ...] = (
        ("hidden_channels", 8),
        ("sample_length", 1.0),
        ("num_fft", 512),
        ("window_size", 512),
        ("hop_length", 256),
        ("dropout_p", 0.1),
    )
    trainer: tuple[tuple[str, object], ...] = (
        ("max_epochs", 5),
        ("max_samples", 160),
        ("batch_size", 8),
        ("val_chunks", 32),
        ("lr", 2e-3),
        ("num_workers", 1),  # decoding tasks per run: four runs share the machine
        ("decode_cpus", 0.5),
        ("workers_min", 2),
        ("workers_max", 2),
        ("image_freq", 2),
        ("stop_patience", 3),
    )


QUICK = DemoSettings(
    tracks=5,
    seconds=4.0,
    songs=2,
    song_seconds=6.0,
    sample_rate=8000,
    targets="drums,vocals",
    model=(
        ("hidden_channels", 4),
        ("sample_length", 0.5),
        ("num_fft", 256),
        ("window_size", 256),
        ("hop_length", 128),
        ("dropout_p", 0.1),
    ),
    trainer=(
        ("max_epochs", 2),
        ("max_samples", 32),
        ("batch_size", 4),
        ("val_chunks", 8),
        ("lr", 2e-3),
        ("num_workers", 1),
        ("decode_cpus", 0.5),
        ("workers_min", 1),
        ("workers_max", 1),
        ("image_freq", 1),
    ),
)


def _step(text: str) -> float:
    print(f"\n==> {text}", flush=True)
    return time.perf_counter()


def run_demo(workdir: str, quick: bool = False) -> dict[str, object]:
    """Run every stage; returns the summary it prints."""
    s = QUICK if quick else DemoSettings()
    root = os.environ.get("DEMO_STORAGE") or workdir
    data, session = storage.join(root, "dataset"), storage.join(root, "session")
    songs, separated = storage.join(root, "songs"), storage.join(root, "separated")
    model_config = from_dict(ModelConfig, {**dict(s.model), "sample_rate": s.sample_rate})
    trainer = from_dict(TrainerConfig, dict(s.trainer))
    started = time.perf_counter()

    _step(f"generating {s.tracks} multitrack songs of {s.seconds:g} s in {storage.mask_url(data)}")
    write_dataset(data, tracks=s.tracks, seconds=s.seconds, seed=0, sample_rate=s.sample_rate)
    _step("scanning the dataset into a manifest")
    manifest_url, scan = prepare(data)
    print(f"{scan.table.num_rows} tracks -> {manifest_url}")

    targets = resolve_targets(s.targets, manifest_url)
    params = count_parameters(build_network(model_config))
    t = _step(
        f"training a {model_config.model_type} ({params:,} parameters) for each of "
        f"{', '.join(targets)}: {len(targets)} Ray Train runs side by side, "
        f"{trainer.cluster.workers_max} workers each"
    )
    connect(None, len(targets) * trainer.cluster.workers_max * trainer.cluster.cpus_per_worker)
    outcomes = train_targets(session, manifest_url, model_config, trainer, targets)
    print(summary_table(outcomes))
    failed = [o.target for o in outcomes if o.result is None]
    if failed:
        raise AuralflowError(f"the demo's training failed for {', '.join(failed)}")
    train_seconds = time.perf_counter() - t

    _step(f"scoring the test split with the bundle of {len(targets)} models")
    eval_url, rows = evaluate(EvalConfig(session=session, dataset=manifest_url, workers=2))
    median = next(r for r in rows if r["track"] == "median")

    _step(f"separating a folder of {s.songs} new songs into every stem with the bulk job")
    for i in range(s.songs):
        mix = synthesize_track(seed=1000 + i, seconds=s.song_seconds, sample_rate=s.sample_rate)[
            "mixture"
        ]
        audio.write(storage.join(songs, f"Song {i + 1}.wav"), mix, s.sample_rate)
    summary = run_separation(
        SeparateConfig(
            model=session, audio=songs, save=separated, residual=True, workers=2, overwrite=True
        )
    )
    print(summary.describe())

    scores = {
        f"test SI-SDR {stem} (median: estimate, improvement)": (
            f"{median[f'{stem}_si_sdr']:+.2f} dB, {median[f'{stem}_si_sdri']:+.2f} dB"
        )
        for stem in [*targets, "average"]
    }
    table = {
        "epochs trained per stem": ", ".join(
            f"{o.target} {o.result.epochs} (best {o.result.best_epoch})"
            for o in outcomes
            if o.result
        ),
        "validation SI-SDR per stem": ", ".join(
            f"{o.target} {o.result.metrics['val_si_sdr']:+.2f} dB" for o in outcomes if o.result
        ),
        **scores,
        "separation speed (all stems)": f"{summary.realtime_factor:.1f}x real time",
        "training time (all stems)": f"{train_seconds:.0f} s",
        "total time": f"{time.perf_counter() - started:.0f} s",
        "bundle (a session per stem)": storage.mask_url(session),
        "loss curves": storage.mask_url(storage.join(session, "<stem>", "loss_curve.png")),
        "metrics": storage.mask_url(eval_url),
        "separated stems": storage.mask_url(separated),
    }
    width = max(map(len, table))
    print("\n" + "=" * 78 + "\nauralflow demo summary\n" + "=" * 78)
    for key, value in table.items():
        print(f"{key:<{width}}  {value}")
    return {"table": table, "train": outcomes, "eval": rows, "separation": summary}
