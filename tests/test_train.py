"""Training on a real local Ray: 2 CPU workers (gloo), the generated dataset, local and S3."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch

from auralflow_dist import storage
from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict
from auralflow_dist.data.generate import write_dataset
from auralflow_dist.data.manifest import SCHEMA, write_manifest
from auralflow_dist.errors import AuralflowError, ConfigError, StorageError
from auralflow_dist.models.mask_model import SpectrogramMaskModel
from auralflow_dist.session import write_model_config
from auralflow_dist.train.reporting import EpochProgress, EpochReporter
from auralflow_dist.train.state import LoopState
from auralflow_dist.train.trainer import train

# Tests that train on the session's local Ray (slow); the rest run without Ray.
on_ray = pytest.mark.usefixtures("ray_local")

MODEL = {
    "hidden_channels": 4,
    "sample_rate": 8000,
    "sample_length": 0.5,
    "num_fft": 256,
    "window_size": 256,
    "hop_length": 128,
}
TRAINER = {
    "max_samples": 48,
    "batch_size": 4,
    "val_chunks": 8,
    "lr": 2e-3,
    "num_workers": 2,
    "workers_min": 2,
    "workers_max": 2,
    "image_freq": 2,
    "shuffle_buffer": 16,
    "pre_fetch": 2,
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("train-data") / "data")
    write_dataset(root, tracks=6, seconds=4.0, seed=3, sample_rate=8000)
    return root


def model_config(**kw) -> ModelConfig:
    return from_dict(ModelConfig, {**MODEL, **kw})


def trainer_config(**kw) -> TrainerConfig:
    return from_dict(TrainerConfig, {**TRAINER, **kw})


def history(session: str) -> list[dict[str, str]]:
    lines = storage.read_bytes(storage.join(session, "history.csv")).decode().splitlines()
    keys = lines[0].split(",")
    return [dict(zip(keys, line.split(","), strict=True)) for line in lines[1:]]


@pytest.mark.slow
@on_ray
# Local only: the submitted-jobs test trains on S3 (session, data and checkpoints).
@pytest.mark.parametrize("storage_root", ["local"], indirect=True)
def test_short_run_learns_and_fills_the_session_folder(storage_root, dataset, capsys):
    session = storage.join(storage_root, "session")
    write_model_config(session, model_config())
    trainer = trainer_config(
        max_epochs=3,
        tensorboard=True,
        view_iter=True,
        view_epoch=True,
        view_weights=True,
        view_grad=True,
        view_norm=True,
        play_estimate=True,
        play_residual=True,
        view_spec=True,
        view_wav=True,
    )
    result = train(session, dataset, model_config(), trainer)
    assert result.epochs == 3
    m = result.metrics
    assert m["val_si_sdr"] > m["val_si_sdr_mixture"] + 0.5, m
    for name in (
        "model.json",
        "trainer.json",
        "loss_curve.png",
        "history.csv",
        "best/model.json",
        "best/weights.pt",
        "spectrogram/vocals_epoch_0002.png",
        "waveform/vocals_epoch_0002.png",
    ):
        assert storage.exists(storage.join(session, name)), name
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    logged = EventMultiplexer().AddRunsFromDirectory(storage.join(session, "runs")).Reload()
    tags = {t for run in logged.Runs().values() for kind in ("histograms", "scalars")
            for t in run.get(kind, [])}  # fmt: skip
    for wanted in ("grads/encoder.0.conv.0.0.weight", "grad_norm/head.0.bias", "grad_norm/total",
                   "weights/head.0.bias", "weight_norm/head.0.bias", "val/si_sdr"):  # fmt: skip
        assert wanted in tags, (wanted, sorted(tags)[:20])
    checkpoints = storage.find_files(storage.join(session, "checkpoints"))
    assert any(url.endswith("checkpoint_epoch_0003/weights.pt") for url in checkpoints)
    assert [int(float(h["epoch"])) for h in history(session)] == [1, 2, 3]
    out = capsys.readouterr().out
    assert "global" in out  # batch per worker and global, stated in the log
    # The exported best model separates.
    best = SpectrogramMaskModel.from_checkpoint(session, device="cpu")
    assert best.separate(torch.zeros(1, 8000)).shape == (1, 8000)


@pytest.mark.slow
@on_ray
def test_nan_loss_stops_clearly_and_keeps_the_last_good_checkpoint(tmp_path, dataset):
    """Epoch 1 trains on good data; the resumed run meets NaN-filled stems and must stop."""
    session = str(tmp_path / "s")
    write_model_config(session, model_config())
    train(session, dataset, model_config(), trainer_config(max_epochs=1))
    poisoned = tmp_path / "poisoned"
    shutil.copytree(dataset, poisoned)
    for stem in poisoned.glob("*/*/*.wav"):
        frames = sf.info(stem).frames
        sf.write(stem, np.full((frames, 2), np.nan, dtype=np.float32), 8000, subtype="FLOAT")
    with pytest.raises(AuralflowError, match="NaN") as err:
        train(session, str(poisoned), model_config(), trainer_config(max_epochs=3), resume=True)
    assert "last good checkpoint" in str(err.value)
    (ckpt,) = list(Path(session, "checkpoints").glob("*/checkpoint_epoch_0001"))
    assert not list(Path(session, "checkpoints").glob("*/checkpoint_epoch_0002"))
    restored = SpectrogramMaskModel.from_checkpoint(str(ckpt), device="cpu")
    assert all(torch.isfinite(p).all() for p in restored.model.parameters())


@pytest.mark.slow
@on_ray
def test_the_minutes_budget_stops_every_worker_at_the_same_step(tmp_path, dataset):
    """A rank that stopped alone would leave the other waiting in DDP's all-reduce."""
    session = str(tmp_path / "s")
    write_model_config(session, model_config())
    trainer = trainer_config(max_epochs=3, max_minutes=1e-4)  # 6 ms: the first step passes it
    result = train(session, dataset, model_config(), trainer)
    assert result.epochs == 1 and result.metrics["out_of_time"]
    assert result.metrics["train_batches"] == 2  # one step on each of the 2 ranks, of 6


@pytest.mark.slow
@on_ray
def test_a_silent_validation_target_is_warned_of_once(tmp_path, capsys):
    """A valid split without the target picks its best epoch on silence: the log says so."""
    quiet = tmp_path / "quiet"
    write_dataset(
        str(quiet), tracks=6, seconds=4.0, seed=3, sample_rate=8000, splits=("train", "valid")
    )
    stems = list(quiet.glob("valid/*/vocals.wav"))
    assert stems
    for stem in stems:
        x, rate = sf.read(stem, dtype="float32")
        sf.write(stem, np.zeros_like(x), rate)
        mixture = stem.with_name("mixture.wav")
        m, _ = sf.read(mixture, dtype="float32")
        sf.write(mixture, m - x, rate)  # the mixture stays the sum of its stems
    session = str(tmp_path / "s")
    write_model_config(session, model_config())
    result = train(session, str(quiet), model_config(), trainer_config(max_epochs=2))
    assert result.metrics["val_silent_share"] == 1.0
    out = capsys.readouterr().out
    assert out.count("vocals is silent in 100% of the validation chunks") == 1, out[-2000:]


@pytest.mark.slow
@on_ray
def test_bad_inputs_fail_before_training(tmp_path, dataset):
    session = str(tmp_path / "s")
    write_model_config(session, model_config())
    with pytest.raises(StorageError, match="nowhere"):
        train(session, str(tmp_path / "nowhere"), model_config(), trainer_config())
    empty = str(tmp_path / "empty.parquet")
    write_manifest(pa.Table.from_pylist([], schema=SCHEMA), empty)
    with pytest.raises(AuralflowError, match="no train tracks"):
        train(session, empty, model_config(), trainer_config())
    with pytest.raises(ConfigError, match="batch_size"):
        train(session, dataset, model_config(), trainer_config(batch_size=64))


FAULT_SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray.cluster_utils import Cluster
    from ray._private import state
    from auralflow_dist import idle_executor
    from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict
    from auralflow_dist.session import write_model_config
    from auralflow_dist.train.trainer import train

    session, dataset, model, trainer = sys.argv[1], sys.argv[2], eval(sys.argv[3]), eval(sys.argv[4])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    # 3 CPUs a node: after one is lost, the other still fits 2 workers and a decoding task.
    nodes = [cluster.add_node(num_cpus=3) for _ in range(2)]
    ray.init(address=cluster.address, runtime_env=idle_executor.RUNTIME_ENV)
    cluster.wait_for_nodes()
    model = from_dict(ModelConfig, model)
    write_model_config(session, model)
    out = {}
    thread = threading.Thread(target=lambda: out.update(r=train(
        session, dataset, model, from_dict(TrainerConfig, trainer))))
    thread.start()
    first = os.path.join(session, "history.csv")
    while not os.path.exists(first) and thread.is_alive():
        time.sleep(0.2)
    time.sleep(1.0)  # well inside epoch 2
    hosts = {a["Address"]["NodeID"] for a in state.actors().values()
             if a["ActorClassName"].endswith("RayTrainWorker") and a["State"] == "ALIVE"}
    victim = next(n for n in nodes if n.node_id in hosts)
    cluster.remove_node(victim)
    print("removed a node hosting a training worker", flush=True)
    thread.join()
    print("EPOCHS", out["r"].epochs, flush=True)
    ray.shutdown()
    cluster.shutdown()
    os._exit(0)  # the run is what is tested; Ray's exit hooks after a lost node are not
""")


@pytest.mark.slow
@on_ray
def test_a_lost_node_mid_epoch_does_not_fail_the_run(tmp_path, dataset):
    """A ray.cluster_utils.Cluster with two worker nodes, run in its own process."""
    trainer = {
        **TRAINER,
        "max_epochs": 2,  # the node goes in epoch 2, which must then finish on the other
        "max_samples": 96,
        "workers_min": 1,
        "workers_max": 2,
        "max_failures": 3,
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            FAULT_SCRIPT,
            str(tmp_path / "s"),
            dataset,
            repr(MODEL),
            repr(trainer),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "removed a node" in proc.stdout and "EPOCHS 2" in proc.stdout
    assert [int(float(h["epoch"])) for h in history(str(tmp_path / "s"))] == [1, 2]


def test_driver_exports_epoch_metrics_to_prometheus(tmp_path):
    """The exporter turns the session's history into the gauges the dashboards query."""
    from prometheus_client import generate_latest

    from auralflow_dist import observability
    from auralflow_dist.train.trainer import EpochMetricsExporter

    session = str(tmp_path / "s")
    storage.write_bytes(
        storage.join(session, "history.csv"),
        b"epoch,train_loss,val_loss,val_si_sdr,val_si_sdri,samples_per_s,"
        b"data_wait_share,diverged\n1,0.5,0.4,3.5,6.0,12.0,0.05,False\n",
    )
    EpochMetricsExporter(session, pushgateway=None).poll()
    text = generate_latest(observability.REGISTRY).decode()
    assert 'auralflow_val_si_sdr_db{session="' + session + '"} 3.5' in text
    assert "auralflow_train_data_wait_ratio" in text


def test_progress_lines_come_every_interval_with_steps_rate_loss_and_eta():
    now = [0.0]
    progress = EpochProgress(3, 10, total_steps=100, interval=30.0, world=2, clock=lambda: now[0])
    lines = []
    for step in range(1, 41):
        now[0] = 1.0 * step  # one step a second, 4 chunks a step on this rank
        lines.append(progress.step(loss=0.5, samples=4))
    shown = [line for line in lines if line]
    assert len(shown) == 1 and lines[29] == shown[0]  # at 30 s, not before, not again yet
    assert "epoch   3/10" in shown[0] and "step 30/100" in shown[0]
    assert "loss 0.5000" in shown[0] and "8.0 samples/s" in shown[0]  # 4/s times 2 ranks
    assert "ETA 1m10s" in shown[0]


def test_silent_drops_the_checkpoint_line_and_keeps_the_progress(tmp_path, capsys):
    """The seeds' ``--silent`` suppresses checkpoint logging; progress and epoch lines stay."""
    model = SpectrogramMaskModel(model_config(), trainer_config(), device="cpu")
    for silent in (False, True):
        trainer = trainer_config(progress_interval=1e-9, silent=silent)
        reporter = EpochReporter(str(tmp_path / str(silent)), model_config(), trainer)
        reporter.start_epoch(1, total_steps=3)
        for step in range(3):
            reporter.step(step, 0.25, None, samples=4)
        reporter.epoch(LoopState(), _tb_metrics(1), model, None)
        out = capsys.readouterr().out
        assert out.count("step ") == 3 and "val SI-SDR" in out
        assert ("checkpoint saved; best so far" in out) is not silent


def test_view_grad_and_view_norm_log_the_gradients_the_step_clears(tmp_path):
    """Gradients exist only between backward and the optimizer step (which sets them to None):
    the histograms and norms are read there, with or without --clip-grad."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = trainer_config(tensorboard=True, view_grad=True, view_norm=True, clip_grad=False)
    model = SpectrogramMaskModel(model_config(), trainer, device="cpu")
    session = str(tmp_path / "s")
    reporter = EpochReporter(session, model_config(), trainer)
    reporter.start_epoch(1, total_steps=2)
    rate, seconds = MODEL["sample_rate"], MODEL["sample_length"]
    for step in range(2):
        model.set_data(
            torch.randn(2, 1, int(rate * seconds)), torch.randn(2, 1, int(rate * seconds))
        )
        model.forward()
        loss = model.compute_loss()
        model.backward()
        norm = model.optimizer_step(
            reporter.gradient_inspector(first=step == 0), want_norm=reporter.wants_norm
        )
        assert norm is not None and norm > 0
        reporter.step(step + 1, loss, norm, samples=2)
    assert all(p.grad is None for p in model.model.parameters())  # cleared by the step
    reporter.close(1)
    (events,) = Path(session, "runs").rglob("*tfevents*")
    acc = EventAccumulator(str(events), size_guidance={"histograms": 0, "scalars": 0}).Reload()
    names = [n for n, _ in model.model.named_parameters()]
    assert sorted(acc.Tags()["histograms"]) == sorted(f"grads/{n}" for n in names)
    norms = [acc.Scalars(f"grad_norm/{n}")[0].value for n in names]
    assert len(norms) == len(names) and max(norms) > 0
    assert [e.step for e in acc.Scalars("grad_norm/total")] == [1, 2]


def _tb_metrics(epoch: int) -> dict[str, float]:
    return {
        "epoch": epoch,
        "train_loss": 1.0,
        "val_loss": 0.5,
        "val_si_sdr": 1.0,
        "val_si_sdr_mixture": -1.0,
        "val_si_sdri": 2.0,
        "samples_per_s": 1.0,
        "data_wait_share": 0.0,
        "lr": 1e-3,
        "best_epoch": epoch,
    }


def test_tensorboard_uploads_only_each_epochs_new_events(tmp_path, monkeypatch):
    """Epoch N uploads that epoch's events, not the whole history; TensorBoard reads them all."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    uploads: list[tuple[str, int]] = []
    write = storage.write_bytes
    monkeypatch.setattr(
        storage,
        "write_bytes",
        lambda url, data: (uploads.append((url, len(data))), write(url, data)),
    )
    session = str(tmp_path / "s")
    trainer = trainer_config(tensorboard=True, view_epoch=True, view_weights=True, silent=True)
    model = SpectrogramMaskModel(model_config(), trainer, device="cpu")
    reporter = EpochReporter(session, model_config(), trainer)
    loop = LoopState()
    per_epoch = []
    for epoch in range(1, 6):
        loop.history.append(_tb_metrics(epoch))
        del uploads[:]
        reporter.epoch(loop, _tb_metrics(epoch), model, None)
        per_epoch.append(sum(n for url, n in uploads if "/runs/" in url))
    reporter.close(5)
    assert max(per_epoch) < 1.5 * min(per_epoch), per_epoch  # not growing with the history
    runs = EventMultiplexer().AddRunsFromDirectory(str(Path(session, "runs"))).Reload()
    tagged = [run for run, tags in runs.Runs().items() if "val/si_sdr" in tags["scalars"]]
    steps = [e.step for run in tagged for e in runs.Scalars(run, "val/si_sdr")]
    assert sorted(steps) == [1, 2, 3, 4, 5]
