"""``auralflow demo``: the main job end to end on an embedded default.

make a generated dataset -> prepare its manifest -> train a ``SpectrogramNetSimple`` on 2 Ray
Train workers -> evaluate the test split -> separate a folder of new songs with the bulk job ->
print a summary. Local Ray and local storage by default; ``DEMO_STORAGE=s3://bucket/prefix``
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
from auralflow_dist.evaluate import EvalConfig, evaluate
from auralflow_dist.models import count_parameters
from auralflow_dist.models.registry import build_network
from auralflow_dist.runtime import connect
from auralflow_dist.separate import SeparateConfig, run_separation
from auralflow_dist.session import write_model_config
from auralflow_dist.train.trainer import train


@dataclass(frozen=True)
class DemoSettings:
    tracks: int = 10
    seconds: float = 16.0
    songs: int = 3
    song_seconds: float = 30.0
    sample_rate: int = 16000
    model: tuple[tuple[str, object], ...] = (
        ("hidden_channels", 8),
        ("sample_length", 1.0),
        ("num_fft", 512),
        ("window_size", 512),
        ("hop_length", 256),
        ("dropout_p", 0.1),
    )
    trainer: tuple[tuple[str, object], ...] = (
        ("max_epochs", 6),
        ("max_samples", 192),
        ("batch_size", 8),
        ("val_chunks", 32),
        ("lr", 2e-3),
        ("num_workers", 2),
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
        ("workers_min", 2),
        ("workers_max", 2),
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

    write_model_config(session, model_config, overwrite=True)
    params = count_parameters(build_network(model_config))
    t = _step(
        f"training {model_config.model_type} ({params:,} parameters) for "
        f"'{model_config.target}' on {trainer.cluster.workers_max} Ray Train workers"
    )
    connect(None, trainer.cluster.workers_max * trainer.cluster.cpus_per_worker)
    result = train(session, manifest_url, model_config, trainer)
    train_seconds = time.perf_counter() - t

    _step("evaluating the test split")
    eval_url, rows = evaluate(EvalConfig(session=session, dataset=manifest_url, workers=2))
    median = next(r for r in rows if r["track"] == "median")
    target = model_config.target

    _step(f"separating a folder of {s.songs} new songs with the bulk job")
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

    table = {
        "epochs trained": f"{result.epochs} (best {result.best_epoch})",
        "training samples/s": f"{result.metrics.get('samples_per_s', float('nan')):.1f}",
        "validation SI-SDR, mixture": f"{result.metrics['val_si_sdr_mixture']:+.2f} dB",
        "validation SI-SDR, estimate": f"{result.metrics['val_si_sdr']:+.2f} dB",
        "test SI-SDR, mixture (median)": (
            f"{median[f'{target}_si_sdr'] - median[f'{target}_si_sdri']:+.2f} dB"
        ),
        "test SI-SDR, estimate (median)": f"{median[f'{target}_si_sdr']:+.2f} dB",
        "test SI-SDR improvement (median)": f"{median[f'{target}_si_sdri']:+.2f} dB",
        "separation speed": f"{summary.realtime_factor:.1f}x real time",
        "training time": f"{train_seconds:.0f} s",
        "total time": f"{time.perf_counter() - started:.0f} s",
        "session (model, checkpoints, images)": storage.mask_url(session),
        "loss curve": storage.mask_url(storage.join(session, "loss_curve.png")),
        "metrics": storage.mask_url(eval_url),
        "separated stems": storage.mask_url(separated),
    }
    width = max(map(len, table))
    print("\n" + "=" * 78 + "\nauralflow demo summary\n" + "=" * 78)
    for key, value in table.items():
        print(f"{key:<{width}}  {value}")
    return {"table": table, "train": result, "eval": rows, "separation": summary}
