"""``auralflow test``: separate every test-split track whole and score it (``eval.csv``).

Tracks are spread over a Ray Data actor pool, as separation spreads its files, each actor loading
the model once. A track is separated whole through the model's windowed path (network-sized
windows, overlap-add), so memory holds the track's waveforms but never its full spectrogram.
Scores per track, for the target and for the residual (mixture minus estimate, against the sum
of the other stems):

- ``si_sdr``, ``si_snr``: scale-invariant, per channel then averaged;
- ``sdr``: plain energy-ratio SDR over all channels and the whole track;
- ``si_sdri``: SI-SDR improvement over the unprocessed mixture;
- with ``bsseval``: museval's BSSEval v4 SDR (1 s frames, median over frames), what MUSDB
  results are quoted in; target and residual scored together as one track's sources.

Median and mean rows follow the tracks (SiSEC reports medians).

A track that fails is a row with an ``error`` instead of scores, and ``eval.csv`` always has
every track. A worker process that dies (killed, out of memory) is restarted and its track
retried, as in the separation job; one that has killed its worker `MAX_ATTEMPTS` times is an
error row. A progress line (tracks done, elapsed, ETA) is printed every `PROGRESS_INTERVAL_S`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import time
import uuid
from typing import Any

import numpy as np
import ray
import torch

from auralflow_dist import allocator, storage, tables, visualize
from auralflow_dist.attempts import MAX_ATTEMPTS, AttemptLog
from auralflow_dist.config import EvalConfig
from auralflow_dist.data import manifest
from auralflow_dist.data.decode import read_source
from auralflow_dist.errors import AuralflowError
from auralflow_dist.metrics import bsseval_sdr, sdr, si_sdr, si_snr
from auralflow_dist.models.separator import Separator
from auralflow_dist.progress import Ticker, clock, eta

METRICS = ("si_sdr", "si_snr", "sdr", "si_sdri")
PROGRESS_INTERVAL_S = 30.0
# Test hook: ``name=n[,name=n]``: the worker exits (a real crash) on its first n tries of a track.
CRASH_ENV = "AURALFLOW_TEST_CRASH"


def _full(track: manifest.Track, name: str) -> np.ndarray:
    url = track.mixture_url if name == manifest.MIXTURE else track.stem_url(name)
    return read_source(track, url, 0, track.frames)


def score_track(
    model: Separator, track: manifest.Track, bsseval: bool, padding: int, batch_size: int
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


class TrackScorer:
    """A Ray Data pool actor: loads the model once, then scores each track it is handed."""

    def __init__(
        self,
        model_url: str,
        s3: storage.S3Settings,
        bsseval: bool,
        padding: int,
        batch_size: int,
        log: AttemptLog,
        crashes: dict[str, int],
    ) -> None:
        storage.configure(s3)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = Separator.from_checkpoint(model_url, device=device)
        self.bsseval = bsseval
        self.padding, self.batch_size = padding, batch_size
        self.log, self.crashes = log, crashes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        """Rows as JSON: an error row has other columns than a scored one."""
        rows = [self._row(manifest.Track(**json.loads(text))) for text in batch["track"]]
        return {"row": [json.dumps(row) for row in rows]}

    def _row(self, track: manifest.Track) -> dict[str, Any]:
        try:
            deaths = len(self.log.earlier(track.name))  # one track at a time: each one its own
            if deaths >= MAX_ATTEMPTS:
                error = f"{track.name}: the worker process died {deaths} times scoring this track"
                return {"track": track.name, "error": error}
            self.log.begin(track.name, alone=True)
            if deaths < self.crashes.get(track.name, 0):
                os._exit(1)
            return score_track(self.model, track, self.bsseval, self.padding, self.batch_size)
        except AuralflowError as err:
            error = str(err)
        except Exception as err:  # one track must never stop the evaluation
            error = f"{track.name}: {type(err).__name__}: {err}"
        return {"track": track.name, "error": storage.redact(error)}


def _crashes(spec: str) -> dict[str, int]:
    """`CRASH_ENV`'s ``name=n,...`` as ``{name: n}``."""
    pairs = (item.rsplit("=", 1) for item in spec.split(",") if item)
    return {name: int(times) for name, times in pairs}


def _summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    scored = [r for r in rows if "error" not in r]
    keys = [k for k in scored[0] if k != "track"] if scored else []
    out = []
    for name, fn in (("median", np.nanmedian), ("mean", np.nanmean)):
        out.append({"track": name, **{k: float(fn([r[k] for r in scored])) for k in keys}})
    return out


def evaluate(config: EvalConfig) -> tuple[str, list[dict[str, Any]]]:
    """Score every test track; returns the CSV URL and the rows (tracks, then median and mean)."""
    # The scoring actors' working directory is not this process's.
    config = dataclasses.replace(
        config, session=storage.absolute(config.session), dataset=storage.absolute(config.dataset)
    )
    tracks = manifest.tracks(manifest.load_manifest(config.dataset), "test")[: config.max_tracks]
    if not tracks:
        raise AuralflowError(f"{config.dataset}: no test tracks to evaluate")
    Separator.from_checkpoint(config.session, device="cpu")  # fail fast, clearly
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # One track per block and per call, one call at a time per actor: tracks are long units of
    # work, so none waits behind a busy actor while another is idle.
    # Tracks travel in the rows: constructor arguments would go through the object store.
    items = [{"track": json.dumps(dataclasses.asdict(t))} for t in tracks]
    log = AttemptLog(posixpath.dirname(config.csv_url), uuid.uuid4().hex)
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        TrackScorer,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(
            size=max(1, min(config.workers, len(tracks))), max_tasks_in_flight_per_actor=1
        ),
        num_cpus=1,
        num_gpus=config.gpus_per_worker,
        runtime_env=allocator.worker_runtime_env(),
        fn_constructor_kwargs={
            "model_url": config.session,
            "s3": storage.current_settings(),
            "bsseval": config.bsseval,
            "padding": config.padding,
            "batch_size": config.batch_size,
            "log": log,
            "crashes": _crashes(os.environ.get(CRASH_ENV, "")),
        },
    )
    try:
        rows, stopped = _collect(dataset, len(tracks))
    finally:
        log.remove()
    done = {r["track"] for r in rows}
    rows += [
        {"track": t.name, "error": f"not scored: {stopped or 'no result came back'}"}
        for t in tracks
        if t.name not in done
    ]
    rows.sort(key=lambda r: r["track"])
    rows += _summary_rows(rows)
    tables.write_rows(config.csv_url, rows, float_format=".4f")
    _plot(config, rows)
    return config.csv_url, rows


def _collect(dataset: ray.data.Dataset, total: int) -> tuple[list[dict[str, Any]], str]:
    """The rows as they come, a line each, and why the run stopped early ("" if it did not)."""
    rows: list[dict[str, Any]] = []
    start = time.monotonic()

    def line() -> str:
        elapsed = time.monotonic() - start
        return (
            f"[test] progress: {len(rows)}/{total} tracks, {clock(elapsed)} elapsed, "
            f"ETA {eta(len(rows), total, elapsed)}"
        )

    try:
        with Ticker(line, lambda text: print(text, flush=True)).running(PROGRESS_INTERVAL_S):
            for batch in dataset.iter_batches(batch_size=None, prefetch_batches=0):
                for text in batch["row"]:
                    row = json.loads(text)
                    rows.append(row)
                    status = row.get("error") or f"target SI-SDR {row['target_si_sdr']:+.2f} dB"
                    print(f"[test] {len(rows)}/{total} {row['track']}: {status}", flush=True)
    except Exception as err:  # Ray gave up: the rows so far are kept, the rest marked
        first = (str(err).strip().splitlines() or [""])[0]
        stopped = storage.redact(f"the evaluation stopped ({type(err).__name__}: {first})")
        print(f"[test] {stopped} after {len(rows)}/{total} tracks", flush=True)
        return rows, stopped
    return rows, ""


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
