"""The container image recipe and the IAM policy in infra/: the image must match the package's
own pins, and the policy must grant what the storage layer uses and nothing more."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "infra" / "Dockerfile"
POLICY = REPO / "infra" / "iam" / "dataset-read-output-write.json"
BASE = re.compile(r"^FROM rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d)(?P<minor>\d+)-gpu$", re.M)


def instructions(name: str) -> list[list[str]]:
    return [
        line.split()[1:]
        for line in DOCKERFILE.read_text().splitlines()
        if line.split()[:1] == [name]
    ]


def test_image_base_is_the_ray_gpu_image_the_package_pins() -> None:
    match = BASE.search(DOCKERFILE.read_text())
    assert match, "infra/Dockerfile must build FROM rayproject/ray:<version>-py3XX-gpu"
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (ray_pin,) = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "ray"]
    assert match["ray"] in ray_pin.specifier, f"image Ray {match['ray']} vs pin {ray_pin}"
    python = f"{match['py']}.{match['minor']}"
    assert python in SpecifierSet(project["requires-python"])
    assert match["ray"] == "2.60.0" and python == "3.11"


def test_image_copies_existing_sources_that_the_build_context_keeps() -> None:
    ignore = [
        line.strip()
        for line in (REPO / "infra" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    kept = {p[1:] for p in ignore if p.startswith("!")}
    assert ignore[0] == "*", "the context is an allow-list"
    copied = [
        src
        for args in instructions("COPY")
        for src in [a for a in args if not a.startswith("--")][:-1]
    ]
    assert {"pyproject.toml", "auralflow_dist", "jobs"} <= set(copied)
    for src in copied:
        assert (REPO / src).exists(), f"infra/Dockerfile copies {src}, which does not exist"
        assert any(fnmatch.fnmatch(src, k) for k in kept), f"{src} is excluded by the dockerignore"
    assert any("pip install" in " ".join(args) and "." in args for args in instructions("RUN"))


# ----------------------------------------------------------------------------------------------
# IAM: read the dataset bucket, read and write the output bucket.

DATASET = "arn:aws:s3:::DATASET_BUCKET"
OUTPUT = "arn:aws:s3:::OUTPUT_BUCKET"
# Why each action: ListBucket for listings and HeadBucket (storage.check_readable); GetObject
# for reads (and HeadObject); PutObject for uploads including multipart parts;
# AbortMultipartUpload for failed multipart uploads; DeleteObject for Ray Train's
# CheckpointConfig(num_to_keep) rotation and storage.remove.
EXPECTED = {
    DATASET: {"s3:ListBucket"},
    f"{DATASET}/*": {"s3:GetObject"},
    OUTPUT: {"s3:ListBucket"},
    f"{OUTPUT}/*": {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"},
}


def grants() -> dict[str, set[str]]:
    policy = json.loads(POLICY.read_text())
    assert policy["Version"] == "2012-10-17"
    out: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert not {"NotAction", "NotResource", "Principal"} & set(statement)
        actions = statement["Action"]
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            out.setdefault(resource, set()).update(
                [actions] if isinstance(actions, str) else actions
            )
    return out


def test_policy_grants_exactly_the_needed_actions() -> None:
    assert grants() == EXPECTED


def test_policy_has_no_wildcard_actions_or_resources() -> None:
    for resource, actions in grants().items():
        assert all("*" not in a for a in actions), actions
        assert resource != "*" and "*" not in resource.removesuffix("/*"), resource
