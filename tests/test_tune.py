"""Hyperparameter sweeps: the space file, the sweep settings, the results, and real sweeps.

The fast tests check everything a user can get wrong before a trial starts. The slow ones run
real Tune sweeps of real Ray Train runs on a generated dataset (8 kHz, a 4-channel U-Net) into a
local folder and onto the S3 test server, crash trials on purpose, and kill a sweep's driver
half-way to resume it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import ray

from auralflow_dist import idle_executor, runtime, storage
from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict, replace, to_json
from auralflow_dist.data.generate import write_dataset
from auralflow_dist.errors import AuralflowError, ConfigError
from auralflow_dist.session import read_model_config, read_trainer_config
from auralflow_dist.tune import SweepConfig, parse_space, read_space, run_sweep
from auralflow_dist.tune import results as tune_results
from auralflow_dist.tune import space as tune_space

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
TINY_MODEL = ModelConfig(
    sample_rate=8000,
    num_fft=256,
    window_size=256,
    hop_length=128,
    sample_length=0.5,
    hidden_channels=4,
)
TINY_TRAINER = from_dict(
    TrainerConfig,
    {
        "max_samples": 16,
        "val_chunks": 4,
        "batch_size": 4,
        "max_epochs": 2,
        "num_workers": 1,
        "decode_cpus": 0.5,
        "image_freq": 100,
        "silent": True,
    },
)
SPACE = {"trainer.lr": {"loguniform": [1e-4, 1e-2]}, "model.hidden_channels": {"choice": [2, 4]}}


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def write_base(url: str) -> None:
    """A session with the tiny model.json and trainer.json (the sweep's base configs)."""
    storage.write_bytes(storage.join(url, "model.json"), to_json(TINY_MODEL).encode())
    storage.write_bytes(storage.join(url, "trainer.json"), to_json(TINY_TRAINER).encode())


# ----------------------------------------------------------------------------------------------
# The space file


def test_space_reads_yaml_and_json_alike(tmp_path: Path) -> None:
    text = """\
    lr: {loguniform: [1e-4, 1e-2]}          # YAML reads 1e-4 as a string: still a number here
    model.hidden_channels: {choice: [8, "16"]}
    num_fft: {grid: [512, 1024]}
    data.augment_gain: {choice: [true, "false"]}
    trainer.batch_size: {randint: [4, 9]}
    dropout_p: {uniform: [0.1, 0.5]}
    """
    space = read_space(write(tmp_path / "space.yaml", textwrap.dedent(text)))
    assert [p.name for p in space.params] == [
        "trainer.lr",
        "model.hidden_channels",
        "model.num_fft",
        "trainer.augment_gain",
        "trainer.batch_size",
        "model.dropout_p",
    ]
    assert space.params[0].values == (1e-4, 1e-2)
    assert space.params[1].values == (8, 16)
    assert space.params[3].values == (True, False)
    assert space.params[4].candidates == (4, 8)  # randint's high is exclusive
    as_json = read_space(write(tmp_path / "space.json", json.dumps(space.to_dict())))
    assert as_json.params == space.params


def test_example_spaces_are_valid_and_alike() -> None:
    yaml_space = read_space(str(REPO / "jobs" / "examples" / "space.yaml"))
    json_space = read_space(str(REPO / "jobs" / "examples" / "space.json"))
    assert yaml_space.params == json_space.params
    yaml_space.check(ModelConfig(), TrainerConfig())
    assert set(yaml_space.mutations()["trainer"]) == {"lr", "batch_size", "augment_gain"}


def test_space_feeds_tune_and_trials(tmp_path: Path) -> None:
    from ray.tune.search.sample import Categorical, Float

    space = parse_space(
        {
            "trainer.lr": {"loguniform": [1e-4, 1e-2]},
            "model.hidden_channels": {"choice": [2, 4]},
            "model.num_fft": {"grid": [256, 512]},
        }
    )
    random = space.param_space("random")
    assert isinstance(random["trainer"]["lr"], Float)
    assert isinstance(random["model"]["hidden_channels"], Categorical)
    assert random["model"]["num_fft"] == {"grid_search": [256, 512]}
    assert space.param_space("grid")["model"]["hidden_channels"] == {"grid_search": [2, 4]}
    with pytest.raises(ConfigError, match="optuna cannot search grid entries"):
        space.param_space("optuna")
    assert set(space.mutations()["trainer"]) == {"lr"}  # the network stays as cloned

    sample = {"model": {"hidden_channels": 2, "num_fft": 512}, "trainer": {"lr": 3e-3}}
    base = ModelConfig(window_size=256, hop_length=128)
    model, trainer = space.configs(sample, base, TrainerConfig())
    assert (model.hidden_channels, model.num_fft, trainer.optim.lr) == (2, 512, 3e-3)
    assert space.flat(sample) == {
        "trainer.lr": 3e-3,
        "model.hidden_channels": 2,
        "model.num_fft": 512,
    }


BAD_SPACES = [
    ({"trainer.lrr": {"choice": [0.1]}}, "trainer.lrr", "did you mean lr"),
    ({"hiden_channels": {"choice": [4]}}, "hiden_channels", "did you mean hidden_channels"),
    ({"optim.lr": {"choice": [0.1]}}, "optim.lr", "unknown section"),
    ({"lr": {"normal": [0, 1]}}, "lr", "one of choice, grid"),
    ({"lr": [0.1, 0.2]}, "lr", "expected {distribution: values}"),
    ({"lr": {"choice": [0.1], "grid": [0.2]}}, "lr", "expected {distribution: values}"),
    ({"lr": {"choice": []}}, "lr", "non-empty list"),
    ({"lr": {"uniform": [0.1]}}, "lr", r"needs \[low, high\]"),
    ({"lr": {"uniform": [0.2, 0.1]}}, "lr", "low < high"),
    ({"lr": {"loguniform": [0.0, 0.1]}}, "lr", "low > 0"),
    ({"hidden_channels": {"uniform": [2, 8]}}, "hidden_channels", "use randint or choice"),
    ({"lr": {"randint": [1, 5]}}, "lr", "does not fit a float"),
    ({"hidden_channels": {"choice": [4, "many"]}}, "hidden_channels", "expected an integer"),
    ({"max_epochs": {"choice": [2, 4]}}, "max_epochs", "--max-epochs"),
    ({"lr": {"choice": [0.1]}, "trainer.lr": {"choice": [0.2]}}, "trainer.lr", "given twice"),
    ({}, "space", "expected a mapping"),
]


@pytest.mark.parametrize(("data", "field", "message"), BAD_SPACES)
def test_bad_space_is_one_clear_error(data: dict, field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_space(data, "my_space.yaml")
    assert info.value.field == field
    assert "my_space.yaml" in str(info.value)
    assert "\n" not in str(info.value)


def test_ambiguous_bare_name_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass
    class Overlapping:  # no shipped field name is in both configs yet; a future one would be
        lr: float = 0.1
        hidden_channels: int = 4

    monkeypatch.setitem(tune_space.SECTIONS, "trainer", Overlapping)
    with pytest.raises(ConfigError, match=r"ambiguous: write model\.hidden_channels"):
        parse_space({"hidden_channels": {"choice": [4]}})


@pytest.mark.parametrize(
    ("suffix", "text", "message"),
    [
        (".yaml", "lr: {choice: [0.1]\n", "not valid YAML at line"),
        (".json", '{"lr": ', "not valid JSON"),
        (".toml", "lr = 1", "expected a .json, .yaml or .yml file"),
    ],
)
def test_unreadable_space_file_names_the_file(
    tmp_path: Path, suffix: str, text: str, message: str
) -> None:
    path = write(tmp_path / f"space{suffix}", text)
    with pytest.raises(ConfigError, match=message) as info:
        read_space(path)
    assert path in str(info.value)


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"dropout_p": {"choice": [0.2, 1.5]}}, "model.dropout_p", "1.5 is invalid"),
        ({"lr": {"uniform": [-0.1, 0.1]}}, "trainer.lr", "lr: must be positive"),
        (
            {"model_type": {"choice": ["SpectrogramNetSimple", "UNet9"]}},
            "model.model_type",
            "unknown model 'UNet9'",
        ),
        ({"criterion": {"choice": ["si_sdr", "l3"]}}, "trainer.criterion", "unknown criterion"),
        # The base's window (1024) is wider than either FFT and the space does not move it.
        ({"num_fft": {"choice": [256, 512]}}, "model.num_fft", "window_size: must be in"),
    ],
)
def test_values_the_configs_reject_fail_before_any_trial(
    data: dict, field: str, message: str
) -> None:
    space = parse_space(data)
    with pytest.raises(ConfigError, match=message) as info:
        space.check(ModelConfig(), TrainerConfig())
    assert info.value.field == field


def test_stft_combinations_pass_the_check_and_fail_their_own_trial() -> None:
    space = parse_space(
        {
            "num_fft": {"grid": [256, 512]},
            "window_size": {"grid": [256, 512]},
            "hop_length": {"choice": [128]},
        }
    )
    space.check(ModelConfig(), TrainerConfig())  # each value works with some other value
    sample = {"model": {"num_fft": 256, "window_size": 512, "hop_length": 128}}
    with pytest.raises(ConfigError, match=r"window_size: must be in 1\.\.num_fft"):
        space.configs(sample, ModelConfig(), TrainerConfig())


def test_pbt_needs_a_trainer_field_to_mutate() -> None:
    with pytest.raises(ConfigError, match="pbt needs a trainer field"):
        parse_space({"hidden_channels": {"choice": [4, 8]}}).mutations()


# ----------------------------------------------------------------------------------------------
# Sweep settings


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"scheduler": "hyperband"}, "scheduler", "choose from asha, pbt, fifo"),
        ({"search": "bayes"}, "search", "choose from random, grid, optuna"),
        ({"metric": "val_sdr"}, "metric", "unknown metric"),
        ({"metric": "val_loss", "mode": "max"}, "mode", "use min"),
        ({"num_samples": 0}, "num_samples", "at least 1"),
        ({"max_concurrent": -1}, "max_concurrent", "must not be negative"),
        ({"max_epochs": 0}, "max_epochs", "at least 1"),
        ({"model_type": "UNet9"}, "model_type", "unknown model"),
        ({"scheduler": "pbt", "search": "optuna"}, "search", "optuna cannot steer a pbt sweep"),
    ],
)
def test_sweep_config_rejects_bad_settings(changes: dict, field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        SweepConfig("sweep", "data", space="s.yaml", **changes).validate()
    assert info.value.field == field


def test_sweep_config_takes_the_metrics_direction() -> None:
    assert SweepConfig("s", "d", metric="val_loss").validate().mode == "min"
    assert SweepConfig("s", "d").validate().mode == "max"


def test_bad_space_stops_the_sweep_before_ray_or_any_write(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    space = write(tmp_path / "space.yaml", "trainer.lr: {loguniform: [0, 0.1]}\n")
    ray_before = ray.is_initialized()
    with pytest.raises(ConfigError, match="loguniform needs low > 0"):
        run_sweep(SweepConfig(str(sweep_dir), str(tmp_path / "data"), space=space))
    assert not sweep_dir.exists()
    assert ray.is_initialized() == ray_before


# ----------------------------------------------------------------------------------------------
# Results


def test_results_table_puts_the_best_first_and_errors_last(tmp_path: Path) -> None:
    space = parse_space({"lr": {"choice": [0.1, 0.01]}})
    found = [
        tune_results.TrialOutcome(
            "t2", "errored", {"trainer": {"lr": 0.1}}, error="criterion: kl_div needs a VAE"
        ),
        tune_results.TrialOutcome(
            "t0", "stopped", {"trainer": {"lr": 0.1}}, 1, -3.0, -3.0, history=[(1, -3.0)]
        ),
        tune_results.TrialOutcome(
            "t1", "ok", {"trainer": {"lr": 0.01}}, 2, 1.5, 1.5, history=[(1, 0.5), (2, 1.5)]
        ),
    ]
    best = tune_results.best_outcome(found, "max")
    assert best is not None and best.trial_id == "t1"
    url = tune_results.write_results(str(tmp_path), found, space, "val_si_sdr", "max", "t1")
    frame = pd.read_csv(url)
    assert list(frame["trial_id"]) == ["t1", "t0", "t2"]
    assert list(frame.columns) == [
        "trial_id",
        "status",
        "epochs",
        "final_val_si_sdr",
        "best_val_si_sdr",
        "trainer.lr",
        "error",
    ]
    assert frame["error"].iloc[2] == "criterion: kl_div needs a VAE"
    assert list(pd.read_parquet(tmp_path / "results.parquet")["trial_id"]) == ["t1", "t0", "t2"]
    assert (tmp_path / "metric_per_trial.png").read_bytes().startswith(PNG)


def test_error_line_is_the_trials_own_reason() -> None:
    try:
        raise RuntimeError("wrapped") from None
    except RuntimeError as err:
        err.cause = ConfigError("window_size", "must be in 1..num_fft")
        assert tune_results.error_line(err) == "window_size: must be in 1..num_fft"
    assert (
        tune_results.error_line(ValueError("Traceback\n  x\nValueError: bad\n"))
        == "ValueError: bad"
    )
    wrapped = "Traceback\nauralflow_dist.errors.ConfigError: criterion: kl_div needs a VAE"
    assert tune_results.error_line(RuntimeError(wrapped)) == "criterion: kl_div needs a VAE"


DEAD_WORKER = (
    "training failed: The actor is dead because its worker process has died. Worker exit type: "
    "SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error code 2. "
    "End of file. Some common causes include: (1) the process was killed by the OOM killer due "
    "to high memory usage, (2) ray stop --force was called, or (3) the worker crashed"
)
OOM_PARAGRAPH = """\
9 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 192.0.2.2, \
ID: 197605c2f6c1da415cfa07b216a7ac32b63e355078047f550a970a30) was 7.11GB used / 23.59GB limit (0.301368)
OOM kill reason: Memory usage 7613583360B exceeded threshold of 7597420032B (30.0% of 25324732416B limit)
Object store memory usage: [- objects spillable: 13
- bytes spillable: 9617
]
Ray killed 9 worker(s) based on the killing policy
Selected to kill: (Actor(f036085e279125e98604650d01000000): job ID=01000000, task \
name=RayTrainWorker.__init__, required resources={}, pid=29515, actual memory used=5.11GB)
Refer to the documentation on how to address the out of memory issue: https://docs.ray.io/en/latest/
"""


def test_error_line_shortens_rays_accounts_of_killed_workers() -> None:
    line = tune_results.error_line(RuntimeError(DEAD_WORKER))
    assert line == DEAD_WORKER[: DEAD_WORKER.index(" Some common causes")]
    line = tune_results.error_line(RuntimeError(OOM_PARAGRAPH))
    assert "\n" not in line and line.startswith("Ray killed RayTrainWorker")
    assert "7.1 of 23.6 GB" in line and "lower --batch-size" in line


# ----------------------------------------------------------------------------------------------
# Real sweeps


@pytest.fixture(scope="module")
def tune_ray(s3_server) -> Iterator[None]:
    """A local Ray with room for two 1-worker trials and their decoding; every worker carries
    the S3 test server's environment, as a cluster's nodes carry their bucket's."""
    if ray.is_initialized():
        yield
        return
    env = {
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret,
        "AWS_REGION": "us-east-1",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        with runtime.isolated_state_api():
            ray.init(
                runtime_env=idle_executor.RUNTIME_ENV,
                address="local",
                num_cpus=4,
                include_dashboard=False,
                configure_logging=False,
            )
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("tune_data") / "data")
    write_dataset(url, tracks=5, seconds=4.0, seed=0, sample_rate=8000)
    return url


def read_table(sweep_url: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(sweep_url, "results.csv"))))


def check_finished_sweep(sweep_url: str, trials: int) -> pd.DataFrame:
    """Every trial in the table with its session; the best configs load as `train` reads them."""
    frame = read_table(sweep_url)
    assert len(frame) == trials
    assert set(frame["status"]) <= {"ok", "stopped", "errored"}
    assert (frame["status"] == "ok").any()
    parquet = pd.read_parquet(
        io.BytesIO(storage.read_bytes(storage.join(sweep_url, "results.parquet")))
    )
    assert list(parquet["trial_id"]) == list(frame["trial_id"])
    frame = frame[frame["status"] != "errored"]
    assert frame["epochs"].max() == TINY_TRAINER.optim.max_epochs
    assert storage.read_bytes(storage.join(sweep_url, "metric_per_trial.png")).startswith(PNG)
    for trial_id in frame["trial_id"]:
        session = storage.join(sweep_url, "trials", trial_id)
        assert read_model_config(session).sample_rate == 8000
        assert storage.exists(storage.join(session, "checkpoints", "run"))
    best = frame.iloc[0]
    assert best["best_val_si_sdr"] == frame["best_val_si_sdr"].max()
    model = read_model_config(storage.join(sweep_url, "best"))
    trainer = read_trainer_config(storage.join(sweep_url, "best"))
    assert model == read_model_config(storage.join(sweep_url, "trials", best["trial_id"]))
    assert model.hidden_channels == best["model.hidden_channels"]
    assert trainer is not None and trainer.optim.lr == pytest.approx(best["trainer.lr"])
    return frame


@pytest.mark.slow
def test_asha_sweep_on_s3_records_a_crashing_trial_and_finishes_the_others(
    tune_ray: None, dataset: str, s3_env, tmp_path: Path
) -> None:
    base = str(tmp_path / "base")
    write_base(base)
    sweep_url = f"s3://{s3_env.shared_bucket}/sweeps/asha"
    space = f"s3://{s3_env.shared_bucket}/sweeps/space.json"
    # kl_div needs the VAE: those trials' Ray Train runs fail when they build the model.
    crashing = {**SPACE, "trainer.criterion": {"grid": ["si_sdr", "kl_div"]}}
    storage.write_bytes(space, json.dumps(crashing).encode())
    summary = run_sweep(
        SweepConfig(
            sweep_url,
            dataset,
            space=space,
            num_samples=2,
            scheduler="asha",
            max_concurrent=2,
            base=base,
        )
    )
    frame = check_finished_sweep(sweep_url, trials=4)
    assert (summary.trials, summary.errored) == (4, 2)
    assert summary.best_trial == frame["trial_id"].iloc[0]
    assert summary.results_url == f"{sweep_url}/results.csv"
    assert storage.exists(f"{sweep_url}/tune")  # Tune's own state went to the bucket as well
    table = read_table(sweep_url)
    assert set(table.loc[table["status"] == "ok", "trainer.criterion"]) == {"si_sdr"}
    for error in table.loc[table["status"] == "errored", "error"]:
        assert "kl_div needs a SpectrogramNetVAE model" in error and "\n" not in error
    assert table["status"].iloc[-1] == "errored"  # errors last
    trainer = read_trainer_config(storage.join(sweep_url, "best"))
    assert trainer is not None and trainer.optim.criterion == "si_sdr"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Consider boosting PBT performance")  # no reuse: on purpose
def test_pbt_sweep_hands_checkpoints_between_trials(
    tune_ray: None, dataset: str, tmp_path: Path
) -> None:
    sweep_url = str(tmp_path / "sweep")
    base = str(tmp_path / "base")
    write_base(base)
    space = write(tmp_path / "space.yaml", "trainer.lr: {loguniform: [1.0e-4, 1.0e-1]}\n")
    summary = run_sweep(
        SweepConfig(
            sweep_url,
            dataset,
            space=space,
            num_samples=2,
            scheduler="pbt",
            max_concurrent=2,
            max_epochs=2,
            base=base,
        )
    )
    assert (summary.trials, summary.ok) == (2, 2)
    frame = read_table(sweep_url)
    assert list(frame["epochs"]) == [2, 2]
    for trial_id in frame["trial_id"]:
        runs = storage.listdir(storage.join(sweep_url, "trials", trial_id, "checkpoints"))
        assert runs[0].endswith("/run_001")  # every (re)start is a new Train run
    # A restarted trial (cloning another, or resuming after a pause) began its new Train run
    # from a handover copy, past epoch 1.
    trials = tmp_path / "sweep" / "trials"
    restarts = list(trials.glob("*/checkpoints/run_00[2-9]"))
    assert not restarts or list(trials.glob("*/handover/save_*"))
    assert not any((r / "checkpoint_epoch_0001").exists() for r in restarts)


@pytest.mark.slow
def test_sweep_without_a_finished_trial_fails_after_recording_every_error(
    tune_ray: None, dataset: str, tmp_path: Path
) -> None:
    sweep_url = str(tmp_path / "sweep")
    base = str(tmp_path / "base")
    write_base(base)
    # Every value passes the check with some other value, but num_fft 256 with window 512 fails
    # at its trial's start; the other three fail in Ray Train (kl_div needs the VAE).
    space = write(
        tmp_path / "space.yaml",
        textwrap.dedent("""\
        model.num_fft: {grid: [256, 512]}
        model.window_size: {grid: [256, 512]}
        trainer.criterion: {choice: [kl_div]}
        """),
    )
    with pytest.raises(AuralflowError, match="no trial of the sweep finished"):
        run_sweep(
            SweepConfig(
                sweep_url,
                dataset,
                space=space,
                num_samples=1,
                scheduler="fifo",
                max_concurrent=2,
                max_epochs=1,
                base=base,
            )
        )
    frame = read_table(sweep_url).set_index(["model.num_fft", "model.window_size"])
    assert set(frame["status"]) == {"errored"}
    assert "window_size: must be in 1..num_fft" in frame.loc[(256, 512), "error"]
    assert not storage.exists(
        storage.join(sweep_url, "trials", frame.loc[(256, 512), "trial_id"], "checkpoints")
    )
    assert "kl_div needs" in frame.loc[(512, 512), "error"]


# A sweep whose first Train worker is SIGKILLed in its first epoch, and whose controller then
# meets that death as Ray reports an OOM kill (an OutOfMemoryError, which Ray Train's shutdown
# does not catch, unlike the ActorDiedError of a plain SIGKILL). On 3 CPUs with 1-CPU decoding
# tasks, as `auralflow tune` sizes a 1-worker sweep on 2 cores, the placement group that this
# left behind gave the next trial's decoding no CPU: it waited forever.
FAULTY_SWEEP = """\
import os, signal, sys
import ray
from auralflow_dist import runtime
from auralflow_dist.tune import SweepConfig, run_sweep

OOM = ("1 worker(s) were killed due to the node running low on memory. Memory on the node "
       "(IP: 127.0.0.1, ID: 82358561a757) was 22.13GB used / 23.59GB limit (0.94)")

def first(path):
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True

def fault():
    import ray.train
    from ray.exceptions import OutOfMemoryError
    from ray.train.torch.config import _TorchBackend
    marker = os.environ["FAULT_MARKER"]
    report, shutdown = ray.train.report, _TorchBackend.on_shutdown

    def killed_at_first_report(*args, **kwargs):  # in a training worker
        if first(marker):
            os.kill(os.getpid(), signal.SIGKILL)
        return report(*args, **kwargs)

    def shutdown_meets_an_oom_kill(self, *args):  # in a Train controller
        if os.path.exists(marker) and first(marker + ".shutdown"):
            raise OutOfMemoryError(OOM)
        return shutdown(self, *args)

    ray.train.report, _TorchBackend.on_shutdown = killed_at_first_report, shutdown_meets_an_oom_kill

sweep, data, space, base = sys.argv[1:]
with runtime.isolated_state_api():
    ray.init(address="local", num_cpus=3, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": fault})
print(run_sweep(SweepConfig(sweep, data, space=space, base=base, num_samples=1,
                            scheduler="fifo", max_concurrent=1, max_epochs=1)).text())
"""


def kill_tree(process: subprocess.Popen) -> None:
    """Kill a driver and every process under it (its local Ray: GCS, raylet, workers)."""
    import psutil  # Ray's vendored copy, importable once ray is

    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    process.kill()
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    process.wait()


@pytest.mark.slow
def test_a_trial_whose_worker_is_killed_is_a_row_and_the_next_trial_runs(
    dataset: str, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    base = str(tmp_path / "base")
    write_base(base)
    trainer = replace(TINY_TRAINER, decode_cpus=1.0, max_epochs=1)
    storage.write_bytes(storage.join(base, "trainer.json"), to_json(trainer).encode())
    space = write(tmp_path / "space.yaml", "trainer.lr: {grid: [1.0e-3, 2.0e-3]}\n")
    env = {**os.environ, "FAULT_MARKER": str(tmp_path / "killed"), "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen(
        [sys.executable, "-c", FAULTY_SWEEP, str(sweep), dataset, space, base],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = driver.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        kill_tree(driver)
        pytest.fail("the sweep did not end within 300 s: a trial waited on the killed one")
    assert (tmp_path / "killed").exists()  # the fault did strike
    assert driver.returncode == 0, out[-3000:]
    assert "2 trial(s): 1 ok, 0 stopped early, 1 errored" in out
    frame = read_table(str(sweep))
    assert sorted(frame["status"]) == ["errored", "ok"]
    error = frame.set_index("status").loc["errored", "error"]
    assert "\n" not in error and len(error) < 300, error
    assert "worker" in error


def test_a_trial_process_killed_for_memory_is_that_trials_death(monkeypatch):
    """Tune re-raises a trial actor's OutOfMemoryError, which ended the whole sweep."""
    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.exceptions import OutOfMemoryError, RayActorError

    from auralflow_dist.tune import sweep

    seen: list[Exception] = []

    def record(self, tracked_actor_task, exception):
        seen.append(exception)

    monkeypatch.setattr(RayActorManager, "_actor_task_failed", record)
    sweep._fail_oom_killed_trials_alone()
    sweep._fail_oom_killed_trials_alone()  # patching twice wraps once
    other = ValueError("a step failed")
    RayActorManager._actor_task_failed(None, tracked_actor_task=None, exception=other)
    killed = OutOfMemoryError("Task was killed due to the node running low on memory.")
    RayActorManager._actor_task_failed(None, tracked_actor_task=None, exception=killed)
    assert seen[0] is other
    assert isinstance(seen[1], RayActorError) and "running low on memory" in str(seen[1])
    assert len(seen) == 2
