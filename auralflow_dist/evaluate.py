"""``auralflow test``: separate every test-split track whole and score it (``eval.csv``).

Tracks are spread over a Ray Data actor pool, as separation spreads its files, each actor loading
the bundle (one model per target, or one model) once. A track is separated whole into every
target through the windowed path (network-sized windows, overlap-add, the Wiener filter where
asked), so memory holds the track's waveforms but never its full spectrogram. Scores per track,
for each target and for the residual (mixture minus the estimates, against the sum of the other
stems), in columns named ``<stem>_<metric>``:

- ``si_sdr``, ``si_snr``: scale-invariant, per channel then averaged;
- ``sdr``: plain energy-ratio SDR over all channels and the whole track;
- ``si_sdri``: SI-SDR improvement over the unprocessed mixture;
- with ``bsseval``: museval's BSSEval v4 SDR (1 s frames, median over frames), what MUSDB
  results are quoted in; every stem of a track scored together as its sources.

With several targets, ``average_<metric>`` is the mean over the targets (not the residual): the
four-stem average MUSDB18 results are quoted in. Median and mean rows follow the tracks (SiSEC
reports medians). A stem silent in a track (vocals in an instrumental; the residual of a bundle
of every stem) is NaN there, as museval leaves it, and left out of the averages and medians.

A track that fails is a row with an ``error`` instead of scores, and ``eval.csv`` always has
every track. A worker process that dies (killed, out of memory) is restarted and its track
retried, as in the separation job; one that has killed its worker `MAX_ATTEMPTS` times is an
error row. A progress line (tracks done, elapsed, ETA) is printed every `PROGRESS_INTERVAL_S`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import posixpath
import time
import uuid
import warnings
from typing import Any

import numpy as np
import ray
import torch

from auralflow_dist import allocator, runtime, storage, tables, visualize
from auralflow_dist.attempts import MAX_ATTEMPTS, AttemptLog
from auralflow_dist.config import EvalConfig, WienerConfig
from auralflow_dist.data import manifest
from auralflow_dist.data.decode import is_silent, read_source
from auralflow_dist.errors import AuralflowError
from auralflow_dist.metrics import bsseval_sdr, sdr, si_sdr, si_snr
from auralflow_dist.models import index
from auralflow_dist.models.separator import Bundle
from auralflow_dist.progress import Ticker, clock, eta

METRICS = ("si_sdr", "si_snr", "sdr", "si_sdri")
PROGRESS_INTERVAL_S = 30.0
# A stem this quiet in a track (mean square, dBFS; training's redraw threshold) is absent, as
# vocals are from an instrumental: it has no SI-SDR to score, so its cells are NaN.
SILENT_DB = -60.0
# Test hook: ``name=n[,name=n]``: the worker exits (a real crash) on its first n tries of a track.
CRASH_ENV = "AURALFLOW_TEST_CRASH"


def _full(track: manifest.Track, name: str) -> np.ndarray:
    url = track.mixture_url if name == manifest.MIXTURE else track.stem_url(name)
    return read_source(track, url, 0, track.frames)


def score_track(
    bundle: Bundle, track: manifest.Track, bsseval: bool, padding: int, batch_size: int
) -> dict[str, Any]:
    """Separate ``track`` whole into every target of ``bundle`` and score each, and the residual."""
    missing = [t for t in bundle.targets if t not in track.stem_names]
    if missing:
        raise AuralflowError(
            f"{track.name}: no {', '.join(map(repr, missing))} stem to score against"
        )
    if track.mixture_url is not None:
        mixture = _full(track, manifest.MIXTURE)
    else:
        mixture = np.sum([_full(track, s) for s in track.stem_names], axis=0, dtype=np.float32)
    start = time.perf_counter()
    estimates = bundle.separate(
        mixture, sample_rate=track.sample_rate, padding=padding, batch_size=batch_size
    )
    took = time.perf_counter() - start
    mix = torch.from_numpy(mixture)
    references = {t: torch.from_numpy(_full(track, t)) for t in bundle.targets}
    references["residual"] = mix - torch.stack(list(references.values())).sum(dim=0)
    row: dict[str, Any] = {
        "track": track.name,
        "duration": track.duration,
        "seconds": took,
        "realtime_factor": track.duration / max(took, 1e-9),
    }
    silent = {part for part, ref in references.items() if is_silent(ref.numpy(), SILENT_DB)}
    for part, ref in references.items():
        if part in silent:  # no score means anything; NaN keeps it out of the median and mean
            row.update({f"{part}_{metric}": math.nan for metric in METRICS})
            continue
        est = estimates[part]
        row[f"{part}_si_sdr"] = float(si_sdr(est, ref).mean())
        row[f"{part}_si_snr"] = float(si_snr(est, ref).mean())
        row[f"{part}_sdr"] = float(sdr(est.reshape(-1), ref.reshape(-1)))
        row[f"{part}_si_sdri"] = row[f"{part}_si_sdr"] - float(si_sdr(mix, ref).mean())
    metrics = list(METRICS)
    if bsseval:
        scores = bsseval_sdr(
            torch.stack([estimates[p] for p in references]),
            torch.stack(list(references.values())),
            track.sample_rate,
        )
        for part, score in zip(references, scores, strict=True):
            row[f"{part}_bsseval_sdr"] = math.nan if part in silent else float(score)
        metrics.append("bsseval_sdr")
    if len(bundle.targets) > 1:
        for metric in metrics:
            values = [row[f"{t}_{metric}"] for t in bundle.targets if t not in silent]
            row[f"average_{metric}"] = float(np.mean(values)) if values else math.nan
    return row


class TrackScorer:
    """A Ray Data pool actor: loads the bundle once, then scores each track it is handed."""

    def __init__(
        self,
        model_url: str,
        wiener: WienerConfig,
        s3: storage.S3Settings,
        bsseval: bool,
        padding: int,
        batch_size: int,
        log: AttemptLog,
        crashes: dict[str, int],
        use_amp: bool,
    ) -> None:
        storage.configure(s3)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.bundle = Bundle.from_checkpoints(model_url, device, use_amp, wiener)
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
            return score_track(self.bundle, track, self.bsseval, self.padding, self.batch_size)
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
    # A column of NaN alone (BSSEval of a residual that is silence: the bundle has every stem)
    # stays NaN; numpy would warn about it on the user's terminal.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, fn in (("median", np.nanmedian), ("mean", np.nanmean)):
            out.append({"track": name, **{k: float(fn([r[k] for r in scored])) for k in keys}})
    return out


def evaluate(config: EvalConfig) -> tuple[str, list[dict[str, Any]]]:
    """Score every test track; returns the CSV URL and the rows (tracks, then median and mean)."""
    # The scoring actors' working directory is not this process's.
    config = dataclasses.replace(
        config,
        session=storage.absolute(index.resolve(config.session, config.model_index)),
        dataset=storage.absolute(config.dataset),
    )
    tracks = manifest.tracks(manifest.load_manifest(config.dataset), "test")[: config.max_tracks]
    if not tracks:
        raise AuralflowError(f"{config.dataset}: no test tracks to evaluate")
    # Fail fast, clearly: every model is there and the bundle holds together.
    targets = sorted(
        Bundle.from_checkpoints(config.session, "cpu", wiener=config.wiener_filter).targets
    )
    runtime.quiet_data_context()
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
            "wiener": config.wiener_filter,
            "s3": storage.current_settings(),
            "bsseval": config.bsseval,
            "padding": config.padding,
            "batch_size": config.batch_size,
            "log": log,
            "crashes": _crashes(os.environ.get(CRASH_ENV, "")),
            "use_amp": config.use_amp,
        },
    )
    try:
        rows, stopped = _collect(dataset, len(tracks), targets)
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
    _plot(config, rows, targets)
    return config.csv_url, rows


def _collect(
    dataset: ray.data.Dataset, total: int, targets: list[str]
) -> tuple[list[dict[str, Any]], str]:
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
                    status = row.get("error") or ", ".join(
                        f"{t} silent"
                        if math.isnan(row[f"{t}_si_sdr"])
                        else f"{t} SI-SDR {row[f'{t}_si_sdr']:+.2f} dB"
                        for t in targets
                    )
                    print(f"[test] {len(rows)}/{total} {row['track']}: {status}", flush=True)
    except Exception as err:  # Ray gave up: the rows so far are kept, the rest marked
        first = (str(err).strip().splitlines() or [""])[0]
        stopped = storage.redact(f"the evaluation stopped ({type(err).__name__}: {first})")
        print(f"[test] {stopped} after {len(rows)}/{total} tracks", flush=True)
        return rows, stopped
    return rows, ""


def _plot(config: EvalConfig, rows: list[dict[str, Any]], targets: list[str]) -> None:
    scored = [r for r in rows if "error" not in r and r["track"] not in ("median", "mean")]
    if not scored:
        return
    bars: dict[str, list[float]] = {}
    for target in targets:
        bars[f"{target} SI-SDR"] = [r[f"{target}_si_sdr"] for r in scored]
        bars[f"{target} SI-SDRi"] = [r[f"{target}_si_sdri"] for r in scored]
    png = visualize.bar_scores(
        [r["track"] for r in scored],
        bars,
        ylabel="dB",
        title=f"test split: {len(scored)} tracks",
    )
    url = config.csv_url.rsplit(".", 1)[0] + ".png"
    storage.write_bytes(url, png)
