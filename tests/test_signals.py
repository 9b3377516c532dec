"""Stopping `auralflow train` and `auralflow tune` by signal, and Ray's chatter in their output.

SIGTERM (timeout, Kubernetes, Slurm) or SIGINT must end the command within 30 s together with
the local Ray it started (GCS, raylet, workers), say so in one line, and leave a state that
``--resume`` continues; on a cluster it joined, only its own work ends. Each slow test runs the
real command in a subprocess on a tiny generated dataset.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

from auralflow_dist import ray_logs
from auralflow_dist.cli import main
from auralflow_dist.config import ModelConfig, TrainerConfig, from_dict, to_json
from auralflow_dist.data.generate import write_dataset
from auralflow_dist.errors import AuralflowError
from auralflow_dist.session import write_model_config
from auralflow_dist.tune import SweepConfig, run_sweep

STOP_WITHIN_S = 30.0
MODEL = ModelConfig(
    sample_rate=8000,
    num_fft=256,
    window_size=256,
    hop_length=128,
    sample_length=0.5,
    hidden_channels=4,
)
TRAINER = {
    "max_samples": 16,
    "batch_size": 4,
    "val_chunks": 4,
    "num_workers": 1,
    "decode_cpus": 0.5,
    "image_freq": 100,
}
TRAIN_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TRAINER.items()] + ["--workers=1"]


# ----------------------------------------------------------------------------------------------
# Ray's chatter


RAY_CHATTER = [
    "Failed to query Ray Train Controller actor state. State API may be temporarily "
    "unavailable. Continuing to monitor.",
    "[2026-12-01 12:47:18,499 E 21777 21871] core_worker.cc:2465: Actor with class name: "
    "'PreemptionWatcher' and ID: '8327d0621c1c' has constructor arguments in the object store "
    "and max_restarts > 0. If the arguments in the object store go out of scope or are lost, "
    "the actor restart will fail.",
    "Progress bars disabled. To enable, set "
    "`ray.data.DataContext.get_current().enable_progress_bars = True`.",
    "✔️  Dataset train_03578flxhChawLbXp90dWc_0 execution finished in 3.24 seconds",
    "Reporting training result 1: TrainingReport(checkpoint=None, metrics={'loss': 1.0})",
    "/venv/ray/data/_internal/execution/interfaces/execution_options.py:436: "
    "RayDeprecationWarning: `ExecutionOptions.exclude_resources` is deprecated",
    "  self.exclude_resources = exclude_resources",
    "Note: Illegal Audio-MPEG-Header 0x00000000 at offset 40123.",
    "Note: Trying to resync...",
    "2026-12-01 18:40:40,165\tWARNING authentication_token_setup.py:85 -- Token authentication "
    "is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.",
    "Task MapWorker(MapBatches(FileSeparator)).submit failed. There are infinite retries "
    "remaining, so the task will be retried. Error: The actor is temporarily unavailable",
    "[Gloo] Rank 0 is connected to 0 peer ranks. Expected number of connected peer ranks is : 0",
    "WARNING: 8 PYTHON worker processes have been started on node: 8f8a97 with address: "
    "192.0.2.2, which is 4x the maximum expected startup concurrency (2).",
]
REAL_LINES = [
    "[train vocals] epoch   1/2  loss 2.9108  val 0.4637  val SI-SDR -0.46 dB (mixture -1.78)",
    "Traceback (most recent call last):",
    '  File "/work/main/auralflow_dist/train/loop.py", line 170, in train_loop_per_worker',
    "ValueError: the data went missing",
    "[2026-12-01 12:47:18,499 E 21777 21871] core_worker.cc:900: Failed to seal object",
    "ray.exceptions.OutOfMemoryError: 1 worker(s) were killed due to the node running low",
    "UserWarning: the user's own warning stays",
]


def test_ray_chatter_is_dropped_and_real_lines_kept() -> None:
    lines = REAL_LINES[:2] + RAY_CHATTER[:5] + REAL_LINES[2:4] + RAY_CHATTER[5:] + REAL_LINES[4:]
    assert ray_logs.drop_noise(lines) == REAL_LINES


def test_everything_from_the_placement_group_cleaner_is_dropped() -> None:
    shown: list[dict] = []
    handle = ray_logs._filtered(shown.append)
    traceback = ["Exception in thread PlacementGroupCleanerMonitor:", "Traceback (most ..."]
    handle({"actor_name": "PlacementGroupCleaner", "pid": 1, "lines": traceback})
    handle({"actor_name": "RayTrainWorker", "pid": 2, "lines": REAL_LINES[:1] + RAY_CHATTER[:1]})
    assert shown == [{"actor_name": "RayTrainWorker", "pid": 2, "lines": REAL_LINES[:1]}]


QUIET_DRIVER = """\
import ray
from auralflow_dist import runtime

@ray.remote(num_cpus=0)
def chatter(lines):
    import sys
    for line in lines:
        print(line, file=sys.stderr, flush=True)

runtime.connect()
ray.get(chatter.remote(sys_lines))
import time; time.sleep(3)  # forwarded output arrives asynchronously
ray.shutdown()
"""


def test_the_raylets_messages_lose_the_chatter_too() -> None:
    printed: list[list[str]] = []
    printer = ray_logs._filtered_printer(lambda data, ignore_prefix: printed.append(data["lines"]))
    raylet = (
        "WARNING: 8 PYTHON worker processes have been started on node: 633b8c5b with address: "
        "192.0.2.2, which is 4x the maximum expected startup concurrency (2)."
    )
    printer({"lines": [raylet], "pid": "raylet"}, ignore_prefix=False)
    died = "A worker died or was killed while executing a task by an unexpected system error."
    printer({"lines": [raylet, died], "pid": "raylet"}, ignore_prefix=False)
    assert printed == [[died]]


STDERR_WRITER = """\
import os, sys
from auralflow_dist import ray_logs
ray_logs.filter_stderr()
print("stdout stays as it is", flush=True)
for line in lines:  # straight to descriptor 2, as Ray's C++ core worker writes
    os.write(2, (line + "\\n").encode())
print("Python's own stderr", file=sys.stderr)
"""


def test_the_command_lines_stderr_loses_the_chatter_its_cpp_core_writes() -> None:
    code = f"lines = {RAY_CHATTER + REAL_LINES!r}\n" + STDERR_WRITER
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "stdout stays as it is\n"
    assert done.stderr.splitlines() == [*REAL_LINES, "Python's own stderr"]


@pytest.mark.slow
def test_forwarded_worker_output_loses_the_chatter_only(tmp_path: Path) -> None:
    code = f"sys_lines = {RAY_CHATTER + REAL_LINES!r}\n" + QUIET_DRIVER
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    for line in REAL_LINES:
        assert line in out
    assert not [line for line in out.splitlines() if ray_logs.NOISE.search(line)]
    assert "DeprecationWarning" not in out


# ----------------------------------------------------------------------------------------------
# Stopping by signal


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("signals_data") / "data")
    write_dataset(url, tracks=5, seconds=4.0, seed=0, sample_rate=8000)
    return url


class Command:
    """A running `auralflow` subprocess whose output is collected as it comes."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "auralflow_dist", *args],
            cwd=cwd,
            env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, path: Path, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.process.poll() is None, f"ended early:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"no {path} in {timeout:.0f} s"
            time.sleep(0.5)

    def stop(self, signum: int) -> None:
        """Send ``signum``; the command and every process it started must end in time."""
        import psutil  # Ray's vendored copy, importable once ray is

        family = psutil.Process(self.process.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in family) or not family
        start = time.monotonic()
        self.process.send_signal(signum)
        try:
            code = self.process.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running {STOP_WITHIN_S:.0f} s after {signum}")
        _, alive = psutil.wait_procs(family, timeout=STOP_WITHIN_S - (time.monotonic() - start))
        alive = [p for p in alive if _running(p)]  # a zombie has ended; its reaper is slow
        for process in alive:
            process.kill()
        self._reader.join(5)
        assert not alive, f"left behind: {[p.pid for p in alive]}"
        assert code == 128 + signum, self.output[-3000:]

    def kill(self) -> None:
        import psutil

        try:
            family = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        for process in [*family]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.process.kill()
        self.process.wait()


def _running(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def checkpoint_of_epoch(session: Path, epoch: int) -> Path | None:
    found = sorted(session.glob(f"checkpoints/*/checkpoint_epoch_{epoch:04d}"))
    return found[0] if found else None


def wait_for_checkpoint(command: Command, session: Path, epoch: int) -> Path:
    deadline = time.monotonic() + 300
    while (found := checkpoint_of_epoch(session, epoch)) is None:
        assert command.process.poll() is None, f"ended early:\n{command.output[-3000:]}"
        assert time.monotonic() < deadline, f"no checkpoint of epoch {epoch} in 300 s"
        time.sleep(0.5)
    time.sleep(2)  # Ray Train registers the copied checkpoint right after
    return found


def chatter_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if ray_logs.NOISE.search(line)]


@pytest.mark.slow
def test_sigterm_stops_train_and_its_ray_and_resume_continues(
    ray_local, dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = tmp_path / "session"
    write_model_config(str(session), MODEL)
    train = Command(["train", str(session), dataset, *TRAIN_FLAGS, "--max-epochs=50"], tmp_path)
    try:
        first = wait_for_checkpoint(train, session, 1)
        train.stop(signal.SIGTERM)
    finally:
        if train.process.poll() is None:
            train.kill()
    assert "auralflow train: stopped by SIGTERM; run it again with --resume" in train.output
    assert "[train vocals] epoch" in train.output  # our own lines come through ...
    assert not chatter_in(train.output), chatter_in(train.output)  # ... Ray's chatter does not
    assert "DeprecationWarning" not in train.output
    kept = first.stat().st_mtime_ns

    # Resumed in this process, on the tests' Ray: a second local Ray would cost a minute here.
    assert main(["train", str(session), dataset, *TRAIN_FLAGS, "--max-epochs=2", "--resume"]) == 0
    assert "trained 2 epoch(s)" in capsys.readouterr().out
    assert first.stat().st_mtime_ns == kept  # epoch 1 was not trained again
    assert checkpoint_of_epoch(session, 2) is not None


@pytest.mark.slow
def test_sigint_stops_a_sweep_and_its_ray_and_resume_skips_finished_trials(
    ray_local, dataset: str, tmp_path: Path
) -> None:
    base = tmp_path / "base"
    write_model_config(str(base), MODEL)
    (base / "trainer.json").write_text(to_json(from_dict(TrainerConfig, TRAINER)))
    space = tmp_path / "space.json"
    space.write_text('{"trainer.lr": {"grid": [0.001, 0.002]}}')
    sweep = tmp_path / "sweep"
    args = ["tune", str(sweep), dataset, f"--space={space}", f"--base={base}", "--num-samples=1"]
    args += ["--scheduler=fifo", "--max-concurrent=1", "--max-epochs=2"]
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "1"}  # Tune's own state saved every second
    tune = Command(args, tmp_path, env)
    try:
        # One trial at a time: once the second has checkpointed an epoch, the first is done.
        tune.wait_for(sweep / "trials")
        while len(list((sweep / "trials").iterdir())) < 2:
            assert tune.process.poll() is None, f"ended early:\n{tune.output[-3000:]}"
            time.sleep(0.5)
        first, second = sorted((sweep / "trials").iterdir())
        kept_epoch = wait_for_checkpoint(tune, second, 1)
        tune.stop(signal.SIGINT)
    finally:
        if tune.process.poll() is None:
            tune.kill()
    assert "auralflow tune: stopped by SIGINT; run it again with --resume" in tune.output
    assert not chatter_in(tune.output), chatter_in(tune.output)
    before = {p: p.stat().st_mtime_ns for p in (first / "checkpoints").rglob("*")}
    kept_mtime = kept_epoch.stat().st_mtime_ns

    summary = run_sweep(SweepConfig(str(sweep), dataset, resume=True))
    assert (summary.trials, summary.ok) == (2, 2)
    assert sorted((sweep / "trials").iterdir()) == [first, second]
    after = {p: p.stat().st_mtime_ns for p in (first / "checkpoints").rglob("*")}
    assert after == before  # the finished trial did not run again
    assert kept_epoch.stat().st_mtime_ns == kept_mtime  # the second went on from its epoch 1
    assert checkpoint_of_epoch(second, 2) is not None
    with pytest.raises(AuralflowError, match="pass --resume"):
        run_sweep(SweepConfig(str(sweep), dataset, space=str(space)))


@pytest.mark.slow
def test_sigterm_on_a_cluster_ends_the_job_but_not_the_cluster(
    ray_local, dataset: str, tmp_path: Path
) -> None:
    session = tmp_path / "session"
    write_model_config(str(session), MODEL)
    address = ray.get_runtime_context().gcs_address
    flags = [*TRAIN_FLAGS, "--max-epochs=50", f"--address={address}"]
    free_before = ray.available_resources().get("CPU", 0)
    train = Command(["train", str(session), dataset, *flags], tmp_path)
    try:
        wait_for_checkpoint(train, session, 1)
        start = time.monotonic()
        train.process.send_signal(signal.SIGTERM)
        assert train.process.wait(STOP_WITHIN_S) == 128 + signal.SIGTERM
    finally:
        if train.process.poll() is None:
            train.kill()
    assert "stopped by SIGTERM" in train.output
    assert ray.get(ray.remote(num_cpus=0)(lambda: 1).remote(), timeout=60) == 1  # still up
    # The job's Train workers went with it: its CPU reservation is free again.
    deadline = start + STOP_WITHIN_S
    while ray.available_resources().get("CPU", 0) < free_before:
        assert time.monotonic() < deadline, "the stopped job's workers still hold CPUs"
        time.sleep(0.5)
