"""The cluster definitions in cluster/: launcher YAMLs against Ray's own schema and config
preparation, KubeRay manifests against the fields KubeRay needs, and RayJob entrypoints against
the job scripts they name. None of them may carry a credential."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from auralflow_dist.runtime import IDLE_WORKER_KEEP_MS as IDLE_KEEP

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
IMAGE = "registry.example.com/auralflow/auralflow-dist:0.1.0"
LAUNCHER = ["aws.yaml", "gcp.yaml", "local.yaml"]
JOBS = {"train": "jobs/train.py", "tune": "jobs/tune.py", "separate": "jobs/separate.py"}

# Credentials that must never appear in a committed file.
SECRET_PATTERNS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{30,}"),
    re.compile(r"\"private_key\"\s*:"),  # a GCP service-account key file
]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def manifests() -> list[tuple[str, dict]]:
    """Every document of every KubeRay manifest, with the file it came from."""
    return [
        (p.name, doc)
        for p in sorted(KUBERAY.glob("*.yaml"))
        for doc in yaml.safe_load_all(p.read_text())
        if doc
    ]


def of_kind(kind: str) -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in manifests() if doc["kind"] == kind]


def raycluster() -> dict:
    (found,) = of_kind("RayCluster")
    return found[1]


def pod_specs() -> list[dict]:
    """Every pod template's spec: the head's, each worker group's, each RayJob submitter's."""
    spec = raycluster()["spec"]
    specs = [spec["headGroupSpec"]["template"]["spec"]]
    specs += [group["template"]["spec"] for group in spec["workerGroupSpecs"]]
    specs += [job["spec"]["submitterPodTemplate"]["spec"] for _, job in of_kind("RayJob")]
    return specs


# ----------------------------------------------------------------------------------------------
# Ray cluster launcher


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_rays_schema_and_preparation(name: str, ray_schema: dict) -> None:
    config = load(CLUSTER / name)
    jsonschema.validate(config, ray_schema)
    # What `ray up` does before it contacts any cloud: fill the provider's defaults, check again.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_schema_is_strict_enough_to_catch_a_typo(ray_schema: dict) -> None:
    config = load(CLUSTER / "aws.yaml")
    config["docker"]["shm_size"] = "8g"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema)


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_runs_the_project_image_with_shared_memory(name: str) -> None:
    config = load(CLUSTER / name)
    docker = config["docker"]
    assert docker["image"] == IMAGE
    assert docker["container_name"]
    node_types = config.get("available_node_types") or {"local": {}}
    for node_type, spec in node_types.items():
        options = list(docker.get("run_options", []))
        if node_type == config.get("head_node_type"):
            options += docker.get("head_run_options", [])
        else:
            options += spec.get("docker", {}).get("worker_run_options", [])
        assert any(o.startswith("--shm-size") for o in options), (
            f"{name}: {node_type} has no --shm-size"
        )


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_launchers_have_a_cpu_head_and_one_and_eight_gpu_worker_groups(name: str) -> None:
    config = load(CLUSTER / name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpus = sorted(
        spec["resources"]["GPU"] for t, spec in types.items() if t != config["head_node_type"]
    )
    assert gpus == [1, 8]
    for t, spec in types.items():
        if t != config["head_node_type"]:
            assert spec["min_workers"] == 0 and spec["max_workers"] >= 1, t


def test_local_launcher_names_placeholders_not_real_hosts() -> None:
    provider = load(CLUSTER / "local.yaml")["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"] == "HEAD_IP"
    assert provider["worker_ips"] and all(
        ip.startswith("WORKER_IP") for ip in provider["worker_ips"]
    )


# ----------------------------------------------------------------------------------------------
# KubeRay


def test_manifests_have_api_version_kind_and_name() -> None:
    docs = manifests()
    assert {doc["kind"] for _, doc in docs} >= {"RayCluster", "RayJob", "ServiceAccount"}
    for name, doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"], name
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert doc["apiVersion"] == "ray.io/v1", name


def test_raycluster_has_a_cpu_head_and_autoscaling_gpu_groups() -> None:
    spec = raycluster()["spec"]
    head = spec["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # KubeRay wants strings
    (head_container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    gpus = []
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"], group["groupName"]
        assert limits["cpu"] and limits["memory"], group["groupName"]
        gpus.append(int(limits["nvidia.com/gpu"]))
    assert sorted(gpus) == [1, 8]
    assert spec["enableInTreeAutoscaling"] is True


def test_ray_pods_run_the_image_with_shm_in_memory_and_the_service_account() -> None:
    spec = raycluster()["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec["workerGroupSpecs"]
    ]
    for template in templates:
        pod = template["spec"]
        assert pod["serviceAccountName"] == "auralflow-ray"
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            assert container["image"] == IMAGE
            (shm,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
            assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
    for _, job in of_kind("RayJob"):
        for container in job["spec"]["submitterPodTemplate"]["spec"]["containers"]:
            assert container["image"] == IMAGE


def test_service_account_carries_a_cloud_identity_annotation() -> None:
    ((_, account),) = of_kind("ServiceAccount")
    annotations = account["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert annotations["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_runs_workers_at_the_control_planes_priority_and_keeps_idle_ones(
    name: str,
) -> None:
    options = load(CLUSTER / name)["docker"]["run_options"]
    assert "--env RAY_worker_niceness=0" in options
    assert f"--env RAY_idle_worker_killing_time_threshold_ms={IDLE_KEEP}" in options


def test_raycluster_runs_workers_at_the_control_planes_priority_and_keeps_idle_ones() -> None:
    settings = next(
        d
        for d in yaml.safe_load_all((KUBERAY / "raycluster.yaml").read_text())
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "auralflow-settings"
    )
    assert settings["data"]["RAY_worker_niceness"] == "0"
    assert settings["data"]["RAY_idle_worker_killing_time_threshold_ms"] == str(IDLE_KEEP)


def test_no_secret_values_inline() -> None:
    assert not of_kind("Secret"), "secrets are created with kubectl, never committed"
    secret_like = re.compile(r"SECRET|TOKEN|PASSWORD|CREDENTIAL|_KEY", re.I)
    env_vars = [e for pod in pod_specs() for c in pod["containers"] for e in c.get("env", [])]
    env_vars += raycluster()["spec"]["autoscalerOptions"].get("env", [])
    assert env_vars
    for var in env_vars:
        if secret_like.search(var["name"]):
            assert "value" not in var, f"{var['name']} is set inline"
            assert "secretKeyRef" in var["valueFrom"], var["name"]
    for pod in pod_specs():
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert set(source) <= {"secretRef", "configMapRef", "prefix"}
    for name, doc in of_kind("ConfigMap"):
        assert not any(secret_like.search(k) for k in doc["data"]), name


def test_every_ray_process_shares_the_auth_mode() -> None:
    modes = set()
    for pod in pod_specs():
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            modes.add(env["RAY_AUTH_MODE"]["value"])
            assert "RAY_AUTH_TOKEN" in env
    assert modes == {"token"}


def test_podmonitor_scrapes_ports_the_pods_open() -> None:
    ((_, monitor),) = of_kind("PodMonitor")
    spec = raycluster()["spec"]
    head_ports = {
        p["name"] for p in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert (
        monitor["spec"]["selector"]["matchLabels"]["ray.io/cluster"]
        == raycluster()["metadata"]["name"]
    )
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in head_ports


# ----------------------------------------------------------------------------------------------
# RayJob entrypoints: the scripts and flags must exist.


def rayjob(job: str) -> dict:
    (found,) = [
        doc for _, doc in of_kind("RayJob") if doc["metadata"]["name"] == f"auralflow-{job}"
    ]
    return found


@cache
def help_text(script: str) -> str:
    """``--help`` of a job script: its flags where they are generated rather than spelled out."""
    done = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    return done.stdout


def flag_present(flag: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


@pytest.mark.parametrize("job", sorted(JOBS))
def test_rayjob_entrypoint_names_a_real_script_and_real_flags(job: str) -> None:
    spec = rayjob(job)["spec"]
    assert spec["clusterSelector"]["ray.io/cluster"] == raycluster()["metadata"]["name"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", JOBS[job]]
    script = REPO / argv[1]
    assert script.is_file(), f"RayJob auralflow-{job} runs {argv[1]}, which does not exist"
    flags = [a.split("=")[0] for a in argv[2:] if a.startswith("--")]
    assert flags
    source = script.read_text()
    missing = [f for f in flags if not flag_present(f, source)]
    missing = [f for f in missing if not flag_present(f, help_text(argv[1]))]
    assert not missing, f"{argv[1]} knows no {', '.join(missing)}"


def test_flag_check_tells_a_flag_from_its_longer_cousins() -> None:
    assert not flag_present("--workers", "parser.add_argument('--workers-per-trial')")
    assert flag_present("--workers", "parser.add_argument('--workers', type=str)")


# ----------------------------------------------------------------------------------------------
# Nothing secret anywhere in cluster/ or infra/.


def test_no_credentials_in_cluster_or_infra_files() -> None:
    files = [p for d in ("cluster", "infra") for p in (REPO / d).rglob("*") if p.is_file()]
    assert len(files) >= 10
    for path in files:
        text = path.read_text(errors="replace")
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{path.relative_to(REPO)} matches {pattern.pattern}"


# One CPU for the training worker's loop and at least two decoding: an H100's ~160 samples/s
# against 130-180 augmented chunks per decode CPU-second (docs/benchmarks.md, "CPUs per GPU").
MIN_CPUS_PER_GPU = 4


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_gpu_nodes_have_the_cpus_their_gpus_need(name: str) -> None:
    nodes = load(CLUSTER / name)["available_node_types"].values()
    gpu_nodes = [n["resources"] for n in nodes if n["resources"].get("GPU")]
    assert gpu_nodes
    for resources in gpu_nodes:
        assert resources["CPU"] / resources["GPU"] >= MIN_CPUS_PER_GPU, resources


def test_raycluster_gpu_pods_have_the_cpus_their_gpus_need() -> None:
    groups = raycluster()["spec"]["workerGroupSpecs"]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        requests = container["resources"]["requests"]
        gpus = int(requests["nvidia.com/gpu"])
        assert int(requests["cpu"]) / gpus >= MIN_CPUS_PER_GPU, group["groupName"]
