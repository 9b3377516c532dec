"""`auralflow test` on a real local Ray (an actor pool scores the test tracks; workers die for real),
and a run that stops part-way: every track still gets a row."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from auralflow_dist import evaluate as evaluation
from auralflow_dist import storage
from auralflow_dist.config import EvalConfig, ModelConfig
from auralflow_dist.data import manifest
from auralflow_dist.data.generate import write_dataset
from auralflow_dist.evaluate import evaluate
from auralflow_dist.models.registry import build_network
from auralflow_dist.session import read_model_config, save_network

CELL = re.compile(r"-?\d+\.\d{4}|nan")
PROGRESS = re.compile(r"\[test\] progress: [0-3]/3 tracks, \w+ elapsed, ETA (\w+|unknown)")


def _test_split_and_session(tmp_path: Path) -> tuple[str, str, list[manifest.Track]]:
    """A dataset of three 2 s test tracks and an untrained tiny model's session."""
    data = str(tmp_path / "data")
    write_dataset(data, tracks=6, seconds=2.0, seed=0, sample_rate=8000, test_fraction=0.5)
    manifest_url, _ = manifest.prepare(data)
    tracks = manifest.tracks(manifest.read_manifest(manifest_url), "test")
    assert len(tracks) == 3
    config = ModelConfig(
        hidden_channels=4,
        sample_rate=8000,
        sample_length=0.5,
        num_fft=256,
        window_size=256,
        hop_length=128,
    ).validate()
    torch.manual_seed(0)
    session = str(tmp_path / "session")
    save_network(session, config, build_network(config))
    return data, session, tracks


def _track_lines(out: str) -> list[str]:
    return [
        line
        for line in out.splitlines()
        if line.startswith("[test] ") and not PROGRESS.fullmatch(line)
    ]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_every_test_track_is_a_row_and_a_broken_one_says_why(tmp_path: Path, capsys) -> None:
    data, session, tracks = _test_split_and_session(tmp_path)
    # A file gone after the manifest was written: that track is an error row, the rest are scored.
    broken = tracks[1]
    os.remove(broken.stem_url("vocals"))

    url, rows = evaluate(EvalConfig(session=session, dataset=data, workers=2))

    assert url == storage.join(session, "eval.csv")
    lines = _track_lines(capsys.readouterr().out)
    assert sorted(line.split(" ", 2)[1] for line in lines) == ["1/3", "2/3", "3/3"]
    (failed,) = [line for line in lines if broken.name in line]
    assert "vocals" in failed and "SI-SDR" not in failed
    names = sorted(t.name for t in tracks)
    assert [r["track"] for r in rows] == [*names, "median", "mean"]
    by_name = {r["track"]: r for r in rows}
    assert set(by_name[broken.name]) == {"track", "error"}
    scored = [by_name[n] for n in names if n != broken.name]
    assert by_name["median"]["vocals_si_sdr"] == pytest.approx(
        float(np.median([r["vocals_si_sdr"] for r in scored]))
    )

    table = list(csv.DictReader(io.StringIO(Path(url).read_text())))
    assert [r["track"] for r in table] == [r["track"] for r in rows]
    assert table[0].keys() == dict.fromkeys(k for r in rows for k in r).keys()
    for row in table:
        if row["track"] == broken.name:
            assert row["error"] and row["vocals_si_sdr"] == ""
        else:
            assert CELL.fullmatch(row["vocals_si_sdr"]) and CELL.fullmatch(row["duration"])
            assert math.isfinite(float(row["vocals_si_sdr"]))
    assert Path(session, "eval.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_dying_worker_is_retried_and_a_track_that_keeps_killing_it_is_an_error_row(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, session, tracks = _test_split_and_session(tmp_path)
    once, always, fine = (t.name for t in tracks)
    # Real deaths: the scoring process exits, once on one track and on every try of another.
    monkeypatch.setenv(evaluation.CRASH_ENV, f"{once}=1,{always}=99")
    monkeypatch.setattr(evaluation, "PROGRESS_INTERVAL_S", 0.5)

    url, rows = evaluate(EvalConfig(session=session, dataset=data, workers=2))

    out = capsys.readouterr().out
    assert any(PROGRESS.fullmatch(line) for line in out.splitlines()), out
    by_name = {r["track"]: r for r in rows}
    assert "error" not in by_name[once] and "error" not in by_name[fine]
    died = f"the worker process died {evaluation.MAX_ATTEMPTS} times scoring this track"
    assert by_name[always] == {"track": always, "error": f"{always}: {died}"}
    table = list(csv.DictReader(io.StringIO(Path(url).read_text())))
    assert [r["track"] for r in table] == [*sorted([once, always, fine]), "median", "mean"]
    for row in table[:3]:
        assert bool(row["error"]) == (row["track"] == always)
        assert (row["vocals_si_sdr"] == "") == (row["track"] == always)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_bundle_scores_every_target_and_their_four_stem_style_average(tmp_path: Path) -> None:
    data, session, _ = _test_split_and_session(tmp_path)
    bundle = tmp_path / "bundle"
    for seed, target in enumerate(("drums", "vocals")):
        config = dataclasses.replace(read_model_config(session), target=target)
        torch.manual_seed(seed)
        save_network(str(bundle / target), config, build_network(config))

    _, rows = evaluate(
        EvalConfig(
            session=str(bundle), dataset=data, workers=2, wiener=1, residual=True, bsseval=True
        )
    )
    median = next(r for r in rows if r["track"] == "median")
    for stem in ("drums", "vocals", "residual"):
        for metric in ("si_sdr", "si_sdri", "sdr", "bsseval_sdr"):
            assert math.isfinite(median[f"{stem}_{metric}"]), (stem, metric)
    for row in rows[:3]:
        for metric in ("si_sdr", "bsseval_sdr"):
            mean = (row[f"drums_{metric}"] + row[f"vocals_{metric}"]) / 2
            assert row[f"average_{metric}"] == pytest.approx(mean)


class _GivesUpAfterOneTrack:
    """A dataset whose run fails (Ray gave up) after the first track's row."""

    def iter_batches(self, **_):
        yield {"row": [json.dumps({"track": "a", "vocals_si_sdr": 1.0})]}
        raise RuntimeError("all workers lost\n<a long traceback>")


def test_rows_got_before_the_run_fails_are_kept_with_a_one_line_reason(capsys) -> None:
    rows, stopped = evaluation._collect(_GivesUpAfterOneTrack(), total=2, targets=["vocals"])
    assert rows == [{"track": "a", "vocals_si_sdr": 1.0}]
    assert stopped == "the evaluation stopped (RuntimeError: all workers lost)"
    assert f"[test] {stopped} after 1/2 tracks" in capsys.readouterr().out


def test_a_stem_silent_in_a_track_is_nan_and_out_of_the_averages(tmp_path: Path) -> None:
    import soundfile as sf

    from auralflow_dist.models.separator import Bundle

    _, session, tracks = _test_split_and_session(tmp_path)
    track = tracks[0]  # an instrumental: its vocals file is silence (the mixture keeps them)
    path = track.stem_url("vocals")
    audio, rate = sf.read(path, dtype="float32")
    sf.write(path, np.zeros_like(audio), rate, subtype="PCM_16")
    bundle = Bundle.from_checkpoints(session, "cpu")
    row = evaluation.score_track(bundle, track, bsseval=False, padding=200, batch_size=8)
    assert all(math.isnan(row[f"vocals_{m}"]) for m in evaluation.METRICS)
    assert math.isfinite(row["residual_si_sdr"])  # the rest of the mixture is there
    audible = evaluation.score_track(bundle, tracks[1], bsseval=False, padding=200, batch_size=8)
    assert math.isfinite(audible["vocals_si_sdr"])
    (median, _) = evaluation._summary_rows([row, audible])
    assert median["vocals_si_sdr"] == audible["vocals_si_sdr"]
