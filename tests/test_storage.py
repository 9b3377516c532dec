"""Storage behaves the same on a local folder and on a real S3 server, and fails with one named line."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import S3Server, free_ports, make_server, weed_binary

from auralflow_dist import storage
from auralflow_dist.errors import StorageError

FAST_FAIL_S = 15.0


def _random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _storage_error(fn, *args, **kwargs) -> str:
    """Call ``fn``, expect a StorageError quickly, return its message."""
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        fn(*args, **kwargs)
    assert time.monotonic() - t0 < FAST_FAIL_S
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------
# Both backends


def test_round_trip(storage_root: str) -> None:
    url = storage.join(storage_root, "a", "b.bin")
    data = _random_bytes(10_000)
    storage.write_bytes(url, data)
    assert storage.read_bytes(url) == data
    assert storage.size(url) == len(data)
    assert storage.exists(url) and not storage.is_dir(url)

    storage.write_bytes(url, b"second")  # overwrite in place
    assert storage.read_bytes(url) == b"second"

    text_url = storage.join(storage_root, "notes.txt")
    with storage.open_file(text_url, "w") as f:
        f.write("héllo\n")
    with storage.open_file(text_url, "r") as f:
        assert f.read() == "héllo\n"


def test_atomic_write_publishes_only_on_clean_exit(storage_root: str) -> None:
    url = storage.join(storage_root, "run", "weights.pt")
    with pytest.raises(RuntimeError, match="crash"), storage.atomic_write(url) as f:
        f.write(b"half" * 1000)
        raise RuntimeError("crash")
    assert not storage.exists(url)

    storage.write_bytes(url, b"old")
    with pytest.raises(RuntimeError), storage.atomic_write(url) as f:
        f.write(b"new but broken")
        raise RuntimeError("crash")
    assert storage.read_bytes(url) == b"old"

    with storage.atomic_write(url) as f:
        f.write(b"new")
    assert storage.read_bytes(url) == b"new"
    # No temporary litter beside the file, on disk or in the bucket.
    assert storage.listdir(storage.join(storage_root, "run")) == [url]


def test_find_files_recursive_sorted_filtered(storage_root: str) -> None:
    names = ["b/2.wav", "a/1.FLAC", "a/deep/3.wav", "a/readme.txt", "top.wav"]
    hidden = ["a/._1.wav", ".cache/x.wav", "a/.0.wav.tmp-abc"]
    for name in names + hidden:
        storage.write_bytes(storage.join(storage_root, name), b"x")

    audio = storage.find_files(storage_root, [".wav", "flac"])
    expected = sorted(storage.join(storage_root, n) for n in names if not n.endswith(".txt"))
    assert audio == expected
    assert storage.find_files(storage_root) == sorted(storage.join(storage_root, n) for n in names)
    # A URL keeps its scheme: results can be opened as they are.
    assert all(u.startswith(storage_root + "/") for u in audio)
    assert storage.read_bytes(audio[0]) == b"x"

    single = storage.join(storage_root, "top.wav")
    assert storage.find_files(single, [".wav"]) == [single]


def test_listing_and_housekeeping(storage_root: str) -> None:
    folder = storage.join(storage_root, "stems")
    storage.makedirs(folder)
    storage.write_bytes(storage.join(folder, "vocals.wav"), b"v")
    storage.write_bytes(storage.join(folder, "sub", "bass.wav"), b"b")

    assert storage.is_dir(folder) and storage.exists(folder)
    assert storage.listdir(folder) == [
        storage.join(folder, "sub"),
        storage.join(folder, "vocals.wav"),
    ]
    assert storage.glob(folder, "*.wav") == [storage.join(folder, "vocals.wav")]
    assert storage.glob(folder, "**/*.wav") == [
        storage.join(folder, "sub", "bass.wav"),
        storage.join(folder, "vocals.wav"),
    ]
    storage.check_readable(folder)
    storage.check_readable(storage.join(folder, "vocals.wav"))

    storage.remove(storage.join(folder, "vocals.wav"))
    assert not storage.exists(storage.join(folder, "vocals.wav"))
    storage.remove(folder)
    assert not storage.exists(folder) and not storage.is_dir(folder)
    storage.remove(folder, missing_ok=True)
    assert "not found" in _storage_error(storage.remove, folder)


def test_remove_takes_names_literally(storage_root: str) -> None:
    """fsspec's rm globbed: "Song [ab]" deleted "Song a" and "Song b", "Song [Live]" failed."""
    out = storage.join(storage_root, "out")
    names = ["Song [ab]", "Song a", "Song b", "Song [Live]", "Song L", "x*y", "xay", "why?", "whyo"]
    for name in names:
        storage.write_bytes(storage.join(out, name, "_done.json"), b"{}")
        storage.write_bytes(storage.join(out, name, "vocals.wav"), b"v")

    def markers() -> list[str]:
        return [n for n in names if storage.exists(storage.join(out, n, "_done.json"))]

    for name in ["Song [ab]", "Song [Live]", "x*y", "why?"]:
        storage.remove(storage.join(out, name, "_done.json"))
    assert markers() == ["Song a", "Song b", "Song L", "xay", "whyo"]
    storage.remove(storage.join(out, "Song [ab]", "_done.json"), missing_ok=True)  # quiet
    assert "not found" in _storage_error(storage.remove, storage.join(out, "x*y", "_done.json"))

    for name in ["Song [ab]", "x*y"]:  # whole folders too
        storage.remove(storage.join(out, name))
        assert not storage.exists(storage.join(out, name))
    storage.remove(storage.join(out, "Song [ab]"), missing_ok=True)
    # Not listdir: SeaweedFS lists a prefix for a while after its last object is gone.
    left = [n for n in names if n not in ("Song [ab]", "x*y")]
    assert [n for n in names if storage.exists(storage.join(out, n))] == left
    for name in left:
        assert storage.read_bytes(storage.join(out, name, "vocals.wav")) == b"v"


def test_missing_file_is_named(storage_root: str) -> None:
    missing = storage.join(storage_root, "nope", "mix.wav")
    assert not storage.exists(missing)
    for fn in (storage.read_bytes, storage.size, storage.check_readable, storage.find_files):
        assert _storage_error(fn, missing) == f"{missing}: not found"
    with pytest.raises(StorageError, match="not found"), storage.open_file(missing):
        pass


def test_large_object_ranged_reads(storage_root: str) -> None:
    url = storage.join(storage_root, "big.bin")
    data = _random_bytes(20 << 20, seed=1)
    storage.write_bytes(url, data)
    assert storage.size(url) == len(data)
    with storage.open_file(url) as f:
        for offset in (15_000_000, 123, len(data) - 500, 8 << 20):
            f.seek(offset)
            assert f.read(1000) == data[offset : offset + 1000]
        cache = getattr(f, "cache", None)
        if cache is not None:  # object stores: only ranges near the reads crossed the wire
            assert cache.total_requested_bytes < 6 * storage.READ_BLOCK_SIZE


def test_to_pyarrow_fs_round_trip(storage_root: str) -> None:
    fs, path = storage.to_pyarrow_fs(storage_root)
    assert "://" not in path
    fs.create_dir(path + "/ckpt")
    with fs.open_output_stream(path + "/ckpt/state.bin") as out:
        out.write(b"from pyarrow")
    assert storage.read_bytes(storage.join(storage_root, "ckpt", "state.bin")) == b"from pyarrow"

    storage.write_bytes(storage.join(storage_root, "ckpt", "model.json"), b"{}")
    with fs.open_input_file(path + "/ckpt/model.json") as f:
        assert f.read() == b"{}"
    assert fs.get_file_info(path + "/ckpt/model.json").size == 2


# ----------------------------------------------------------------------------------------------
# Local only


def test_local_crash_leaves_no_temporary_file(tmp_path: Path) -> None:
    url = str(tmp_path / "out" / "x.wav")
    with pytest.raises(KeyboardInterrupt), storage.atomic_write(url) as f:
        f.write(b"partial")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path / "out") == []


def test_file_urls_and_plain_paths_agree(tmp_path: Path) -> None:
    storage.write_bytes(f"file://{tmp_path}/a/x.flac", b"f")
    assert storage.read_bytes(str(tmp_path / "a" / "x.flac")) == b"f"
    assert storage.find_files(f"file://{tmp_path}", [".flac"]) == [f"file://{tmp_path}/a/x.flac"]


def test_other_fsspec_protocols() -> None:
    root = f"memory://auralflow-{os.getpid()}-{time.monotonic_ns()}"
    storage.write_bytes(storage.join(root, "a", "x.wav"), b"m")
    with pytest.raises(RuntimeError), storage.atomic_write(storage.join(root, "b.wav")) as f:
        f.write(b"partial")
        raise RuntimeError("crash")
    assert storage.find_files(root, [".wav"]) == [storage.join(root, "a", "x.wav")]
    assert storage.read_bytes(storage.join(root, "a", "x.wav")) == b"m"
    storage.remove(root)


def test_unknown_protocol_is_a_storage_error() -> None:
    assert "unsupported URL" in _storage_error(storage.filesystem, "nosuchproto://x/y")


# ----------------------------------------------------------------------------------------------
# S3 only


def test_multipart_upload_is_atomic(s3_bucket: str, s3_env: S3Server) -> None:
    url = f"s3://{s3_bucket}/ckpt/weights.pt"
    data = _random_bytes(12 << 20, seed=2)
    with pytest.raises(RuntimeError), storage.atomic_write(url, part_size=5 << 20) as f:
        f.write(data)
        raise RuntimeError("crash after writing 12 MiB")
    assert not storage.exists(url)

    with storage.atomic_write(url, part_size=5 << 20) as f:
        f.write(data)
    fs, path = storage.filesystem(url)
    assert fs.info(path)["ETag"].strip('"').endswith("-3")  # three parts: a real multipart upload
    assert storage.read_bytes(url) == data


def test_chained_and_s3a_urls_use_the_settings(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"s3://{s3_env.shared_bucket}/chain/x.bin"
    storage.write_bytes(url, b"chained")
    # Only the configured settings lead to the server: botocore's own env lookup would not.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_ports(1)[0]}")
    storage.configure(s3_env.settings())
    assert storage.read_bytes("simplecache::" + url) == b"chained"
    assert storage.read_bytes(url.replace("s3://", "s3a://")) == b"chained"


def test_missing_bucket(s3_env: S3Server) -> None:
    url = "s3://no-such-bucket-4d1e/x/mix.wav"
    for fn in (storage.read_bytes, storage.check_readable, storage.find_files, storage.size):
        assert _storage_error(fn, url) == f"{url}: bucket does not exist"
    assert _storage_error(storage.write_bytes, url, b"x") == f"{url}: bucket does not exist"
    assert _storage_error(storage.check_readable, "s3://no-such-bucket-4d1e") == (
        "s3://no-such-bucket-4d1e: bucket does not exist"
    )
    assert not storage.exists("s3://no-such-bucket-4d1e")
    storage.makedirs("s3://no-such-bucket-4d1e/run")  # never creates a bucket by accident
    assert not storage.exists("s3://no-such-bucket-4d1e")


@pytest.mark.parametrize("which", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_wrong_credentials_are_rejected(
    which: str, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.write_bytes(f"s3://{s3_env.shared_bucket}/cred/x.bin", b"x")
    wrong = "WRONG" + os.environ[which][5:]
    monkeypatch.setenv(which, wrong)
    url = f"s3://{s3_env.shared_bucket}/cred/x.bin"
    messages = [
        _storage_error(storage.read_bytes, url),
        _storage_error(storage.check_readable, f"s3://{s3_env.shared_bucket}"),
        _storage_error(storage.write_bytes, url, b"y"),
        _storage_error(storage.find_files, f"s3://{s3_env.shared_bucket}/cred"),
    ]
    for message in messages:
        assert message.endswith("access denied (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
        assert wrong not in message and s3_env.secret not in message
    monkeypatch.setenv(which, s3_env.key if which == "AWS_ACCESS_KEY_ID" else s3_env.secret)
    assert storage.read_bytes(url) == b"x"  # the server checked the signature, not the bucket


def test_anonymous_access_is_refused_by_the_server(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "1")
    assert storage.current_settings().anon
    message = _storage_error(storage.check_readable, f"s3://{s3_env.shared_bucket}")
    assert "access denied to anonymous requests" in message


def test_unreachable_endpoint(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    (port,) = free_ports(1)  # nothing listens there once the probe socket is closed
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # the budget has tests of its own below
    url = "s3://bucket/x.wav"
    expected = f"{url}: cannot reach endpoint http://127.0.0.1:{port}"
    assert _storage_error(storage.read_bytes, url) == expected
    assert _storage_error(storage.write_bytes, url, b"x") == expected
    assert (
        _storage_error(storage.exists, "s3://bucket")
        == f"s3://bucket: cannot reach endpoint http://127.0.0.1:{port}"
    )


def test_env_endpoint_precedence_and_config_override(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    (closed,) = free_ports(1)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # the closed port fails at once
    url = f"s3://{s3_env.shared_bucket}/env/x.bin"
    storage.write_bytes(url, b"x")

    # The S3-specific variable wins over the general one.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint_url)
    assert storage.current_settings().endpoint_url == s3_env.endpoint_url
    assert storage.read_bytes(url) == b"x"

    # Config overrides the environment field by field.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    assert "cannot reach endpoint" in _storage_error(storage.read_bytes, url)
    storage.configure(s3_env.settings())
    assert storage.read_bytes(url) == b"x"
    storage.configure(storage.S3Settings(endpoint_url=s3_env.endpoint_url))
    assert "access denied" in _storage_error(storage.read_bytes, url)  # env's wrong secret stays

    assert storage.S3Settings.from_env({}) == storage.S3Settings()
    env = {
        "AWS_ENDPOINT_URL": "http://a:1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_NO_SIGN_REQUEST": "true",
        "AWS_MAX_ATTEMPTS": "9",
        "AURALFLOW_S3_RETRY_SECONDS": "2.5",
    }
    assert storage.S3Settings.from_env(env) == storage.S3Settings(
        endpoint_url="http://a:1", region="eu-west-1", anon=True, max_attempts=9, retry_seconds=2.5
    )
    # Given credentials replace anonymous access from the environment, and the reverse.
    anon = storage.S3Settings(anon=True)
    keyed = storage.S3Settings(key="k", secret="s")
    assert not keyed.over(anon).anon and keyed.over(anon).key == "k"
    assert anon.over(keyed).anon and anon.over(keyed).key is None


def test_ensure_bucket_sends_no_region_to_custom_endpoint(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    url = "s3://made-by-ensure-bucket/run"
    storage.ensure_bucket(url)
    storage.ensure_bucket(url)  # idempotent
    storage.write_bytes(storage.join(url, "x"), b"x")
    assert storage.exists("s3://made-by-ensure-bucket") and storage.is_dir(
        "s3://made-by-ensure-bucket"
    )
    s3_env.delete_bucket("made-by-ensure-bucket")
    assert "not an s3:// URL" in _storage_error(storage.ensure_bucket, "/tmp/x")


def test_no_secret_in_repr_urls_or_text(s3_env: S3Server) -> None:
    settings = s3_env.settings()
    shown = repr(settings)
    assert s3_env.secret not in shown and s3_env.key not in shown and "***" in shown
    assert s3_env.endpoint_url in shown

    assert storage.mask_url("https://user:pa55@host:9000/b?X-Amz-Signature=abc&part=2") == (
        "https://***@host:9000/b?X-Amz-Signature=***&part=2"
    )
    text = f"failed with key {s3_env.key} and secret {s3_env.secret} at s3://u:p@bucket/k"
    cleaned = storage.redact(text)
    assert s3_env.key not in cleaned and s3_env.secret not in cleaned and ":p@" not in cleaned
    # Configured secrets are known too, even when the environment has none.
    storage.configure(storage.S3Settings(key="CONFIGKEY123", secret="configsecret456"))
    assert storage.redact("x CONFIGKEY123 configsecret456 y") == "x *** *** y"


def test_server_persists_across_restart(tmp_path: Path) -> None:
    """And a read sent while it is down waits for it: connection errors, then 5xx, are retried."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("no `weed` binary")
    server = make_server(tmp_path / "weed", binary)
    server.start()
    try:
        bucket = server.new_bucket()
        server.client().pipe_file(f"{bucket}/kept.bin", b"still here")
    finally:
        server.stop()
    storage.configure(dataclasses.replace(server.settings(), max_attempts=50, retry_seconds=60))
    read: list[bytes | Exception] = []

    def read_while_down() -> None:
        try:
            read.append(storage.read_bytes(f"s3://{bucket}/kept.bin"))
        except Exception as err:
            read.append(err)

    reader = threading.Thread(target=read_while_down, daemon=True)
    reader.start()
    time.sleep(0.5)
    # Started here, not in a thread: the server dies with the thread that started it.
    server.start()
    try:
        reader.join(90)
        assert read == [b"still here"]
        assert server.client().cat_file(f"{bucket}/kept.bin") == b"still here"
    finally:
        storage.configure(None)
        server.stop()


def test_absolute_makes_relative_local_paths_absolute_and_leaves_buckets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("demo_output/session") == f"{tmp_path}/demo_output/session"
    assert storage.absolute(str(tmp_path / "x")) == str(tmp_path / "x")
    assert storage.absolute("s3://bucket/sessions/a") == "s3://bucket/sessions/a"


# ----------------------------------------------------------------------------------------------
# Retries: transient failures get a budget, permanent ones none

OBJECT = b"served after all"


class _FakeS3(ThreadingHTTPServer):
    """Serves OBJECT at every key, after answering the failures planned per HTTP method.

    A planned status of 0 drops the connection without an answer; code "cut" sends the headers
    and half the body, then drops it.

    SeaweedFS cannot be made to throttle; this stands in for a throttled or failing endpoint and
    counts what the client sent.
    """

    daemon_threads = True

    def __init__(self, port: int = 0, failures: dict[str, list[tuple[int, str]]] | None = None):
        super().__init__(("127.0.0.1", port), _FakeS3Handler)
        self.failures = {method: list(plan) for method, plan in (failures or {}).items()}
        self.log: list[tuple[str, int]] = []

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.log if m == method)


class _FakeS3Handler(BaseHTTPRequestHandler):
    server: _FakeS3

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        plan = self.server.failures.get(self.command)
        status, code = plan.pop(0) if plan else (200, "")
        self.server.log.append((self.command, status))
        if status == 0:
            self.close_connection = True
            return
        if status == 200:
            body = OBJECT
            headers = {"ETag": '"e1"', "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT"}
        else:
            body = f"<Error><Code>{code}</Code><Message>planned</Message></Error>".encode()
            headers = {"Content-Type": "application/xml"}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if code == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        elif self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer


@contextlib.contextmanager
def _fake_s3(**kwargs: object) -> Iterator[_FakeS3]:
    server = _FakeS3(**kwargs)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _point_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, attempts: int, seconds: float = 30):
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", str(attempts))
    monkeypatch.setenv("AURALFLOW_S3_RETRY_SECONDS", str(seconds))


def test_retry_policy_waits_double_with_jitter_up_to_a_cap() -> None:
    policy = storage.S3Settings().retry_policy()
    assert (policy.attempts, policy.budget_s) == (6, 30.0)
    for attempt, nominal in enumerate([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0], start=1):
        waits = [policy.wait(attempt) for _ in range(200)]
        assert nominal / 2 <= min(waits) and max(waits) <= nominal
        assert max(waits) - min(waits) > nominal / 10  # jittered
    assert policy.delay(5, 0.0) is not None and policy.delay(6, 0.0) is None  # 6 attempts in all
    assert policy.delay(1, 29.99) is None  # would end past the 30 s budget
    assert "AWS_MAX_ATTEMPTS='x'" in _storage_error(
        storage.S3Settings.from_env, {"AWS_MAX_ATTEMPTS": "x"}
    )
    with pytest.raises(StorageError, match="at least 1"):
        storage.S3Settings(max_attempts=0)
    merged = storage.S3Settings(max_attempts=3).over(storage.S3Settings(retry_seconds=0.0))
    assert merged.retry_policy() == storage.RetryPolicy(attempts=3, budget_s=0.0)


def test_down_endpoint_fails_after_the_attempts(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = free_ports(1)
    _point_at(monkeypatch, f"http://127.0.0.1:{port}", attempts=4)
    t0 = time.monotonic()
    message = _storage_error(storage.read_bytes, "s3://bucket/x.wav")
    elapsed = time.monotonic() - t0
    assert message == f"s3://bucket/x.wav: cannot reach endpoint http://127.0.0.1:{port}"
    assert 0.7 <= elapsed < 4.0  # three waits: 0.2, 0.4, 0.8 s, each jittered to 50-100 %


def test_down_endpoint_fails_after_the_time_budget(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = free_ports(1)
    _point_at(monkeypatch, f"http://127.0.0.1:{port}", attempts=100, seconds=1.0)
    t0 = time.monotonic()
    assert "cannot reach endpoint" in _storage_error(storage.exists, "s3://bucket/x.wav")
    assert 0.3 <= time.monotonic() - t0 < 2.5


def test_read_waits_for_an_endpoint_that_comes_up(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = free_ports(1)
    _point_at(monkeypatch, f"http://127.0.0.1:{port}", attempts=20, seconds=15)
    servers: list[_FakeS3] = []

    def come_up() -> None:
        time.sleep(3.5)  # past the 3 s that the old 2 x 3 attempts could wait
        servers.append(_FakeS3(port=port))
        servers[0].serve_forever()

    threading.Thread(target=come_up, daemon=True).start()
    t0 = time.monotonic()
    try:
        assert storage.read_bytes("s3://bucket/late.bin") == OBJECT
        assert time.monotonic() - t0 >= 3.5
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize(
    "status, code",
    [(503, "SlowDown"), (500, "InternalError"), (429, "TooManyRequests"), (0, "dropped")],
)
def test_throttling_and_server_errors_are_retried(
    status: int, code: str, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _fake_s3(failures={"GET": [(status, code)] * 3}) as server:
        _point_at(monkeypatch, server.endpoint_url, attempts=4)
        assert storage.read_bytes("s3://bucket/mix.wav") == OBJECT
        assert server.count("GET") == 4


def _read_through_open_file(url: str) -> bytes:
    with storage.open_file(url) as f:
        return f.read()


def _read_through_pyarrow(url: str) -> bytes:  # how Ray Train downloads a checkpoint
    fs, path = storage.to_pyarrow_fs(url)
    with fs.open_input_file(path) as f:
        return f.read()


@pytest.mark.parametrize(
    "read", [storage.read_bytes, _read_through_open_file, _read_through_pyarrow]
)
def test_a_body_cut_mid_read_is_fetched_again_within_the_budget(
    read, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _fake_s3(failures={"GET": [(200, "cut")] * 2}) as server:
        _point_at(monkeypatch, server.endpoint_url, attempts=4)
        assert read("s3://bucket/mix.wav") == OBJECT
        assert server.count("GET") == 3
    if read is _read_through_pyarrow:
        return  # pyarrow words its own errors
    with _fake_s3(failures={"GET": [(200, "cut")] * 100}) as server:
        _point_at(monkeypatch, server.endpoint_url, attempts=3)
        message = _storage_error(read, "s3://bucket/mix.wav")
        assert message == (
            f"s3://bucket/mix.wav: connection to endpoint {server.endpoint_url} "
            "was cut mid-read through every retry"
        )
        assert server.count("GET") == 3


@pytest.mark.parametrize(
    "status, code, reason",
    [
        (
            503,
            "SlowDown",
            "endpoint {} answered SlowDown (throttled or failing) through every retry",
        ),
        (0, "dropped", "cannot reach endpoint {}"),
    ],
)
def test_transient_errors_give_up_after_the_attempts(
    status: int, code: str, reason: str, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _fake_s3(failures={"GET": [(status, code)] * 100}) as server:
        _point_at(monkeypatch, server.endpoint_url, attempts=3)
        message = _storage_error(storage.read_bytes, "s3://bucket/mix.wav")
        assert message == "s3://bucket/mix.wav: " + reason.format(server.endpoint_url)
        # botocore's and s3fs's loops add none; aiohttp itself resends an idempotent request once
        # when the server drops the connection (RFC 9112), below the retry loop.
        assert server.count("GET") in ((3,) if status else (3, 6))


@pytest.mark.parametrize(
    "status, code, reason",
    [
        (403, "AccessDenied", "access denied (check"),
        (403, "SignatureDoesNotMatch", "access denied (check"),
        (404, "NoSuchKey", ": not found"),
        (404, "NoSuchBucket", ": bucket does not exist"),
        (400, "InvalidArgument", "[Errno 22] planned"),
    ],
)
def test_permanent_errors_are_not_retried(
    status: int, code: str, reason: str, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _fake_s3(failures={"GET": [(status, code)] * 100}) as server:
        _point_at(monkeypatch, server.endpoint_url, attempts=6)
        assert reason in _storage_error(storage.read_bytes, "s3://bucket/mix.wav")
        assert server.count("GET") == 1


def test_permanent_errors_fail_at_once_on_the_real_server(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "_FIRST_WAIT_S", 5.0)  # any retry would cost 2.5 s or more
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "6")
    url = f"s3://{s3_env.shared_bucket}/retry/x.bin"
    storage.write_bytes(url, b"x")
    cases = [
        (storage.read_bytes, f"s3://{s3_env.shared_bucket}/retry/missing.bin", ": not found"),
        (storage.read_bytes, "s3://no-such-bucket-4d1e/x.bin", ": bucket does not exist"),
        (storage.remove, f"s3://{s3_env.shared_bucket}/retry/missing.bin", ": not found"),
    ]
    for fn, target, reason in cases:
        t0 = time.monotonic()
        assert _storage_error(fn, target).endswith(reason)
        assert time.monotonic() - t0 < 2.0
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    t0 = time.monotonic()
    assert "access denied" in _storage_error(storage.read_bytes, url)
    assert time.monotonic() - t0 < 2.0
