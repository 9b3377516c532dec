"""Faults and bad input in the separation job (issue 16): nothing hangs, nothing is lost.

Names that collide or take the job's own files, a job stopped mid-run, a worker SIGKILLed with a
neighbour in flight, and the S3 endpoint going away mid-job. The unit tests need no Ray; the
others run on the session's local Ray with the tiny model and short noise of
``test_separate_job``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
from conftest import S3Server
from test_separate_job import RATE, noise, put, save_model, tiny_model

from auralflow_dist import storage
from auralflow_dist.attempts import LEDGER_NAME, MAX_ATTEMPTS, AttemptLog
from auralflow_dist.errors import StorageError
from auralflow_dist.models.separator import Bundle
from auralflow_dist.separate import SeparateConfig, SeparationSummary, results, run_separation
from auralflow_dist.separate.job import FileSeparator, _Gate
from auralflow_dist.separate.results import FileResult, Tally
from auralflow_dist.separate.sources import (
    JOB_FILES,
    Source,
    list_sources,
    track_name,
    track_names,
)
from auralflow_dist.separate.track import DONE_NAME, TrackSeparator

# ------------------------------------------------------------------------------------------------
# Names


TRICKY = [
    "x.wav",
    "x.flac",
    "x.wav.wav",
    "X.mp3",
    "x.wav~0.wav",
    "x/mixture.wav",
    "x/vocals.wav.wav",
    "x/vocals.wav",
    "x/_done.json.wav",
    "x/residual.flac.ogg",
    "_results.parquet.wav",
    "_results.csv.flac",
    "_job.json.wav",
    "_job.json/a.wav",
    "_attempts.mp3",
    "_attempts/b.wav",
    "a::b.wav",
    "mixture.wav",
    "d/e/mixture.flac",
    "d/e.wav",
    "d/e.flac",
    "d/e/vocals.wav.mp3",
]


def check_names(relative: list[str], names: list[str]) -> None:
    """One folder per input, none a job file, none where a track's outputs go."""
    folded = [n.casefold() for n in names]
    assert len(set(folded)) == len(names), (relative, names)
    reserved = {f.casefold() for f in JOB_FILES}
    tracks = set(folded)
    for name in folded:
        parts = name.split("/")
        assert parts[0] not in reserved, (relative, names)
        for at in range(1, len(parts)):
            inside = "/".join(parts[:at]) in tracks
            output_like = parts[at] == DONE_NAME or parts[at].endswith((".wav", ".flac"))
            assert not (inside and output_like), (relative, names)


def _valid(relative: list[str], names: list[str]) -> bool:
    try:
        check_names(relative, names)
    except AssertionError:
        return False
    return True


def test_track_names_are_one_to_one_and_clear_of_the_jobs_files() -> None:
    assert track_names(["x.wav", "x.flac", "x.wav.wav"])[:2] == ["x.wav", "x.flac"]
    assert track_names(["x.wav", "x.flac", "x.wav.wav"])[2].startswith("x.wav~")
    assert track_names(["_results.parquet.wav"])[0].startswith("_results.parquet~")
    rng = random.Random(0)
    for size in range(1, len(TRICKY) + 1):
        for _ in range(40):
            relative = sorted(rng.sample(TRICKY, size))
            names = track_names(relative)
            check_names(relative, names)
            assert track_names(relative) == names  # a re-run finds (and skips) the same folders
            simple = [track_name(r) for r in relative]
            if _valid(relative, simple):  # nothing to resolve: the documented names stay
                assert names == simple
    for pair in itertools.permutations(TRICKY, 2):
        check_names(list(pair), track_names(list(pair)))


def test_a_single_input_file_inside_the_output_folder_is_separated(tmp_path: Path) -> None:
    song = tmp_path / "out" / "song.wav"
    put(str(song), noise(0.1, RATE, 1), RATE, "WAV")
    assert list_sources(str(song), exclude=str(tmp_path / "out")) == [Source(str(song), "song")]
    assert list_sources(str(tmp_path / "out"), exclude=str(tmp_path / "out")) == []


def test_a_double_colon_in_a_file_name_is_a_name_not_a_url_chain(storage_root: str) -> None:
    url = storage.join(storage_root, "in", "a::b.wav")
    put(url, noise(0.5, RATE, 1), RATE, "WAV")
    (source,) = list_sources(storage.join(storage_root, "in"))
    assert source == Source(url, "a::b")
    job = SeparateConfig(
        model="unused", audio=url, save=storage.join(storage_root, "out")
    ).validate()
    result = TrackSeparator(Bundle([tiny_model().separator]), job, model_key="k", run_id="r")(
        source
    )
    assert result.status == "ok", result.error
    assert result.output("vocals") == storage.join(storage_root, "out", "a::b", "vocals.wav")
    assert storage.exists(result.output("vocals"))


# ------------------------------------------------------------------------------------------------
# Progress


def test_a_progress_line_comes_while_no_file_finishes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "HEARTBEAT_S", 0.1)
    lines: list[str] = []
    tally = Tally(4, f"test-{uuid.uuid4().hex[:8]}", lines.append)
    tally.add(FileResult("a.wav", "a", status="ok", duration_s=60.0, seconds=1.0))
    with tally.heartbeat():
        time.sleep(0.55)
    assert len(lines) >= 4, lines
    assert all(line.startswith("1/4 files (0 skipped, 0 failed)") for line in lines), lines
    assert "x real time" in lines[-1] and "s elapsed, ETA " in lines[-1], lines[-1]
    count = len(lines)
    time.sleep(0.3)
    assert len(lines) == count  # the heartbeat stopped with its block


def test_the_table_is_rewritten_while_a_long_file_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(results, "TABLE_INTERVAL_S", 0.05)
    sources = [Source(f"/in/{n}.wav", n) for n in ("a", "long", "c")]
    table = results.ResultsTable(str(tmp_path), sources, echo=print)
    tally = Tally(3, f"test-{uuid.uuid4().hex[:8]}", lambda line: None)
    with tally.heartbeat(also=table.update):
        table.add(FileResult("/in/a.wav", "a", status="ok"))
        deadline = time.monotonic() + 30  # no result comes in: the heartbeat writes the table
        while not (tmp_path / "_results.csv").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    rows = _table(str(tmp_path / "_results.parquet"))
    assert rows["a.wav"]["status"] == "ok"
    assert {rows[n]["status"] for n in ("long.wav", "c.wav")} == {"pending"}
    assert rows["c.wav"]["error"] == "not processed yet"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_job_as_an_exception(signum: int) -> None:
    from auralflow_dist.separate.job import _signals_as_exit

    before = signal.getsignal(signum)
    lines: list[str] = []
    with pytest.raises(SystemExit) as stopped, _signals_as_exit(lines.append):
        os.kill(os.getpid(), signum)
        time.sleep(5)
    assert stopped.value.code == 128 + signum
    assert str(stopped.value) == f"stopped by {signal.Signals(signum).name}"
    assert "a re-run skips the files already done" in lines[0]
    assert signal.getsignal(signum) is before


# ------------------------------------------------------------------------------------------------
# Attempts: charged to a file only for deaths alone


@pytest.fixture
def file_separator(tmp_path: Path) -> Iterator[Callable[[int], FileSeparator]]:
    model_dir = save_model(str(tmp_path / "model"))
    job = SeparateConfig(model=model_dir, audio=str(tmp_path), save=str(tmp_path / "out"))

    def make(at_once: int) -> FileSeparator:
        settings = storage.current_settings()
        return FileSeparator(job.validate(), [model_dir], "k", "run", settings, 1, at_once, "")

    yield make
    storage.configure(None)


def _records(log: AttemptLog, url: str) -> list[bool]:
    return sorted(log.earlier(url))


def test_a_file_is_failed_only_after_deaths_alone(
    tmp_path: Path, file_separator: Callable[[int], FileSeparator]
) -> None:
    separator = file_separator(2)
    log = separator.log
    poison, neighbour, fresh = (str(tmp_path / f"{n}.wav") for n in ("poison", "next", "new"))
    for url in (poison, neighbour, fresh):
        put(url, noise(0.3, RATE, 1), RATE, "WAV")
    log.begin(poison, alone=False)
    for _ in range(MAX_ATTEMPTS):
        log.begin(poison, alone=True)
    for _ in range(MAX_ATTEMPTS + 1):  # died beside the poison every time: never charged
        log.begin(neighbour, alone=False)

    failed = separator.attempt(Source(poison, "poison"))
    assert failed.status == "failed" and failed.attempts == MAX_ATTEMPTS + 1
    assert f"died {MAX_ATTEMPTS} times while separating this file alone" in failed.error
    assert len(failed.error.splitlines()) == 1

    rerun = separator.attempt(Source(neighbour, "neighbour"))
    assert (rerun.status, rerun.attempts) == ("ok", MAX_ATTEMPTS + 2), rerun.error
    assert _records(log, neighbour) == [False] * (MAX_ATTEMPTS + 1) + [True]  # re-run alone

    first = separator.attempt(Source(fresh, "new"))
    assert (first.status, first.attempts) == ("ok", 1)
    assert _records(log, fresh) == [False]  # side by side: a death would not be its own
    assert _records(AttemptLog(log.save, "run"), fresh) == [False]  # no process holds them
    solo = str(tmp_path / "solo.wav")
    put(solo, noise(0.3, RATE, 1), RATE, "WAV")
    assert file_separator(1).attempt(Source(solo, "solo")).status == "ok"
    assert _records(log, solo) == [True]  # one file at a time per actor: each runs alone
    log.remove()
    assert not storage.exists(storage.join(log.save, LEDGER_NAME))


def test_a_file_run_alone_waits_for_its_neighbours_and_holds_back_new_ones() -> None:
    gate, order = _Gate(), []
    release = {name: threading.Event() for name in ("a", "alone", "b")}

    def run(name: str, alone: bool) -> threading.Thread:
        def body() -> None:
            with gate.enter(alone):
                order.append(f"{name} in")
                release[name].wait(10)
                order.append(f"{name} out")

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        return thread

    def settle() -> None:
        time.sleep(0.1)

    threads = [run("a", alone=False)]
    settle()
    threads.append(run("alone", alone=True))
    settle()
    threads.append(run("b", alone=False))
    settle()
    assert order == ["a in"]
    for name in ("a", "alone", "b"):
        release[name].set()
        settle()
    for thread in threads:
        thread.join(10)
    assert order == ["a in", "a out", "alone in", "alone out", "b in", "b out"]


# ------------------------------------------------------------------------------------------------
# The job on Ray


def _job(model: str, audio: str, save: str, **options) -> SeparateConfig:
    options = {"workers": 1, "batch_size": 1, **options}
    return SeparateConfig(model=model, audio=audio, save=save, **options)


def _table(summary_or_url: SeparationSummary | str) -> dict[str, dict]:
    url = summary_or_url if isinstance(summary_or_url, str) else summary_or_url.results_url
    rows = pq.read_table(io.BytesIO(storage.read_bytes(url))).to_pylist()
    return {r["input_url"].rsplit("/", 1)[1]: r for r in rows}


NAMES = [
    "x.wav",
    "x.flac",
    "x.wav.wav",
    "_results.parquet.wav",
    "_job.json.wav",
    "_results.csv.flac",
]


@pytest.mark.usefixtures("ray_local")
def test_a_stopped_job_leaves_a_whole_table_and_odd_names_get_folders_of_their_own(
    tmp_path: Path,
) -> None:
    model = save_model(str(tmp_path / "model"))
    inputs, save = tmp_path / "in", str(tmp_path / "out")
    for i, name in enumerate(NAMES):
        fmt = "FLAC" if name.endswith(".flac") else "WAV"
        put(str(inputs / name), noise(0.3, RATE, 1, seed=i), RATE, fmt)
    (inputs / "empty.wav").write_bytes(b"")

    def stop_at_failure(line: str) -> None:
        if line.startswith("failed:"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_separation(_job(model, str(inputs), save), echo=stop_at_failure)
    table = _table(storage.join(save, "_results.parquet"))
    assert sorted(table) == sorted([*NAMES, "empty.wav"])
    assert "is empty" in table["empty.wav"]["error"]
    for name in NAMES:
        row = table[name]
        assert row["status"] == "ok" or (
            row["status"] == "failed"
            and row["error"] == "not processed: the job stopped (KeyboardInterrupt)"
        ), row

    summary = run_separation(_job(model, str(inputs), save), echo=lambda line: None)
    rows = {r.input_url.rsplit("/", 1)[1]: r for r in summary.results}
    assert all(rows[n].status in ("ok", "skipped") for n in NAMES), rows
    assert len({rows[n].output("vocals") for n in NAMES}) == len(NAMES)
    assert all(os.path.isfile(rows[n].output("vocals")) for n in NAMES)
    assert sorted(_table(summary)) == sorted([*NAMES, "empty.wav"])
    assert json.loads(storage.read_bytes(storage.join(save, "_job.json")))["files"] == 7
    assert not storage.exists(storage.join(save, LEDGER_NAME))


@pytest.mark.usefixtures("ray_local")
def test_a_worker_killed_beside_a_neighbour_charges_neither(tmp_path: Path) -> None:
    model = save_model(str(tmp_path / "model"))
    inputs, save = tmp_path / "in", str(tmp_path / "out")
    for i in range(2):
        put(str(inputs / f"long{i}.wav"), noise(90, RATE, 1, seed=i), RATE, "WAV")
    job = _job(model, str(inputs), save, cpus_per_worker=2)
    done: list[SeparationSummary | BaseException] = []

    def separate() -> None:
        try:
            done.append(run_separation(job, echo=lambda line: None))
        except BaseException as err:
            done.append(err)

    thread = threading.Thread(target=separate, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while len(records := _attempt_records(save)) < 2:
        assert time.monotonic() < deadline and thread.is_alive(), (records, done)
        time.sleep(0.05)
    pids = {r["pid"] for r in records}
    assert len(pids) == 1 and all(not r["alone"] for r in records), records
    os.kill(pids.pop(), signal.SIGKILL)  # both files in flight on the one actor
    while len(records := _attempt_records(save)) < 4 and thread.is_alive():
        time.sleep(0.05)
    assert [r["alone"] for r in records].count(True) == 2, records  # each re-run alone
    thread.join(180)
    assert done and isinstance(done[0], SeparationSummary), done
    summary = done[0]
    assert (summary.ok, summary.failed) == (2, 0), [r.error for r in summary.results]
    assert [r.attempts for r in summary.results] == [2, 2]
    table = _table(summary)
    assert sorted(table) == ["long0.wav", "long1.wav"]
    assert all(r["status"] == "ok" and r["attempts"] == 2 for r in table.values())


def _attempt_records(save: str) -> list[dict]:
    """The attempt records of a running job, each with ``alone`` from its name."""
    found = []
    for url in storage.glob(storage.join(save, LEDGER_NAME), "*/*/*.json"):
        try:
            record = json.loads(storage.read_bytes(url))
        except StorageError:  # the job removed its ledger meanwhile
            continue
        found.append({**record, "alone": url.rsplit("/", 1)[1].startswith("alone-")})
    return found


# ------------------------------------------------------------------------------------------------
# The S3 endpoint goes away mid-job


class Outage:
    """A TCP relay to the test S3 server that can go down and come back on its one port.

    To a client it is the server stopped and restarted (connections cut, new ones closed
    unanswered), at once: a real ``weed mini`` takes about 20 s to restart here.
    """

    def __init__(self, endpoint_url: str) -> None:
        target = urlparse(endpoint_url)
        self.target = (target.hostname, target.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.endpoint_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.up, self.closed = threading.Event(), threading.Event()
        self.up.set()
        self.dropped = 0
        self.live: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.up.is_set():
                self.dropped += 1
                conn.close()
                continue
            conn.settimeout(None)
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.live |= {conn, upstream}
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._cut(src, dst)

    def _cut(self, *socks: socket.socket) -> None:
        for sock in socks:
            with self.lock:
                self.live.discard(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def down(self) -> None:
        self.up.clear()
        with self.lock:
            live = list(self.live)
        self._cut(*live)

    def close(self) -> None:
        self.closed.set()
        self.down()
        self.listener.close()


@pytest.fixture
def outage(s3_env: S3Server) -> Iterator[Outage]:
    relay = Outage(s3_env.endpoint_url)
    storage.configure(storage.S3Settings(endpoint_url=relay.endpoint_url))
    yield relay
    relay.close()
    storage.configure(None)


def _wait_for_a_started_file(save: str, thread: threading.Thread, server: S3Server) -> None:
    """Until a worker has begun a file (its attempt record is in storage), asked not via the relay."""
    client, prefix = server.client(), save.removeprefix("s3://") + f"/{LEDGER_NAME}"
    deadline = time.monotonic() + 120
    while not client.find(prefix):
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)


def _start(job: SeparateConfig, lines: list[str]) -> tuple[threading.Thread, list]:
    done: list[SeparationSummary | BaseException] = []

    def separate() -> None:
        try:
            done.append(run_separation(job, echo=lines.append))
        except BaseException as err:
            done.append(err)

    thread = threading.Thread(target=separate, daemon=True)
    thread.start()
    return thread, done


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_an_s3_outage_is_ridden_out_within_the_retry_budget_and_fails_files_past_it(
    tmp_path: Path, outage: Outage, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = save_model(str(tmp_path / "model"))  # local: the actors load it during the outage
    root = f"s3://{s3_env.shared_bucket}/{uuid.uuid4().hex[:12]}"
    inputs = storage.join(root, "in")
    names = [f"s{i}.wav" for i in range(4)]
    for i, name in enumerate(names):
        put(storage.join(inputs, name), noise(1.0, RATE, 1, seed=i), RATE, "WAV")

    # Down for 3 s while files are under way, with the default 30 s budget: nothing fails.
    lines: list[str] = []
    thread, done = _start(_job(model, inputs, storage.join(root, "out1")), lines)
    _wait_for_a_started_file(storage.join(root, "out1"), thread, s3_env)
    outage.down()
    time.sleep(3.0)
    outage.up.set()
    thread.join(120)
    assert done and isinstance(done[0], SeparationSummary), (done, lines)
    assert (done[0].ok, done[0].failed) == (4, 0), [r.error for r in done[0].results]
    assert outage.dropped > 0  # requests did meet the outage, and were retried

    # Down for good with a 1 s budget: every file fails as one line, and so does the table.
    monkeypatch.setenv("AURALFLOW_S3_RETRY_SECONDS", "1")
    lines.clear()
    save = storage.join(root, "out2")
    thread, done = _start(_job(model, inputs, save), lines)
    _wait_for_a_started_file(save, thread, s3_env)
    outage.down()
    thread.join(120)
    assert done and isinstance(done[0], StorageError), (done, lines)
    assert "_results" in str(done[0]) and "cannot reach endpoint" in str(done[0])
    failed = [line for line in lines if line.startswith("failed:")]
    assert len(failed) == 4 and all(len(line.splitlines()) == 1 for line in failed), lines

    # Up again: a re-run completes everything.
    outage.up.set()
    monkeypatch.delenv("AURALFLOW_S3_RETRY_SECONDS")
    summary = run_separation(_job(model, inputs, save), echo=lambda line: None)
    assert (summary.ok, summary.failed) == (4, 0), [r.error for r in summary.results]
    assert sorted(_table(summary)) == names
