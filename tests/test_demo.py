"""The main job end to end, as `make demo` runs it, in a smaller setting."""

from __future__ import annotations

import pytest

from auralflow_dist.demo import run_demo

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def test_demo_trains_a_bundle_and_the_average_estimate_beats_the_mixture(
    tmp_path, capsys, monkeypatch
):
    # A relative workdir, as `make demo` passes: Ray Train workers run in another directory.
    monkeypatch.chdir(tmp_path)
    out = run_demo("demo", quick=True)
    outcomes, rows = out["train"], out["eval"]
    # The quick setting trains two of the four stems (`make demo` trains all).
    assert [(o.target, o.result.epochs) for o in outcomes] == [("drums", 2), ("vocals", 2)]
    median = next(r for r in rows if r["track"] == "median")
    assert median["average_si_sdri"] > 0, median
    assert out["separation"].failed == 0 and out["separation"].ok == 2
    root = tmp_path / "demo"
    for stem in ("drums", "vocals"):
        for name in ("best/weights.pt", "loss_curve.png"):
            assert (root / "session" / stem / name).is_file(), (stem, name)
        assert (root / "separated" / "Song 1" / f"{stem}.wav").is_file()
    assert (root / "session" / "eval.csv").is_file() and (root / "session" / "eval.png").is_file()
    text = capsys.readouterr().out
    assert "auralflow demo summary" in text and "test SI-SDR average" in text
