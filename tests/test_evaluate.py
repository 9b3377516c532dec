"""`auralflow test` on a real local Ray: a Ray Data actor pool scores the test tracks."""

from __future__ import annotations

import csv
import io
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from auralflow_dist import storage
from auralflow_dist.config import EvalConfig, ModelConfig
from auralflow_dist.data import manifest
from auralflow_dist.data.generate import write_dataset
from auralflow_dist.evaluate import evaluate
from auralflow_dist.models.registry import build_network
from auralflow_dist.session import save_network

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

CELL = re.compile(r"-?\d+\.\d{4}|nan")


def test_every_test_track_is_a_row_and_a_broken_one_says_why(tmp_path: Path, capsys) -> None:
    data = str(tmp_path / "data")
    write_dataset(data, tracks=6, seconds=2.0, seed=0, sample_rate=8000, test_fraction=0.5)
    manifest_url, _ = manifest.prepare(data)
    tracks = manifest.tracks(manifest.read_manifest(manifest_url), "test")
    assert len(tracks) == 3
    # A file gone after the manifest was written: that track is an error row, the rest are scored.
    broken = tracks[1]
    os.remove(broken.stem_url("vocals"))
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

    url, rows = evaluate(EvalConfig(session=session, dataset=data, workers=2))

    assert url == storage.join(session, "eval.csv")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[test] ")]
    assert sorted(line.split(" ", 2)[1] for line in lines) == ["1/3", "2/3", "3/3"]
    (failed,) = [line for line in lines if broken.name in line]
    assert "vocals" in failed and "SI-SDR" not in failed
    names = sorted(t.name for t in tracks)
    assert [r["track"] for r in rows] == [*names, "median", "mean"]
    by_name = {r["track"]: r for r in rows}
    assert set(by_name[broken.name]) == {"track", "error"}
    scored = [by_name[n] for n in names if n != broken.name]
    assert by_name["median"]["target_si_sdr"] == pytest.approx(
        float(np.median([r["target_si_sdr"] for r in scored]))
    )

    table = list(csv.DictReader(io.StringIO(Path(url).read_text())))
    assert [r["track"] for r in table] == [r["track"] for r in rows]
    assert table[0].keys() == dict.fromkeys(k for r in rows for k in r).keys()
    for row in table:
        if row["track"] == broken.name:
            assert row["error"] and row["target_si_sdr"] == ""
        else:
            assert CELL.fullmatch(row["target_si_sdr"]) and CELL.fullmatch(row["duration"])
            assert math.isfinite(float(row["target_si_sdr"]))
    assert Path(session, "eval.png").read_bytes().startswith(b"\x89PNG")
