"""infra/local/up.sh and down.sh for real: the S3 server, the Ray head and Prometheus answer on
the ports up.sh prints, and down.sh leaves nothing listening."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_server
from prometheus_support import prometheus_binary, wait_for_series

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
UP = REPO / "infra" / "local" / "up.sh"
DOWN = REPO / "infra" / "local" / "down.sh"


@dataclass
class Stack:
    state: Path
    env: dict[str, str]
    ports: dict[str, int]


def run(script: Path, state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AURALFLOW_STACK_DIR": str(state)}
    return subprocess.run(
        [str(script), *args], env=env, capture_output=True, text=True, timeout=180
    )


def answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    prometheus_binary()  # installs it where it can, so the stack comes up whole
    # Short: Ray's socket paths under the state dir must stay below 107 characters.
    state = Path(tempfile.mkdtemp(prefix="afs-", dir="/tmp")) / "stack"
    try:
        up = run(UP, state)
        assert up.returncode == 0, up.stderr
        lines = up.stdout.strip().splitlines()
        assert all(re.fullmatch(r"export [A-Z0-9_]+=\S*", line) for line in lines), up.stdout
        env = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        pairs = (line.split("=") for line in (state / "ports").read_text().split())
        ports = {k: int(v) for k, v in pairs if v}
        yield Stack(state, env, ports)
    finally:
        down = run(DOWN, state, "--purge")
        shutil.rmtree(state.parent, ignore_errors=True)
        assert down.returncode == 0, down.stderr


def test_s3_serves_the_printed_credentials(stack: Stack) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(
        key=stack.env["AWS_ACCESS_KEY_ID"],
        secret=stack.env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=stack.env["AWS_ENDPOINT_URL"],
        skip_instance_cache=True,
    )
    fs.pipe_file("auralflow/hello.txt", b"hi")
    assert fs.cat_file("auralflow/hello.txt") == b"hi"


def test_s3_server_runs_with_the_flags_the_tests_use(stack: Stack, tmp_path: Path) -> None:
    def flag_names(argv: list[str]) -> list[str]:
        return [a.split("=")[0] for a in argv if a.startswith("-")]

    ours = (stack.state / "weed.args").read_text().split("\n")
    tests = make_server(tmp_path, "weed").argv[1:]
    assert ours[0] == tests[0] == "mini"
    assert flag_names(ours) == flag_names(tests)


def test_ray_head_answers(stack: Stack) -> None:
    env = {**os.environ, **stack.env}
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ray"),
            "health-check",
            "--address",
            stack.env["RAY_ADDRESS"],
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_prometheus_scrapes_the_stacks_targets(stack: Stack) -> None:
    # `up` exists once a target has been tried (nothing serves :9400 here, so it is 0).
    base = stack.env["PROMETHEUS_URL"]
    assert wait_for_series(base, 'up{job="auralflow", instance="127.0.0.1:9400"}')
    config = (stack.state / "prometheus.yml").read_text()
    ray_tmp = (stack.state / "ray.tmp").read_text().strip()
    assert f"{ray_tmp}/prom_metrics_service_discovery.json" in config


def test_prometheus_finds_ray_through_its_discovery_file(stack: Stack) -> None:
    pytest.importorskip(
        "aiohttp_cors", reason="Ray's discovery file needs ray[default]'s dashboard"
    )
    pytest.importorskip("opencensus", reason="Ray's metrics need ray[default]")
    (up,) = wait_for_series(stack.env["PROMETHEUS_URL"], 'max(up{job="ray"})', timeout=45)
    assert float(up["value"][1]) == 1.0


def test_up_again_reuses_the_running_stack(stack: Stack) -> None:
    again = run(UP, stack.state)
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stderr
    assert f"export RAY_ADDRESS={stack.env['RAY_ADDRESS']}" in again.stdout


def test_down_leaves_nothing_listening(stack: Stack) -> None:
    listening = {name: port for name, port in stack.ports.items() if answers(port)}
    assert {"s3", "ray_gcs", "prometheus"} <= set(listening)
    down = run(DOWN, stack.state)
    assert down.returncode == 0, down.stderr
    still = [name for name, port in listening.items() if answers(port)]
    assert not still, f"still listening after down.sh: {still}"
    assert not (stack.state / "env").exists()
