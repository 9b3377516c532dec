import json
import subprocess
import sys

import pytest

from auralflow_dist import config as cfg
from auralflow_dist import flags
from auralflow_dist.cli import _parser, _trainer_config, main
from auralflow_dist.separate import SeparateConfig, from_args


def run(*args: str) -> int:
    return main(list(args))


def test_config_writes_model_json_with_typed_flags(tmp_path, capsys):
    session = tmp_path / "my_model"
    rc = run(
        "config",
        "SpectrogramNetLSTM",
        "--save",
        str(session),
        "--display",
        "--drums",
        "--num-channels",
        "2",
        "--num_hidden_channels",
        "8",
        "--normalize-input",
        "--normalize-output",
        "false",
        "--mask-act-fn",
        "relu",
        "--num-fft",
        "2048",
        "--window-size",
        "2048",
        "--hop-length",
        "1024",
        "--input-axis",
        "0",
    )
    assert rc == 0
    data = json.loads((session / "model.json").read_text())
    assert data["model_type"] == "SpectrogramNetLSTM" and data["target"] == "drums"
    assert data["num_channels"] == 2 and data["hidden_channels"] == 8
    assert data["normalize_input"] is True and data["normalize_output"] is False
    assert data["mask_act_fn"] == "relu" and data["num_fft"] == 2048 and data["input_axis"] == 0
    out = capsys.readouterr().out
    assert "parameters" in out and '"target": "drums"' in out


def test_config_target_by_name(tmp_path):
    assert (
        run("config", "SpectrogramNetSimple", "--save", str(tmp_path / "s"), "--target", "guitar")
        == 0
    )
    assert json.loads((tmp_path / "s" / "model.json").read_text())["target"] == "guitar"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--hidden-channels", "-4"], "--hidden-channels"),
        (["--mask-act-fn", "swish"], "--mask-act-fn"),
        (["--hop-length", "4096"], "--hop-length"),
        (["--vocals", "--bass"], "--target"),
    ],
)
def test_invalid_values_exit_nonzero_naming_the_flag_and_write_nothing(
    tmp_path, capsys, flags, named
):
    session = tmp_path / "bad"
    assert run("config", "SpectrogramNetSimple", "--save", str(session), *flags) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1
    assert not (session / "model.json").exists()


def test_config_never_deletes_an_existing_session(tmp_path, capsys):
    session = tmp_path / "s"
    session.mkdir()
    (session / "checkpoint_000001").mkdir()
    (session / "notes.txt").write_text("keep me")
    assert run("config", "SpectrogramNetSimple", "--save", str(session)) == 0
    # Another config refuses to replace model.json silently; nothing is deleted either way.
    assert run("config", "SpectrogramNetVAE", "--save", str(session)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads((session / "model.json").read_text())["model_type"] == "SpectrogramNetSimple"
    assert run("config", "SpectrogramNetVAE", "--save", str(session), "--overwrite") == 0
    assert (session / "notes.txt").read_text() == "keep me"
    assert (session / "checkpoint_000001").is_dir()


def test_python_dash_m_entrypoint(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "auralflow_dist",
            "config",
            "SpectrogramNetSimple",
            "--save",
            str(tmp_path / "m"),
            "--sample-length",
            "1.5",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "model.json" in out.stdout
    assert json.loads((tmp_path / "m" / "model.json").read_text())["sample_length"] == 1.5


def test_unknown_model_type_is_rejected_by_argparse(tmp_path):
    with pytest.raises(SystemExit) as err:
        run("config", "Demucs", "--save", str(tmp_path / "x"))
    assert err.value.code == 2


def parse(*argv: str):
    return _parser().parse_args(list(argv))


def test_train_flags_set_the_trainer_sections(tmp_path):
    args = parse(
        "train", str(tmp_path), "data", "--workers", "2:4", "--lr", "0.003", "--batch_size", "8",
        "--view-wave", "--augment-remix", "false", "--storage", "s3://b/c",
    )  # fmt: skip
    trainer = _trainer_config(args)
    assert (trainer.cluster.workers_min, trainer.cluster.workers_max) == (2, 4)
    assert (trainer.optim.lr, trainer.data.batch_size, trainer.cluster.storage) == (
        0.003,
        8,
        "s3://b/c",
    )
    assert trainer.logging.view_wav is True and trainer.data.augment_remix is False
    assert cfg.replace(trainer, workers_min=2, workers_max=4, lr=0.003) == trainer
    assert _trainer_config(parse("train", str(tmp_path), "data")) == cfg.TrainerConfig()


def test_bad_workers_flag_names_the_flag(tmp_path, capsys):
    assert run("config", "SpectrogramNetSimple", "--save", str(tmp_path / "s")) == 0
    assert run("train", str(tmp_path / "s"), "data", "--workers", "4:2") == 2
    assert "--workers: must be N or MIN:MAX" in capsys.readouterr().err
    assert run("train", str(tmp_path / "s"), "data", "--workers", "two") == 2
    assert "--workers: expected N or MIN:MAX" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--duration", "inf"], "--duration"),
        (["--block-seconds", "inf"], "--block-seconds"),
        (["--gpus-per-worker", "nan"], "--gpus-per-worker"),
        (["--sr", "4000"], "--sr"),
    ],
)
def test_separate_refuses_non_finite_and_absurd_flags_in_one_line(tmp_path, capsys, flags, named):
    save = tmp_path / "out"
    assert (
        run("separate", str(tmp_path / "M"), str(tmp_path / "A"), "--save", str(save), *flags) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"error: {named}: " in err
    assert not save.exists()


def test_config_refuses_an_infinite_sample_length(tmp_path, capsys):
    session = tmp_path / "s"
    assert (
        run("config", "SpectrogramNetSimple", "--save", str(session), "--sample-length", "inf") == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.endswith("--sample-length: must be a finite number, got inf")
    assert not (session / "model.json").exists()


def test_every_command_takes_its_defaults_from_the_dataclass():
    sweep = cfg.from_dict(cfg.SweepConfig, flags.given(parse("tune", "sw", "ds"), cfg.SweepConfig))
    assert sweep == cfg.SweepConfig("sw", "ds").validate()
    assert (sweep.num_samples, sweep.scheduler, sweep.mode, sweep.resume) == (
        4,
        "asha",
        "max",
        False,
    )
    test = parse("test", "sess", "ds", "--bsseval", "--max-tracks", "3")
    evaluation = cfg.from_dict(cfg.EvalConfig, flags.given(test, cfg.EvalConfig))
    assert evaluation == cfg.EvalConfig("sess", "ds", bsseval=True, max_tracks=3)
    assert (evaluation.workers, evaluation.padding, evaluation.batch_size) == (2, 200, 8)
    separate = from_args(parse("separate", "m", "a", "--save", "out", "--residual"))
    assert separate == SeparateConfig("m", "a", "out", residual=True)
    assert (separate.padding, separate.batch_size, separate.block_seconds) == (200, 8, 30.0)


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["train"], ["--workers WORKERS", "--view-wav [BOOL], --view_wav [BOOL], --view-wave"]),
        (["config"], ["--hidden-channels", "--num-hidden-channels", "{SpectrogramNetSimple,"]),
        (["tune"], ["--scheduler {asha,pbt,fifo}", "(default: 4)", "sweep", "dataset"]),
        (["test"], ["--padding PADDING", "(default: 200)", "--bsseval"]),
        (["separate"], ["--save SAVE", "session_or_model_url", "--format {wav,flac,mp3,ogg,opus}"]),
    ],
)
def test_help_shows_the_dataclass_flags(capsys, argv, shown):
    with pytest.raises(SystemExit):
        run(*argv, "--help")
    text = " ".join(capsys.readouterr().out.split())
    for piece in shown:
        assert piece in text


def test_building_the_parser_does_not_import_torch():
    code = "import sys, auralflow_dist.cli as c; c._parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_preset_writes_both_configs_and_flags_override_it(tmp_path, capsys):
    from auralflow_dist.presets import PRESETS

    session = tmp_path / "fast"
    assert run("config", "--preset", "fast-cpu", "--save", str(session), "--bass") == 0
    preset = PRESETS["fast-cpu"]
    model = json.loads((session / "model.json").read_text())
    trainer = json.loads((session / "trainer.json").read_text())
    assert model["target"] == "bass"
    assert all(model[k] == v for k, v in preset.model.items())
    assert all(trainer[k] == v for k, v in preset.trainer.items())
    # `train` starts from the preset's trainer.json; its own flags still win.
    args = _parser().parse_args(["train", str(session), "data", "--lr", "0.5"])
    assert _trainer_config(args).optim.lr == 0.5
    assert _trainer_config(args).data.batch_size == trainer["batch_size"]
    assert "preset fast-cpu" in capsys.readouterr().out

    # A flag beside the preset overrides it; another preset over the folder refuses to
    # replace either file, and writes neither.
    other = tmp_path / "mine"
    assert run("config", "--preset", "fast-cpu", "--save", str(other), "--hidden-size", "64") == 0
    assert json.loads((other / "model.json").read_text())["hidden_size"] == 64
    before = {p.name: p.read_text() for p in other.iterdir()}
    assert run("config", "--preset", "seeds", "--save", str(other)) == 2
    assert {p.name: p.read_text() for p in other.iterdir()} == before
    assert "already exists with another config" in capsys.readouterr().err


def test_config_without_a_model_type_writes_the_default(tmp_path):
    assert run("config", "--save", str(tmp_path / "s")) == 0
    model = json.loads((tmp_path / "s" / "model.json").read_text())
    assert model["model_type"] == cfg.ModelConfig().model_type
