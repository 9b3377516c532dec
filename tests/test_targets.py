"""``train --targets``: one command trains a bundle of one tiny model per target, side by side,
resumes them, and reports a target that cannot train while the others finish. It runs the real
command line (``config``, then ``train`` with many of the seeds' flags), in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from auralflow_dist import audio
from auralflow_dist.cli import main
from auralflow_dist.config import ModelConfig, replace
from auralflow_dist.data.generate import synthesize_track, write_dataset
from auralflow_dist.errors import ConfigError
from auralflow_dist.models.registry import build_network
from auralflow_dist.models.separator import Bundle
from auralflow_dist.session import read_model_config, write_model_config
from auralflow_dist.train.targets import resolve_targets

pytestmark = pytest.mark.usefixtures("ray_local")
MODEL = ModelConfig(
    sample_rate=8000,
    num_fft=256,
    window_size=256,
    hop_length=128,
    sample_length=0.5,
    hidden_channels=4,
)
FLAGS = [
    "--max-samples=16",
    "--batch-size=4",
    "--val-chunks=4",
    "--workers=1",
    "--decode-cpus=0.5",
    "--num-workers=1",  # one decoding task per run: four runs share two cores
    "--image-freq=100",
    "--criterion=si-sdr",
    "--min_delta=0.02",
    "--view-wave",
    "--clip-grad=true",
    "--use-amp=false",
    "--silent",
    "--display",
]
CONFIG = [
    "--sample-rate=8000",
    "--sample-length=0.5",
    "--num-fft=256",
    "--window-size=256",
    "--hop-length=128",
    "--hidden-channels=4",
]
STEMS = ["bass", "drums", "other", "vocals"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("targets_data") / "data")
    write_dataset(url, tracks=4, seconds=3.0, seed=0, sample_rate=8000)
    return url


def test_targets_name_the_datasets_stems(dataset: str) -> None:
    assert resolve_targets("all", dataset) == STEMS
    assert resolve_targets("vocals, drums", dataset) == ["vocals", "drums"]
    with pytest.raises(ConfigError, match="piano not among the dataset's stems"):
        resolve_targets("vocals,piano", dataset)
    with pytest.raises(ConfigError, match="twice"):
        resolve_targets("vocals,vocals", dataset)


@pytest.mark.slow
def test_one_command_trains_every_target_resumes_them_and_reports_a_failed_one(
    dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = tmp_path / "session"
    assert main(["config", "SpectrogramNetSimple", f"--save={session}", *CONFIG]) == 0
    assert read_model_config(str(session)) == MODEL
    assert main(["train", str(session), dataset, "--targets=all", *FLAGS, "--max-epochs=1"]) == 0
    text = capsys.readouterr().out
    for target in STEMS:
        assert f"[train {target}] done: trained 1 epoch(s)" in text
    assert "checkpoint saved" not in text  # --silent
    saved = json.loads((session / "vocals" / "trainer.json").read_text())
    assert saved["criterion"] == "si_sdr" and saved["min_delta"] == 0.02
    assert saved["view_wav"] is True and saved["clip_grad"] is True and saved["use_amp"] is False
    assert Bundle.from_checkpoints(str(session), "cpu").targets == STEMS

    # Resumed, with a bass model.json of another shape in the way: bass fails, vocals goes on.
    (epoch_1,) = session.glob("vocals/checkpoints/*/checkpoint_epoch_0001")
    kept = epoch_1.stat().st_mtime_ns
    write_model_config(
        str(session / "bass"), replace(MODEL, target="bass", hidden_channels=2), overwrite=True
    )
    args = ["train", str(session), dataset, "--targets=bass,vocals", *FLAGS, "--max-epochs=2"]
    assert main([*args, "--resume"]) == 2  # a failed target fails the command
    out = capsys.readouterr()
    text = out.out + out.err
    assert "[train bass] failed:" in text and "already exists with another config" in text
    assert "1 of 2 target(s) failed: bass" in text
    assert "[train vocals] done: trained 2 epoch(s)" in text
    assert epoch_1.stat().st_mtime_ns == kept  # epoch 1 was not trained again
    assert next(session.glob("vocals/checkpoints/*/checkpoint_epoch_0002"))

    # The bundle by name: a model index over these checkpoints; `separate` and fine-tuning
    # (`--init-from`) take the name. With a learning rate of 1e-12 the fine-tuned weights are
    # the vocals model's own, so they started from it.
    index_url = str(tmp_path / "index.json")
    assert main(["index", str(session), "--name=tiny", f"--save={index_url}"]) == 0
    song = tmp_path / "song.wav"
    audio.write(str(song), synthesize_track(7, 2.0, 8000)["mixture"], 8000)
    out_dir = tmp_path / "separated"
    named = ["tiny", str(song), f"--save={out_dir}", f"--model-index={index_url}", "--workers=1"]
    assert main(["separate", *named]) == 0
    assert sorted(p.name for p in (out_dir / "song").glob("*.wav")) == [f"{t}.wav" for t in STEMS]
    tuned = tmp_path / "tuned"
    assert main(["config", "SpectrogramNetSimple", f"--save={tuned}", *CONFIG]) == 0
    fine_tune = ["--init-from=tiny", f"--model-index={index_url}", "--lr=1e-12"]
    assert main(["train", str(tuned), dataset, *FLAGS, "--max-epochs=1", *fine_tune]) == 0
    start = torch.load(session / "vocals" / "best" / "weights.pt", weights_only=True)
    end = torch.load(tuned / "best" / "weights.pt", weights_only=True)
    trained = [n for n, _ in build_network(MODEL).named_parameters()]
    for name in trained:  # parameters; batch norm's running statistics move without the lr
        torch.testing.assert_close(end[name], start[name], atol=1e-6, rtol=0)
    assert main(["train", str(tuned), dataset, *FLAGS, "--init-from=" + str(dataset)]) == 2
    assert "no trained model" in capsys.readouterr().err
