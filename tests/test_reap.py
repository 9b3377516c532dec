"""The detached reaper `runtime.end_local_ray` leaves behind: it kills what outlives the grace."""

from __future__ import annotations

import subprocess
import sys
import time

from auralflow_dist.reap import reap

# A process that ignores SIGTERM, as Ray's agents may until they notice the raylet is gone.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def test_reap_kills_a_process_that_ignores_sigterm_and_skips_ended_ones() -> None:
    stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    time.sleep(0.5)  # the stubborn one has set its handler
    stubborn.terminate()
    start = time.monotonic()
    reap([stubborn.pid, ended.pid], grace_s=0.5)
    assert stubborn.wait(timeout=5) == -9  # SIGKILL, after the grace
    assert 0.5 <= time.monotonic() - start < 5


def test_reap_returns_as_soon_as_every_process_has_ended() -> None:
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    start = time.monotonic()
    # The unreaped child turns zombie: it counts as ended, so the grace is not waited out.
    time.sleep(0.5)
    reap([quick.pid], grace_s=30)
    assert time.monotonic() - start < 5
    assert quick.wait(timeout=5) == 0
