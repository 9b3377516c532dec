"""The main job end to end, as `make demo` runs it, in a smaller setting."""

from __future__ import annotations

import pytest

from auralflow_dist import storage
from auralflow_dist.demo import run_demo

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def test_demo_runs_end_to_end_and_the_estimate_beats_the_mixture(tmp_path, capsys, monkeypatch):
    # A relative workdir, as `make demo` passes: Ray Train workers run in another directory.
    monkeypatch.chdir(tmp_path)
    out = run_demo("demo", quick=True)
    result, rows = out["train"], out["eval"]
    assert result.epochs == 2
    median = next(r for r in rows if r["track"] == "median")
    assert median["vocals_si_sdri"] > 0, median
    assert out["separation"].failed == 0 and out["separation"].ok == 2
    session = storage.join(str(tmp_path / "demo"), "session")
    for name in ("best/weights.pt", "eval.csv", "eval.png", "loss_curve.png"):
        assert storage.exists(storage.join(session, name)), name
    text = capsys.readouterr().out
    assert "auralflow demo summary" in text and "separated stems" in text
