"""Local scratch space that outlives no process: what a worker killed outright leaves is found.

A worker killed by SIGKILL or the OOM killer runs no cleanup, and its scratch files (float32
stem spools, S3 upload spools: full-length audio each) would fill the node's disk over a long
job. So each process keeps its scratch in a folder of its own, named by pid and start time
(a later process given the same pid started later), and `sweep` removes the folders of
processes that no longer run. Local outputs' partial files carry the same owner tag, so
`remove_stale_partials` can tell a dead writer's leftovers from a live writer's work.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile


def root() -> str:
    """Where every process's scratch folder lies: one root per user in the temp folder."""
    return os.path.join(tempfile.gettempdir(), f"auralflow-scratch-{os.getuid()}")


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), None if none runs under that pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22, after "(comm)"
    except OSError:
        return None


def owner() -> str:
    """This process as ``<pid>-<start time>``: the tag its scratch and partial files carry."""
    pid = os.getpid()
    return f"{pid}-{_started(pid)}"


def _dead(tag: str) -> bool:
    """Whether the process a tag names is gone; never where liveness cannot be known."""
    pid, _, started = tag.partition("-")
    return pid.isdigit() and _started(os.getpid()) is not None and _started(int(pid)) != started


def process_dir() -> str:
    """This process's scratch folder, made on first use."""
    path = os.path.join(root(), owner())
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def sweep() -> None:
    """Remove the scratch folders of processes that no longer run on this machine."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(root()):
            if _dead(name):
                shutil.rmtree(os.path.join(root(), name), ignore_errors=True)


_PARTIAL = re.compile(r"^\..+\.tmp-(?P<owner>\d+-\d+)-[0-9a-f]{32}$")


def partial_name(name: str) -> str:
    """The hidden name a file is written under before it is renamed to ``name``."""
    return f".{name}.tmp-{owner()}-{os.urandom(16).hex()}"


def remove_stale_partials(folder: str) -> None:
    """Remove partial files in local ``folder`` whose writer no longer runs."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in os.listdir(folder):
            match = _PARTIAL.match(name)
            if match and _dead(match["owner"]):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
