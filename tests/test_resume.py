"""Exact resume: 2 epochs straight equal 1 epoch, a resume and 1 more, weight for weight; and
the minutes budget, which cuts its last epoch short.

On one training worker: with more, `streaming_split` hands blocks to whichever rank asks first,
so even two uninterrupted runs differ in which rank trains on which chunks (an epoch's chunks
stay the same). Parallel decoding is exact: the pipeline preserves block and batch order.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from auralflow_dist import session as sessions
from auralflow_dist import storage
from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict
from auralflow_dist.data.generate import write_dataset
from auralflow_dist.train.state import LoopState
from auralflow_dist.train.trainer import TrainResult, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

MODEL = {
    "hidden_channels": 4,
    "sample_rate": 8000,
    "sample_length": 0.5,
    "num_fft": 256,
    "window_size": 256,
    "hop_length": 128,
    "dropout_p": 0.4,  # dropout draws from torch's RNG every step
}
TRAINER = {
    "max_samples": 32,
    "batch_size": 4,
    "val_chunks": 4,
    "lr": 2e-3,
    "num_workers": 2,
    "shuffle_buffer": 16,  # the local shuffle draws from its own seed
    "pre_fetch": 2,
    "seed": 7,
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("resume-data") / "data")
    write_dataset(root, tracks=4, seconds=3.0, seed=5, sample_rate=8000)
    return root


def _run(session: str, dataset: str, resume: bool = False, **trainer: object) -> TrainResult:
    model = from_dict(ModelConfig, MODEL)
    sessions.write_model_config(session, model)
    return train(session, dataset, model, from_dict(TrainerConfig, {**TRAINER, **trainer}), resume)


def _checkpoint(session: str, epoch: int) -> str:
    (found,) = Path(session, "checkpoints").glob(f"*/checkpoint_epoch_{epoch:04d}")
    return str(found)


def _weights(directory: str) -> dict[str, torch.Tensor]:
    return sessions.load_tensors(directory, "weights.pt")


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, dataset):
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    _run(straight, dataset, max_epochs=2)
    # Epoch 1's images and TensorBoard logs cannot be written (a file where their folder goes):
    # warnings, while the checkpoint is reported and the run resumes from it.
    for blocked in ("spectrogram", "runs"):
        storage.write_bytes(storage.join(stopped, blocked), b"not a folder")
    first = _run(stopped, dataset, max_epochs=1, tensorboard=True, view_epoch=True)
    assert first.epochs == 1 and not first.metrics["out_of_time"]
    spent = LoopState(**sessions.read_state(_checkpoint(stopped, 1)))
    resumed = _run(stopped, dataset, resume=True, max_epochs=2)
    assert first.run == resumed.run  # the same Ray Train run continued
    assert (resumed.trained, resumed.epochs) == (1, 2)
    done = _run(stopped, dataset, resume=True, max_epochs=2).summary()
    assert done.startswith("nothing left to train: all 2 epoch(s) of --max-epochs are done")

    expected, got = _weights(_checkpoint(straight, 2)), _weights(_checkpoint(stopped, 2))
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)
    history = [
        LoopState(**sessions.read_state(_checkpoint(s, 2))).history for s in (straight, stopped)
    ]
    assert [h["train_loss"] for h in history[0]] == pytest.approx(
        [h["train_loss"] for h in history[1]], abs=1e-6
    )
    # The best score carried over the resume, and best/ holds the checkpoint that records it.
    final = LoopState(**sessions.read_state(_checkpoint(stopped, 2)))
    assert final.train_seconds > spent.train_seconds  # the budget counts over resumes
    assert resumed.best_val_loss == pytest.approx(min(h["val_loss"] for h in final.history))
    best = final.best_epoch
    best_weights = _weights(storage.join(stopped, sessions.BEST))
    for name, value in _weights(_checkpoint(stopped, best)).items():
        torch.testing.assert_close(best_weights[name], value, rtol=0, atol=0, msg=name)


def test_the_minutes_budget_ends_the_epoch_mid_way_and_a_spent_one_trains_nothing(
    tmp_path, dataset
):
    session = str(tmp_path / "budget")
    # 6 ms: the first step passes it, and the epoch of 8 steps ends there, validated.
    first = _run(session, dataset, max_epochs=2, max_minutes=1e-4)
    assert first.epochs == 1 and first.metrics["out_of_time"]
    assert first.metrics["train_batches"] == 1
    assert math.isfinite(first.metrics["val_loss"])
    assert "(the --max-minutes budget)" in first.summary()
    assert b'"out_of_time"' in storage.read_bytes(storage.join(session, "train_status.json"))
    spent = LoopState(**sessions.read_state(_checkpoint(session, 1)))
    assert spent.epoch == 1 and spent.global_step == 1 and spent.train_seconds > 6e-3
    assert storage.exists(storage.join(session, sessions.BEST, "weights.pt"))
    # A resume whose budget is already spent trains nothing, and says so with the last figures.
    idle = _run(session, dataset, resume=True, max_epochs=2, max_minutes=1e-4)
    assert (idle.trained, idle.epochs, idle.best_epoch) == (0, 1, 1)
    assert idle.summary().startswith("nothing left to train: the --max-minutes budget is spent")
    assert "nan" not in idle.summary()
