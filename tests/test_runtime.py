"""Process settings the compute runs under: the glibc heap (`allocator`) and worker priority.

Both are worth 10-90% of CPU throughput (docs/benchmarks.md), so a change that silently drops
them is a regression; each check runs in a fresh process or a real Ray worker, where they apply.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from auralflow_dist import allocator, runtime
from auralflow_dist.config import TrainerConfig, from_dict
from auralflow_dist.train.trainer import make_run_config

GLIBC = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
needs_glibc = pytest.mark.skipif(not GLIBC, reason="glibc only")


def _python(code: str, env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_worker_tunables_are_ours_unless_the_user_set_their_own(monkeypatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    env = allocator.worker_runtime_env()["env_vars"]["GLIBC_TUNABLES"]
    assert env.split(":") == [
        "glibc.malloc.mmap_max=0",
        "glibc.malloc.arena_max=1",
        "glibc.malloc.trim_threshold=1073741824",
    ]
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    assert allocator.worker_runtime_env() == {
        "env_vars": {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}
    }


@needs_glibc
def test_tune_applies_the_settings_in_this_process_but_not_over_the_users() -> None:
    code = "from auralflow_dist import allocator; print(allocator.tune())"
    assert _python(code) == "True"
    assert _python(code, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) == "False"


# Bytes glibc has freshly mapped while a 64 MiB array made on a new thread is alive. glibc's
# default maps such an array afresh (and unmaps it when freed, so the next one is faulted in and
# zeroed again); with the tuned heap it comes from the reusable main heap: nothing mapped.
PROBE = """
import ctypes, threading
import numpy as np

def probe():
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                    "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = Info
    mapped = []
    def work():
        for _ in range(3):
            array = np.ones(8 << 20)
            mapped.append(mallinfo2().hblkhd)
            del array
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return min(mapped)
"""


@needs_glibc
def test_tuned_heap_serves_large_arrays_from_the_heap_not_fresh_mappings() -> None:
    assert int(_python(PROBE + "print(probe())")) >= 64 << 20
    tuned = "from auralflow_dist import allocator\nallocator.tune()\n" + PROBE + "print(probe())"
    assert int(_python(tuned)) < 1 << 20


def test_training_workers_start_with_the_heap_settings(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    run_config = make_run_config(str(tmp_path), "run", from_dict(TrainerConfig, {}))
    env = run_config.worker_runtime_env["env_vars"]
    assert env["GLIBC_TUNABLES"] == allocator.worker_runtime_env()["env_vars"]["GLIBC_TUNABLES"]
    assert env["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"  # it printed every line twice


@needs_glibc
def test_ray_workers_run_with_the_tuned_heap(ray_local) -> None:
    import ray

    def mapped_bytes() -> int:
        namespace: dict = {}
        exec(PROBE, namespace)  # the probe above, run in the worker
        return namespace["probe"]()

    tuned = ray.remote(runtime_env=allocator.worker_runtime_env())(mapped_bytes)
    assert ray.get(tuned.remote()) < 1 << 20
    assert ray.get(ray.remote(mapped_bytes).remote()) >= 64 << 20  # Ray's default workers


def test_local_instance_runs_workers_at_the_control_planes_priority_and_off_other_state_apis() -> (
    None
):
    """Ray Train's placement-group cleaner asks the state API, every second, whether the run's
    controller lives. Sent to a past ``ray start``'s address (its /tmp/ray/ray_current_cluster),
    a query hung 40 s and every run's end 14 s; on a live other cluster it would read "dead".
    Ray's processes also inherit the local settings that keep them quiet, where the user has not
    set their own, and no idle worker is started ahead (each costs 0.008 of a core)."""
    code = """
import os, time, ray
from auralflow_dist import runtime
runtime.connect()

@ray.remote(num_cpus=0)
def probe():
    from ray.util.state import get_actor
    start = time.monotonic()
    try:
        get_actor("0" * 32, timeout=10)
    except Exception:
        pass
    local = ",".join(f"{k}={os.environ.get(k)}" for k in sorted(runtime.LOCAL_ENV))
    return os.nice(0), os.environ.get("RAY_API_SERVER_ADDRESS"), time.monotonic() - start, local

def idle_workers():  # this instance's workers with no task yet (Ray titles them ray::IDLE)
    parent, title = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title[int(pid)] = f.read()
        except OSError:
            pass
    def ours(pid):
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False
    return sum(t.startswith(b"ray::IDLE") and ours(p) for p, t in title.items())

time.sleep(6)  # Ray prestarts two within this on an idle 2-core machine
idle = idle_workers()
nice, api, seconds, local = ray.get(probe.remote())
print(nice, os.nice(0), api, os.environ.get("RAY_API_SERVER_ADDRESS"), f"{seconds:.3f}", local, idle)
ray.shutdown()
"""
    if os.nice(0) >= 15:
        pytest.skip("this process already runs at Ray's default worker niceness or lower")
    env = {"RAY_AUTH_MODE": "disabled", "LOG_NAME_UPDATE_INTERVAL_S": "5"}
    worker, driver, api, driver_api, seconds, local, idle = _python(code, env).split()
    assert idle == "0"  # no workers started ahead for the first driver
    expected = {**runtime.LOCAL_ENV, "LOG_NAME_UPDATE_INTERVAL_S": "5"}  # the user's own wins
    assert local == ",".join(f"{k}={v}" for k, v in sorted(expected.items()))
    assert worker == driver
    assert api == runtime.NO_STATE_API and driver_api == "None"  # the driver's own is untouched
    assert float(seconds) < 2.0
