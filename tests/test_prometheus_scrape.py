"""A real Prometheus scraping a real ``observability.serve`` process, configured from
infra/prometheus/prometheus.yml, and every dashboard expression evaluated by it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import free_ports
from prometheus_support import (
    dashboards,
    expressions,
    metric_names,
    prometheus_binary,
    query,
    wait_for_series,
    wait_ready,
)

from auralflow_dist import observability

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_YML = REPO / "infra" / "prometheus" / "prometheus.yml"

# A job driver: known values on /metrics until its stdin closes.
EXPORTER = """
import sys
from auralflow_dist import observability as o
o.serve(int(sys.argv[1]))
o.record_epoch("scrape-test", {"train_loss": 0.25, "val_loss": 0.5, "val_si_sdr": 7.5,
                               "val_si_sdri": 4.0, "samples_per_s": 120.0,
                               "data_wait_share": 0.1, "epoch": 3})
o.SEP_FILES.labels(job="sep-test", status="ok").inc(3)
o.SEP_FILES.labels(job="sep-test", status="failed").inc()
o.SEP_AUDIO_SECONDS.labels(job="sep-test").inc(7200)
o.SEP_REALTIME.labels(job="sep-test").set(40)
o.SEP_PENDING.labels(job="sep-test").set(5)
print("serving", flush=True)
sys.stdin.read()
"""
# Grafana's variables, as Grafana would substitute them with "All" selected.
VARIABLES = {"$__rate_interval": "1m", "$session": ".*", "$job": ".*"}


def scrape_config(exporter_port: int, sd_file: Path) -> dict:
    """The shipped config with a 1 s interval, the driver target on the exporter, and the Ray job
    reading a discovery file written the way Ray writes it (listing the exporter too)."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"]["scrape_interval"] = "1s"
    sd_file.write_text(
        json.dumps([{"labels": {"job": "ray"}, "targets": [f"127.0.0.1:{exporter_port}"]}])
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["ray"]["file_sd_configs"][0]["files"] = [str(sd_file)]
    jobs["auralflow"]["static_configs"][0]["targets"] = [f"127.0.0.1:{exporter_port}"]
    config["scrape_configs"] = [jobs["ray"], jobs["auralflow"]]  # no Pushgateway here
    return config


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = prometheus_binary()
    root = tmp_path_factory.mktemp("prometheus")
    exporter_port, web_port = free_ports(2)
    exporter = subprocess.Popen(
        [sys.executable, "-c", EXPORTER, str(exporter_port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    config = root / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(exporter_port, root / "ray_sd.json")))
    base_url = f"http://127.0.0.1:{web_port}"
    log = (root / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
         f"--web.listen-address=127.0.0.1:{web_port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert exporter.stdout.readline().strip() == "serving"
        wait_ready(base_url, server)
        yield base_url
    finally:
        for process in (server, exporter):
            if process is exporter:
                process.stdin.close()
            process.terminate()
            process.wait(15)
        log.close()


def test_promtool_accepts_the_shipped_config() -> None:
    prometheus_binary()
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not beside prometheus here")
    done = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_scrapes_the_driver_with_its_own_job_label(prometheus: str) -> None:
    ok = 'auralflow_separate_files_total{status="ok"}'
    (driver,) = wait_for_series(prometheus, ok.replace("{", '{job="sep-test", '))
    assert float(driver["value"][1]) == 3.0  # honor_labels kept the series' own `job`
    # The same series through the Ray job (no honor_labels): its label is moved aside.
    (via_ray,) = wait_for_series(prometheus, ok.replace("{", '{job="ray", '))
    assert via_ray["metric"]["exported_job"] == "sep-test"
    (sdr,) = wait_for_series(
        prometheus, 'auralflow_val_si_sdr_db{job="auralflow", session="scrape-test"}'
    )
    assert float(sdr["value"][1]) == 7.5


def test_ray_job_reads_rays_discovery_file(prometheus: str) -> None:
    (up,) = wait_for_series(prometheus, 'up{job="ray"}')
    assert float(up["value"][1]) == 1.0


def test_every_dashboard_expression_is_valid_promql_with_data(prometheus: str) -> None:
    wait_for_series(prometheus, "auralflow_separate_files_pending")
    # rate() needs two samples in its window; wait for the second scrape.
    wait_for_series(prometheus, "rate(auralflow_separate_files_total[1m])")
    for dashboard in dashboards().values():
        for expr in expressions(dashboard):
            if expr.startswith("label_values("):
                continue  # a Grafana function, not PromQL
            concrete = re.sub(r"\$\w+", lambda m: VARIABLES[m[0]], expr)
            answer = query(prometheus, concrete)
            assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
            if all(m in observability.EXPORTED for m in metric_names(expr)):
                assert answer["data"]["result"], f"no data for {expr}"


def test_dashboard_arithmetic_on_known_values(prometheus: str) -> None:
    separation = {
        p["title"]: p["targets"][0]["expr"] for p in dashboards()["separation.json"]["panels"]
    }
    wait_for_series(prometheus, "auralflow_separate_audio_seconds_total")
    for title, expected in (
        ("Audio separated", 2.0),
        ("Failed files", 1.0),
        ("Files pending", 5.0),
    ):
        expr = separation[title].replace("$job", "sep-test")
        (series,) = query(prometheus, expr)["data"]["result"]
        assert float(series["value"][1]) == expected, title
