"""PromQL and Prometheus helpers for the monitoring tests: the dashboards' expressions and the
metric names in them, and a real Prometheus (Debian's binary, installed where missing by
infra/local/install-prometheus.sh, root only) queried through its HTTP API."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "infra" / "local" / "install-prometheus.sh"
DASHBOARDS = REPO / "infra" / "grafana" / "dashboards"
_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels, keywords and strings removed)."""
    if m := re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)\s*", expr):
        return {m[1]}
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\s*(\()?", text):
        if not m[2] and m[1] not in _NOT_METRICS:
            names.add(m[1])
    return names


def dashboards() -> dict[str, dict]:
    """Every Grafana dashboard in infra/, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def expressions(dashboard: dict) -> list[str]:
    """Every PromQL expression: panel targets and template-variable queries."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [
        v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
    ]
    return exprs


def prometheus_binary() -> str:
    """The `prometheus` executable, installing Debian's package first when root can; else skip."""
    found = shutil.which("prometheus")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip(
            "no `prometheus` binary and not root to install it: run infra/local/install-prometheus.sh as root"
        )
    done = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=900)
    found = shutil.which("prometheus")
    if not found:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"`prometheus` could not be installed by {INSTALL.name}: {last}")
    return found


def api(base_url: str, path: str, **params: str) -> dict:
    """GET an API path; Prometheus answers errors (e.g. a PromQL syntax error) as JSON too."""
    url = f"{base_url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        return json.load(err)


def query(base_url: str, expr: str) -> dict:
    return api(base_url, "/api/v1/query", query=expr)


def wait_for_series(base_url: str, expr: str, timeout: float = 30.0) -> list[dict]:
    """The instant vector for ``expr`` once it is non-empty (the first scrape takes a few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = query(base_url, expr)
        assert answer["status"] == "success", answer
        if answer["data"]["result"] or time.monotonic() > deadline:
            return answer["data"]["result"]
        time.sleep(0.5)


def wait_ready(
    base_url: str, process: subprocess.Popen | None = None, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"prometheus exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"prometheus at {base_url} not ready after {timeout:.0f} s")
