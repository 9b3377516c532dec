"""The Grafana dashboards and the Prometheus config in infra/ against what the code exports.

Every metric a dashboard queries must be one the project exports (``observability.EXPORTED``) or
one Ray 2.60 defines (checked in Ray's installed source, so a renamed Ray metric fails here), and
every project metric must be on a dashboard."""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

import pytest
import ray
import yaml
from prometheus_support import dashboards, expressions, metric_names
from ray._common.utils import get_default_ray_temp_dir
from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

from auralflow_dist import observability

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_YML = REPO / "infra" / "prometheus" / "prometheus.yml"

# Ray's own node metrics the dashboards use (the reporter agent's gauges, exported as ray_<name>).
RAY_METRICS = {
    "ray_node_gpus_utilization",
    "ray_node_gram_used",
    "ray_node_gram_available",
    "ray_node_cpu_utilization",
}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}


def used_metrics(dashboard: dict) -> set[str]:
    return set().union(*(metric_names(e) for e in expressions(dashboard)))


@cache
def ray_sources() -> str:
    root = Path(ray.__file__).parent
    return "\n".join(
        p.read_text(errors="ignore") for p in root.rglob("*.py") if "tests" not in p.parts
    )


def test_metric_names_are_extracted_from_promql() -> None:
    expr = (
        'sum by (job, status) (rate(auralflow_separate_files_total{job=~"$job", status!="ok"}'
        "[$__rate_interval])) / on (job) group_left max without (ip) (ray_node_gram_used offset 5m)"
        " * 1e3"
    )
    assert metric_names(expr) == {"auralflow_separate_files_total", "ray_node_gram_used"}
    assert metric_names("label_values(auralflow_train_epoch, session)") == {"auralflow_train_epoch"}


def test_dashboards_query_only_exported_or_ray_metrics() -> None:
    for name, dashboard in dashboards().items():
        unknown = used_metrics(dashboard) - observability.EXPORTED - RAY_METRICS
        assert not unknown, f"{name} queries metrics nothing exports: {sorted(unknown)}"


@pytest.mark.parametrize("metric", sorted(RAY_METRICS))
def test_ray_metric_is_defined_in_rays_source(metric: str) -> None:
    # ray.util.metrics and the reporter agent register `name`; Prometheus sees `ray_<name>`.
    name = metric.removeprefix("ray_")
    assert re.search(rf"Gauge\(\s*[\"']{name}[\"']", ray_sources()), f"Ray defines no {name}"


def test_every_exported_metric_is_on_a_dashboard() -> None:
    training = used_metrics(dashboards()["training.json"])
    separation = used_metrics(dashboards()["separation.json"])
    assert {
        m for m in observability.EXPORTED if m.startswith(("auralflow_train", "auralflow_val"))
    } <= training
    assert {m for m in observability.EXPORTED if m.startswith("auralflow_separate")} <= separation
    assert "ray_node_gpus_utilization" in training & separation
    assert training | separation >= RAY_METRICS


def test_status_values_are_the_ones_the_separation_job_records() -> None:
    from auralflow_dist.separate import results

    known = {results.OK, results.FAILED, results.SKIPPED}
    for dashboard in dashboards().values():
        for expr in expressions(dashboard):
            for value in re.findall(r'status\s*!?=~?\s*"([^"]*)"', expr):
                assert set(value.split("|")) <= known, expr


def test_dashboards_are_well_formed() -> None:
    for name, dashboard in dashboards().items():
        assert dashboard["uid"] and dashboard["title"], name
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            targets = panel["targets"]
            assert targets and len({t["refId"] for t in targets}) == len(targets), panel["title"]
            for target in targets:
                for var in re.findall(r"\$\{?(\w+)", target["expr"]):
                    assert var in variables | GRAFANA_BUILTINS, f"{name}: ${var} undefined"
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
            here = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                    for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
            assert not here & cells, f"{name}: {panel['title']} overlaps another panel"
            cells |= here


# ----------------------------------------------------------------------------------------------
# Prometheus config


def scrape_jobs() -> dict[str, dict]:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_ray_targets_come_from_rays_service_discovery_file() -> None:
    (sd,) = scrape_jobs()["ray"]["file_sd_configs"]
    assert sd["files"] == [
        os.path.join(get_default_ray_temp_dir(), PROMETHEUS_SERVICE_DISCOVERY_FILE)
    ]


def test_driver_and_pushgateway_keep_the_series_own_job_label() -> None:
    # The separation series label themselves with `job`; without honor_labels Prometheus would
    # rename it to exported_job and the dashboards' `job` filter would match the scrape job.
    assert "job" in observability.SEP_FILES._labelnames
    jobs = scrape_jobs()
    for name in ("auralflow", "pushgateway"):
        assert jobs[name]["honor_labels"] is True
        (static,) = jobs[name]["static_configs"]
        assert static["targets"]
