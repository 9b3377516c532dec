"""The session folder and checkpoint layout: one reader and writer per file, atomic, safe to load."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from auralflow_dist import session
from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict
from auralflow_dist.errors import AuralflowError, CheckpointError
from auralflow_dist.models.registry import build_network

SMALL = {
    "hidden_channels": 4,
    "sample_rate": 8000,
    "sample_length": 0.5,
    "num_fft": 256,
    "window_size": 256,
    "hop_length": 128,
}


def small(**kw) -> ModelConfig:
    return from_dict(ModelConfig, {**SMALL, **kw})


def no_temporaries(folder: Path) -> bool:
    """Every write went through `storage.atomic_write`, which leaves no ``.<name>.tmp-*``."""
    return not [p for p in folder.rglob(".*")]


def test_network_round_trip_rebuilds_from_model_json(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = small()
    network = build_network(config)
    session.save_network(str(tmp_path), config, network)
    assert {p.name for p in tmp_path.iterdir()} == {session.WEIGHTS, session.MODEL_JSON}
    assert no_temporaries(tmp_path)
    loaded_config, loaded = session.load_network(str(tmp_path))
    assert loaded_config == config == session.read_model_config(str(tmp_path))
    assert not loaded.training
    for a, b in zip(network.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_weights_with_pickled_code_are_refused(tmp_path: Path) -> None:
    session.save_network(str(tmp_path), small(), build_network(small()))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / session.WEIGHTS)
    with pytest.raises(CheckpointError, match=r"weights\.pt: not a loadable tensor file"):
        session.load_network(str(tmp_path))


def test_weights_not_matching_model_json_are_a_clear_error(tmp_path: Path) -> None:
    session.save_network(str(tmp_path), small(hidden_channels=8), build_network(small()))
    with pytest.raises(CheckpointError, match=r"do not match model\.json"):
        session.load_network(str(tmp_path))
    session.save_tensors(str(tmp_path), session.WEIGHTS, [1, 2])
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        session.load_network(str(tmp_path))


def test_missing_files_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"model\.json not found: not a model or session"):
        session.load_network(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"optimizer\.pt: checkpoint file missing"):
        session.load_tensors(str(tmp_path), session.OPTIMIZER)
    with pytest.raises(CheckpointError, match=r"state\.json: checkpoint file missing"):
        session.read_state(str(tmp_path))
    assert session.read_trainer_config(str(tmp_path)) is None


def test_tensor_files_round_trip(tmp_path: Path) -> None:
    state = {"step": 3, "values": torch.arange(4.0), "nested": [{"lr": 1e-3}]}
    session.save_tensors(str(tmp_path / "ckpt"), session.SCHEDULER, state)
    loaded = session.load_tensors(str(tmp_path / "ckpt"), session.SCHEDULER)
    assert loaded["step"] == 3 and loaded["nested"] == [{"lr": 1e-3}]
    assert torch.equal(loaded["values"], state["values"])
    assert no_temporaries(tmp_path)


def test_state_json_round_trips_infinite_scores(tmp_path: Path) -> None:
    state = {"epoch": 2, "best_val_loss": math.inf, "history": [{"epoch": 1, "val_loss": 0.5}]}
    session.write_state(str(tmp_path), state)
    assert session.read_state(str(tmp_path)) == state
    assert no_temporaries(tmp_path)
    (tmp_path / session.STATE_JSON).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        session.read_state(str(tmp_path))
    (tmp_path / session.STATE_JSON).write_text("{")
    with pytest.raises(CheckpointError, match="not a JSON state file"):
        session.read_state(str(tmp_path))


def test_model_json_is_kept_unless_overwritten(tmp_path: Path) -> None:
    folder = str(tmp_path)
    session.write_model_config(folder, small())
    session.write_model_config(folder, small())  # the same config again: fine
    with pytest.raises(AuralflowError, match="already exists with another config"):
        session.write_model_config(folder, small(hidden_channels=8))
    assert session.read_model_config(folder) == small()
    session.write_model_config(folder, small(hidden_channels=8), overwrite=True)
    assert session.read_model_config(folder).hidden_channels == 8
    assert session.read_model_config(str(tmp_path / session.MODEL_JSON)).hidden_channels == 8


def test_trainer_json_round_trip(tmp_path: Path) -> None:
    trainer = from_dict(TrainerConfig, {"lr": 1e-3, "max_epochs": 3})
    url = session.write_trainer_config(str(tmp_path), trainer)
    assert url.endswith(session.TRAINER_JSON)
    assert session.read_trainer_config(str(tmp_path)) == trainer
    assert json.loads((tmp_path / session.TRAINER_JSON).read_text())["max_epochs"] == 3


def test_resolve_model_dir_prefers_a_sessions_best(tmp_path: Path) -> None:
    assert session.resolve_model_dir(str(tmp_path)) == str(tmp_path)
    session.save_network(str(tmp_path / session.BEST), small(), build_network(small()))
    assert session.resolve_model_dir(str(tmp_path)) == f"{tmp_path}/{session.BEST}"


def test_download_checks_the_weights_sha256_before_writing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    session.save_network(str(src), small(), build_network(small()))
    digest = session.sha256_of(str(src / session.WEIGHTS))
    dest = session.download(f"file://{src}", str(tmp_path / "dst"), sha256=digest.upper())
    assert session.load_network(dest)[0] == small()
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        session.download(str(src), str(tmp_path / "bad"), sha256="0" * 64)
    assert not (tmp_path / "bad").exists()


def test_session_and_cli_import_without_torch() -> None:
    code = (
        "import sys, auralflow_dist.cli, auralflow_dist.session; "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
