import json
import subprocess
import sys

import pytest

from auralflow_dist.cli import main


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
