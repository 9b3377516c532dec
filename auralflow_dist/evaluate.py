"""``auralflow test``: separate every test-split track whole and score it (``eval.csv``).

Tracks are spread over a pool of Ray actors, each loading the model once. A track is separated
whole through the model's windowed path (network-sized windows, overlap-add), so memory holds the
track's waveforms but never its full spectrogram. Scores per track, for the target and for the
residual (mixture minus estimate, against the sum of the other stems):

- ``si_sdr``, ``si_snr``: scale-invariant, per channel then averaged;
- ``sdr``: plain energy-ratio SDR over all channels and the whole track;
- ``si_sdri``: SI-SDR improvement over the unprocessed mixture;
- with ``bsseval``: museval's BSSEval v4 SDR (1 s frames, median over frames), what MUSDB
  results are quoted in; target and residual scored together as one track's sources.

Median and mean rows follow the tracks (SiSEC reports medians).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.util import ActorPool

from auralflow_dist import allocator, storage, visualize
from auralflow_dist.data import manifest
from auralflow_dist.data.decode import read_source
from auralflow_dist.errors import AuralflowError
from auralflow_dist.metrics import bsseval_sdr, sdr, si_sdr, si_snr
from auralflow_dist.models.mask_model import SpectrogramMaskModel

METRICS = ("si_sdr", "si_snr", "sdr", "si_sdri")


@dataclass
class EvalConfig:
    session: str
    dataset: str
    save: str | None = None
    workers: int = 2
    gpus_per_worker: float = 0.0
    bsseval: bool = False
    padding: int = 200
    batch_size: int = 8
    max_tracks: int | None = None

    @property
    def csv_url(self) -> str:
        return self.save or storage.join(self.session, "eval.csv")


def _full(track: manifest.Track, name: str) -> np.ndarray:
    url = track.mixture_url if name == manifest.MIXTURE else track.stem_url(name)
    return read_source(track, url, 0, track.frames)


def score_track(
    model: SpectrogramMaskModel, track: manifest.Track, bsseval: bool, padding: int, batch_size: int
) -> dict[str, Any]:
    """Separate ``track`` whole and score target and residual."""
    target_name = model.config.target
    if target_name not in track.stem_names:
        raise AuralflowError(f"{track.name}: no {target_name!r} stem to score against")
    reference = _full(track, target_name)
    if track.mixture_url is not None:
        mixture = _full(track, manifest.MIXTURE)
    else:
        mixture = np.sum([_full(track, s) for s in track.stem_names], axis=0, dtype=np.float32)
    start = time.perf_counter()
    estimate = model.separate(
        mixture, sample_rate=track.sample_rate, padding=padding, batch_size=batch_size
    )
    took = time.perf_counter() - start
    mix = torch.from_numpy(mixture)
    ref = torch.from_numpy(reference)
    pairs = {"target": (estimate, ref), "residual": (mix - estimate, mix - ref)}
    row: dict[str, Any] = {
        "track": track.name,
        "duration": track.duration,
        "seconds": took,
        "realtime_factor": track.duration / max(took, 1e-9),
    }
    for part, (est, tgt) in pairs.items():
        row[f"{part}_si_sdr"] = float(si_sdr(est, tgt).mean())
        row[f"{part}_si_snr"] = float(si_snr(est, tgt).mean())
        row[f"{part}_sdr"] = float(sdr(est.reshape(-1), tgt.reshape(-1)))
        row[f"{part}_si_sdri"] = row[f"{part}_si_sdr"] - float(si_sdr(mix, tgt).mean())
    if bsseval:
        est = torch.stack([pairs["target"][0], pairs["residual"][0]])
        ref_all = torch.stack([pairs["target"][1], pairs["residual"][1]])
        scores = bsseval_sdr(est, ref_all, track.sample_rate)
        row["target_bsseval_sdr"], row["residual_bsseval_sdr"] = map(float, scores)
    return row


@ray.remote
class _TrackScorer:
    def __init__(self, model_url: str, s3: storage.S3Settings) -> None:
        storage.configure(s3)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = SpectrogramMaskModel.from_checkpoint(model_url, device=device)

    def score(
        self, track: manifest.Track, bsseval: bool, padding: int, batch_size: int
    ) -> dict[str, Any]:
        try:
            return score_track(self.model, track, bsseval, padding, batch_size)
        except AuralflowError as err:
            return {"track": track.name, "error": str(err)}


def _summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    scored = [r for r in rows if "error" not in r]
    keys = [k for k in scored[0] if k != "track"] if scored else []
    out = []
    for name, fn in (("median", np.nanmedian), ("mean", np.nanmean)):
        out.append({"track": name, **{k: float(fn([r[k] for r in scored])) for k in keys}})
    return out


def _write_csv(url: str, rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: (f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in row.items()
            }
        )
    storage.write_bytes(url, text.getvalue().encode())


def evaluate(config: EvalConfig) -> tuple[str, list[dict[str, Any]]]:
    """Score every test track; returns the CSV URL and the rows (tracks, then median and mean)."""
    from auralflow_dist.train.trainer import load_manifest

    # The scoring actors' working directory is not this process's.
    config = dataclasses.replace(
        config, session=storage.absolute(config.session), dataset=storage.absolute(config.dataset)
    )
    tracks = manifest.tracks(load_manifest(config.dataset), "test")[: config.max_tracks]
    if not tracks:
        raise AuralflowError(f"{config.dataset}: no test tracks to evaluate")
    SpectrogramMaskModel.from_checkpoint(config.session, device="cpu")  # fail fast, clearly
    actor = _TrackScorer.options(
        num_gpus=config.gpus_per_worker, num_cpus=1, runtime_env=allocator.worker_runtime_env()
    )
    pool = ActorPool(
        [
            actor.remote(config.session, storage.current_settings())
            for _ in range(max(1, min(config.workers, len(tracks))))
        ]
    )
    rows = []
    work = pool.map_unordered(
        lambda a, t: a.score.remote(t, config.bsseval, config.padding, config.batch_size), tracks
    )
    for done, row in enumerate(work, 1):
        rows.append(row)
        status = row.get("error") or f"target SI-SDR {row['target_si_sdr']:+.2f} dB"
        print(f"[test] {done}/{len(tracks)} {row['track']}: {status}", flush=True)
    rows.sort(key=lambda r: r["track"])
    rows += _summary_rows(rows)
    _write_csv(config.csv_url, rows)
    _plot(config, rows)
    return config.csv_url, rows


def _plot(config: EvalConfig, rows: list[dict[str, Any]]) -> None:
    scored = [r for r in rows if "error" not in r and r["track"] not in ("median", "mean")]
    if not scored:
        return
    png = visualize.bar_scores(
        [r["track"] for r in scored],
        {
            "target SI-SDR": [r["target_si_sdr"] for r in scored],
            "target SI-SDRi": [r["target_si_sdri"] for r in scored],
            "residual SI-SDR": [r["residual_si_sdr"] for r in scored],
        },
        ylabel="dB",
        title=f"test split: {len(scored)} tracks",
    )
    url = config.csv_url.rsplit(".", 1)[0] + ".png"
    storage.write_bytes(url, png)
