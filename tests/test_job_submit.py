"""`ray job submit`, proven locally: a real two-node Ray cluster started with `ray start`, the repo
uploaded as the job's working dir, and train -> separate -> evaluate through the `jobs/`
entrypoints against the test S3 server, exactly as a user submits them to a remote cluster.

The nodes are stopped by signalling only the process groups this module started: `ray stop` would
kill every Ray process on the machine, other tests' included.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import S3Server, free_ports

from auralflow_dist import storage
from auralflow_dist.cli import main
from auralflow_dist.data.generate import write_dataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's `ray`, and the `python` the jobs run with
START_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
# No "excludes" needed: Ray 2.60 leaves out .git, .venv, venv and __pycache__ by default and
# honours .gitignore (caches, demo_output); the test checks what the cluster received.
MAX_UPLOAD_BYTES = 10 << 20
MODEL_FLAGS = (
    "--sample-rate 8000 --sample-length 0.5 --num-fft 256 --window-size 256 --hop-length 128 "
    "--hidden-channels 4"
)
TRAIN_FLAGS = (
    "--workers 2 --max-epochs 2 --max-samples 32 --batch-size 4 --val-chunks 8 --num-workers 1"
)


def cluster_env() -> dict[str, str]:
    """The environment of the nodes and of the submitter: one auth mode, no S3 credentials.

    Credentials reach the jobs only through the runtime env, as they must on a real cluster.
    The venv's bin comes first on PATH so that a job's `python` is the cluster's Python.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        # SIGTERM drains a node for 30 s by default; these nodes have nothing to hand over.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def wait_for(check: Callable[[], bool], what: str, timeout: float, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} not within {timeout:.0f} s; logs:\n{logs()}")


@dataclass(frozen=True)
class Proc:
    """A process known by pid and start time, so that a recycled pid is never mistaken for it."""

    pid: int
    start: int
    name: str

    def running(self) -> bool:
        found = _stat(self.pid)
        return found is not None and found[2] == self.start and found[3] != "Z"

    def send(self, signum: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


def _stat(pid: int) -> tuple[str, int, int, str] | None:
    """(name, parent pid, start time, state) from /proc, or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
    return name, int(rest[1]), int(rest[19]), rest[0]


def descendants(root: int) -> list[Proc]:
    """``root`` and every process below it, as /proc shows them now."""
    table = {int(p.name): _stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    children: dict[int, list[int]] = {}
    for pid, found in table.items():
        if found is not None:
            children.setdefault(found[1], []).append(pid)
    found_procs, todo = [], [root]
    while todo:
        pid = todo.pop()
        if table.get(pid) is not None:
            name, _, start, _ = table[pid]
            found_procs.append(Proc(pid, start, name))
        todo += children.get(pid, [])
    return found_procs


@dataclass
class Node:
    """One `ray start --block`, the leader of its own process group."""

    process: subprocess.Popen
    log: Path
    raylet: Proc | None = None

    def log_tail(self) -> str:
        return f"--- {self.log.name}\n{tail(self.log.read_text(errors='replace'))}"

    def find_raylet(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"ray start exited with {self.process.returncode}")
        found = [p for p in descendants(self.process.pid) if p.name == "raylet"]
        self.raylet = found[0] if found else None
        return self.raylet is not None

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL what outlives the grace period; reap `ray start`.

        Workers and job drivers leave the group (Ray gives them their own), so every
        descendant seen before the signal gets it and is waited for too.
        """
        ours = descendants(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        for proc in ours:
            proc.send(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and any(p.running() for p in ours):
            self.process.poll()  # reap `ray start` itself as soon as it exits
            time.sleep(0.2)
        for proc in ours:
            proc.send(signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT_S)


@dataclass
class LocalCluster:
    temp_dir: Path
    dashboard_url: str
    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(node.log_tail() for node in self.nodes)

    def start_node(self, name: str, args: str) -> Node:
        # A temp dir per node, as separate machines would have: nodes sharing one share its
        # session folder, and each node's runtime-env agent deletes and re-extracts the job's
        # working dir there when it first needs it, under a driver running from it on the other.
        log = self.temp_dir / f"{name}.log"
        node_dir = self.temp_dir / name
        argv = [str(BIN / "ray"), "start", "--block", "--temp-dir", str(node_dir)]
        argv += ["--disable-usage-stats", "--object-store-memory", str(300 * 10**6)]
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv + args.split(),
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        node = Node(process, log)
        self.nodes.append(node)
        wait_for(node.find_raylet, f"{name}'s raylet", START_TIMEOUT_S, self.logs)
        return node

    def alive_nodes(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.dashboard_url}/nodes?view=summary", timeout=5) as r:
                summary = json.load(r)["data"]["summary"]
        except (OSError, ValueError, KeyError):
            return 0
        return sum(n["raylet"].get("state") == "ALIVE" for n in summary)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


def node_ports(head: bool) -> str:
    """Every port a node listens on, chosen free: Ray's defaults collide with other tests' Rays."""
    names = [
        "node-manager",
        "object-manager",
        "dashboard-agent-grpc",
        "dashboard-agent-listen",
        "metrics-export",
        "runtime-env-agent",
    ] + (["ray-client-server"] if head else [])
    ports = free_ports(len(names))
    return " ".join(f"--{name}-port {port}" for name, port in zip(names, ports, strict=True))


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A head (3 CPUs, dashboard and job API) and a worker node (2 CPUs) on 127.0.0.1."""
    # Unix socket paths under the temp dir must stay short: pytest's tmp_path is too long.
    temp_dir = Path(tempfile.mkdtemp(prefix="rj-", dir="/tmp"))
    gcs_port, dashboard_port = free_ports(2)
    local = LocalCluster(temp_dir, f"http://127.0.0.1:{dashboard_port}", cluster_env())
    t0 = time.monotonic()
    try:
        local.start_node(
            "head",
            f"--head --node-ip-address 127.0.0.1 --port {gcs_port} --include-dashboard true "
            f"--dashboard-host 127.0.0.1 --dashboard-port {dashboard_port} --num-cpus 3 "
            + node_ports(head=True),
        )
        local.start_node(
            "worker",
            f"--address 127.0.0.1:{gcs_port} --node-ip-address 127.0.0.1 --num-cpus 2 "
            + node_ports(head=False),
        )
        wait_for(
            lambda: local.alive_nodes() == 2,
            "two alive nodes on the dashboard",
            START_TIMEOUT_S,
            local.logs,
        )
        print(f"\ncluster of 2 nodes up after {time.monotonic() - t0:.1f} s", file=sys.stderr)
        yield local
    finally:
        raylets = [n.raylet for n in local.nodes if n.raylet is not None]
        local.stop()
        survivors = [p.pid for p in raylets if p.running()]
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not survivors, f"raylets still running after stop: {survivors}"


def s3_vars(s3: S3Server) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3.key,
        "AWS_SECRET_ACCESS_KEY": s3.secret,
        "AWS_REGION": "us-east-1",
    }


def submit(cluster: LocalCluster, s3: S3Server, entrypoint: str) -> tuple[int, str]:
    """`ray job submit` from the repo root; blocks while the job's logs stream. (exit code, output)"""
    runtime_env = {"env_vars": s3_vars(s3)}
    argv = [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url]
    argv += ["--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--"]
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            argv + shlex.split(entrypoint),
            cwd=REPO,
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=JOB_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else ""
        pytest.fail(
            f"{entrypoint}: no result within {JOB_TIMEOUT_S:.0f} s; "
            f"output tail:\n{tail(out)}\n{cluster.logs()}"
        )
    took = time.monotonic() - t0
    print(f"{entrypoint[:40]}...: exit {done.returncode} after {took:.1f} s", file=sys.stderr)
    return done.returncode, done.stdout + done.stderr


def succeed(cluster: LocalCluster, s3: S3Server, entrypoint: str) -> str:
    code, output = submit(cluster, s3, entrypoint)
    assert code == 0, f"{entrypoint} failed ({code}); output tail:\n{tail(output)}"
    return output


def write_session(bucket: str) -> str:
    """The session's model.json on S3, written by the CLI in this process."""
    session = f"s3://{bucket}/session"
    assert main(["config", "SpectrogramNetSimple", "--save", session, *MODEL_FLAGS.split()]) == 0
    return session


def read_csv(url: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(storage.read_bytes(url).decode())))


def uploaded_packages(cluster: LocalCluster) -> list[Path]:
    """The working dirs the cluster's nodes unpacked (one per node and distinct upload)."""
    found = cluster.temp_dir.glob("*/session_*/runtime_resources/working_dir_files/_ray_pkg_*")
    return sorted(p for p in found if p.is_dir())  # not the .zip.lock files beside them


def test_train_separate_evaluate_as_submitted_jobs(
    cluster: LocalCluster, s3_server: S3Server, s3_bucket: str
):
    data, separated = f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/separated"
    write_dataset(data, tracks=5, seconds=3, seed=1, sample_rate=8000)
    session = write_session(s3_bucket)

    output = succeed(cluster, s3_server, f"python jobs/train.py {session} {data} {TRAIN_FLAGS}")
    assert "trained 2 epoch(s)" in output, tail(output)
    for name in ("model.json", "trainer.json", "history.csv", "best/model.json", "best/weights.pt"):
        assert storage.exists(storage.join(session, name)), name
    checkpoints = storage.find_files(storage.join(session, "checkpoints"))
    assert any(u.endswith("checkpoint_epoch_0002/weights.pt") for u in checkpoints), checkpoints
    history = read_csv(storage.join(session, "history.csv"))
    assert [int(float(row["epoch"])) for row in history] == [1, 2]

    succeed(
        cluster,
        s3_server,
        f"python jobs/separate.py {session} {data}/test --save {separated} --residual --workers 1",
    )
    tracks = [u.rsplit("/", 1)[1] for u in storage.listdir(f"{data}/test")]
    assert tracks
    for track in tracks:
        for stem in ("vocals.wav", "residual.wav"):
            assert storage.exists(storage.join(separated, track, stem)), (track, stem)
    with storage.open_file(storage.join(separated, "_results.parquet")) as f:
        results = pq.read_table(f).to_pylist()
    # Every file under test/ is an input: each track's mixture and its four stems.
    assert len(results) == 5 * len(tracks)
    assert {r["status"] for r in results} == {"ok"}, results

    output = succeed(cluster, s3_server, f"python jobs/evaluate.py {session} {data} --workers 1")
    assert "median vocals SI-SDR" in output, tail(output)
    scores = read_csv(storage.join(session, "eval.csv"))
    assert sorted(r["track"] for r in scores if r["track"] not in ("median", "mean")) == tracks

    # What the cluster received: the repo's code, without the venv or git history.
    packages = uploaded_packages(cluster)
    assert packages
    for package in packages:
        assert (package / "auralflow_dist" / "__init__.py").is_file()
        assert not (package / ".venv").exists() and not (package / ".git").exists()
        size = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
        assert size < MAX_UPLOAD_BYTES, f"{package.name}: {size} bytes uploaded"


def test_jobs_import_the_uploaded_code(cluster: LocalCluster, s3_server: S3Server):
    """`python jobs/x.py` puts jobs/ first on sys.path; Ray's PYTHONPATH must bring the package."""
    probe = (
        "import sys; sys.path[0] = 'jobs'; import auralflow_dist; "
        "print('package at', auralflow_dist.__file__)"
    )
    output = succeed(cluster, s3_server, f"python -c {shlex.quote(probe)}")
    (line,) = [x for x in output.splitlines() if x.startswith("package at")]
    assert "/working_dir_files/_ray_pkg_" in line and str(REPO) not in line, line


def test_a_bad_dataset_url_fails_the_job_with_one_clear_line(
    cluster: LocalCluster, s3_server: S3Server, s3_bucket: str
):
    session = write_session(s3_bucket)
    missing = f"s3://{s3_bucket}/no-such-dataset"
    code, output = submit(cluster, s3_server, f"python jobs/train.py {session} {missing}")
    assert code != 0, tail(output)
    assert f"auralflow train: error: {missing}: not found" in output, tail(output)
    assert "exit code 2" in output, tail(output)
    assert "Traceback" not in output, tail(output)
