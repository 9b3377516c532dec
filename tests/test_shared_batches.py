"""Windows of several files in shared forward passes: the same estimates as one file at a time,
in fewer passes, never more than one pass's worth at once."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_separate_job import RATE, noise, tiny_model

from auralflow_dist.models.separator import Bundle
from auralflow_dist.separate import SeparateConfig
from auralflow_dist.separate.shared_batches import SharedBatches
from auralflow_dist.separate.sources import Source
from auralflow_dist.separate.track import TrackSeparator

TOL = 1e-5
WINDOW = tiny_model().config.num_samples


def _bundle() -> Bundle:
    return Bundle([tiny_model(target="drums", seed=1).separator, tiny_model(seed=2).separator])


def _windows(count: int, channels: int, seed: int) -> torch.Tensor:
    return (
        torch.from_numpy(noise(count * WINDOW / RATE, RATE, channels, seed).T.copy())
        .reshape(channels, count, WINDOW)
        .transpose(0, 1)
        .contiguous()
    )


def _side_by_side(shared: SharedBatches, requests: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each request from its own thread, as the files of one actor call it."""
    out: list[torch.Tensor | BaseException] = [None] * len(requests)  # type: ignore[list-item]
    start = threading.Barrier(len(requests))

    def call(i: int) -> None:
        with shared.member():
            start.wait()
            try:
                out[i] = shared(requests[i])
            except BaseException as err:
                out[i] = err

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out  # type: ignore[return-value]


def test_files_side_by_side_share_one_pass_with_the_estimates_of_one_at_a_time() -> None:
    bundle = _bundle()
    requests = [_windows(n, 1, seed) for seed, n in enumerate((1, 2, 1, 3))]
    # A long linger: the pass waits for all four members, so the count of passes is exact.
    shared = SharedBatches(bundle, batch_size=8, linger_s=30.0)
    out = _side_by_side(shared, requests)
    assert (shared.passes, shared.windows) == (1, 7)
    for got, windows in zip(out, requests, strict=True):
        torch.testing.assert_close(got, bundle.estimate(windows, 8), atol=TOL, rtol=0)


def test_a_pass_never_holds_more_than_one_files_pass_would() -> None:
    bundle = _bundle()  # mono networks: a stereo window is two network inputs
    assert bundle.windows_per_pass(2, 4) == 2
    requests = [_windows(1, 2, seed) for seed in range(4)] + [_windows(5, 2, 9)]
    shared = SharedBatches(bundle, batch_size=4, linger_s=30.0)
    counts: list[int] = []
    estimate = bundle.estimate
    bundle.estimate = lambda w, b: counts.append(len(w)) or estimate(w, b)  # type: ignore[method-assign]
    out = _side_by_side(shared, requests)
    # The five-window request goes alone (the bundle splits it as it would anyway).
    assert sorted(counts) == [2, 2, 5]
    for got, windows in zip(out, requests, strict=True):
        torch.testing.assert_close(got, estimate(windows, 4), atol=TOL, rtol=0)


def test_files_of_other_channel_counts_get_passes_of_their_own() -> None:
    bundle = _bundle()
    requests = [_windows(1, 1, 0), _windows(1, 2, 1), _windows(2, 1, 2), _windows(1, 2, 3)]
    shared = SharedBatches(bundle, batch_size=8, linger_s=30.0)
    out = _side_by_side(shared, requests)
    assert shared.passes == 2
    for got, windows in zip(out, requests, strict=True):
        assert got.shape == (len(windows), 2, windows.shape[1], WINDOW)
        torch.testing.assert_close(got, bundle.estimate(windows, 8), atol=TOL, rtol=0)


def test_a_failed_pass_fails_every_file_in_it_and_the_next_pass_runs() -> None:
    bundle = _bundle()
    shared = SharedBatches(bundle, batch_size=8, linger_s=30.0)
    estimate = bundle.estimate

    def fail_once(windows: torch.Tensor, batch_size: int) -> torch.Tensor:
        bundle.estimate = estimate  # type: ignore[method-assign]
        raise RuntimeError("CUDA out of memory")

    bundle.estimate = fail_once  # type: ignore[method-assign]
    out = _side_by_side(shared, [_windows(1, 1, s) for s in range(3)])
    assert all(isinstance(o, RuntimeError) for o in out)
    windows = _windows(2, 1, 5)
    torch.testing.assert_close(shared(windows), estimate(windows, 8), atol=TOL, rtol=0)


@pytest.mark.timeout(120)
def test_short_files_on_one_actor_write_the_stems_one_file_at_a_time_writes(
    tmp_path: Path,
) -> None:
    """The whole file path (decode, resample, overlap-add, encode) with shared passes."""
    lengths = (0.7, 1.3, 0.4, 2.1, 1.0, 0.9)  # seconds: 2-5 windows of 0.5 s each
    sources = []
    for i, seconds in enumerate(lengths):
        path = tmp_path / "in" / f"s{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, noise(seconds, 22050, 2, seed=i), 22050, subtype="FLOAT")
        sources.append(Source(str(path), f"s{i}"))
    bundle = _bundle()

    def job(save: str) -> SeparateConfig:
        return SeparateConfig(
            model="unused", audio=str(tmp_path / "in"), save=str(tmp_path / save), residual=True,
            format="wav", subtype="FLOAT", clip_mode="none",
        ).validate()  # fmt: skip

    alone = TrackSeparator(bundle, job("alone"), model_key="k", run_id="r")
    for s in sources:
        assert alone(s).status == "ok"
    shared = SharedBatches(bundle, batch_size=8, linger_s=30.0)
    together = TrackSeparator(bundle, job("shared"), model_key="k", run_id="r", shared=shared)
    results = [None] * len(sources)

    def run(i: int) -> None:
        results[i] = together(sources[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sources))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert [r.status for r in results] == ["ok"] * len(sources), [r.error for r in results]
    # Whether files met in a pass depends on the threads' timing; the first test shows they do.
    assert 0 < shared.passes <= shared.requests
    for s in sources:
        for stem in ("drums", "vocals", "residual"):
            a, _ = sf.read(tmp_path / "alone" / s.track / f"{stem}.wav")
            b, _ = sf.read(tmp_path / "shared" / s.track / f"{stem}.wav")
            np.testing.assert_allclose(b, a, atol=TOL, rtol=0)
