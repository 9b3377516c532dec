"""Models by name: an index the test writes over checkpoints it makes, locally and on S3.

Each entry's every file is checked against its SHA-256 before anything lands in the cache, a
tampered model.json included; a broken index is an error naming what is wrong.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

import auralflow.models
from auralflow_dist import models, storage
from auralflow_dist.cli import main
from auralflow_dist.config import ModelConfig
from auralflow_dist.errors import CheckpointError, ConfigError
from auralflow_dist.models import index
from auralflow_dist.models.registry import build_network
from auralflow_dist.session import bundle_dirs, read_model_config, save_network

SMALL = ModelConfig(
    sample_rate=8000, num_fft=256, window_size=256, hop_length=128, sample_length=0.5,
    hidden_channels=4,
)  # fmt: skip


def _bundle(root: str, targets: tuple[str, ...] = ("bass", "vocals")) -> str:
    for seed, target in enumerate(targets):
        torch.manual_seed(seed)
        config = ModelConfig(**{**SMALL.__dict__, "target": target}).validate()
        save_network(storage.join(root, target), config, build_network(config))
    return root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(index.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_an_indexed_bundle_on_s3_is_fetched_verified_cached_and_loaded(
    storage_root: str, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _bundle(storage.join(storage_root, "bundle"))
    index_url = storage.join(storage_root, "index.json")
    entry = index.add_to_index(index_url, "duo", bundle)
    assert entry["targets"] == ["bass", "vocals"] and entry["model_type"] == "SpectrogramNetSimple"
    assert sorted(entry["files"]) == [
        "bass/model.json", "bass/weights.pt", "vocals/model.json", "vocals/weights.pt",
    ]  # fmt: skip
    monkeypatch.setenv(index.INDEX_ENV, index_url)

    local = index.resolve("duo")
    assert local.startswith(str(cache))
    assert [read_model_config(d).target for d in bundle_dirs(local)] == ["bass", "vocals"]
    assert index.resolve("duo") == local  # cached: fetched once
    # The seeds' call, as its README writes it: the network type and a target.
    separator = auralflow.models.load(model="SpectrogramNetSimple", target="vocals")
    assert separator.config.target == "vocals"
    expected = torch.load(
        io.BytesIO(storage.read_bytes(storage.join(bundle, "vocals", "weights.pt"))),
        weights_only=True,
    )
    for name, tensor in separator.network.state_dict().items():
        assert torch.equal(tensor.cpu(), expected[name]), name
    # A path that exists is never looked up; an unknown name lists what the index has.
    assert index.resolve(bundle) == bundle
    with pytest.raises(CheckpointError, match=r"neither a path nor a model .* \(it has: duo\)"):
        index.resolve("trio")


def test_every_file_is_verified_before_anything_is_cached(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _bundle(str(tmp_path / "bundle"), ("vocals",))
    index_url = str(tmp_path / "index.json")
    index.add_to_index(index_url, "v", bundle)
    config_file = Path(bundle) / "vocals" / "model.json"
    config_file.write_text(config_file.read_text().replace('"dropout_p": 0.4', '"dropout_p": 0.3'))
    with pytest.raises(CheckpointError, match=r"model.json has SHA-256 \w+, the index says"):
        index.fetch(index.read_index(index_url)["v"])
    assert not cache.exists()


@pytest.mark.parametrize(
    ("models_json", "message"),
    [
        ({"m": {"files": {"weights.pt": "0" * 64}}}, "needs a 'url'"),
        ({"m": {"url": "x", "files": {}}}, "needs 'files'"),
        ({"m": {"url": "x", "files": {"../weights.pt": "0" * 64}}}, "must stay under url"),
        ({"m": {"url": "x", "files": {"weights.pt": "abc"}}}, "64-digit hex"),
        ({"m": {"url": "x", "files": {"model.json": "0" * 64}}}, "lists no weights.pt"),
    ],
)
def test_a_broken_index_names_what_is_wrong(tmp_path: Path, models_json, message) -> None:
    url = tmp_path / "index.json"
    url.write_text(json.dumps({"models": models_json}))
    with pytest.raises(ConfigError, match=message):
        index.read_index(str(url))


def test_download_by_name_and_by_url(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(index.INDEX_ENV, raising=False)
    bundle = _bundle(str(tmp_path / "bundle"), ("vocals",))
    index_url = str(tmp_path / "index.json")
    assert main(["index", bundle, "--name=v", f"--save={index_url}"]) == 0
    dest = tmp_path / "mine"
    assert main(["download", "v", f"--save={dest}", f"--model-index={index_url}"]) == 0
    assert read_model_config(str(dest / "vocals")).target == "vocals"
    assert main(["download", "nope", f"--save={dest}", f"--model-index={index_url}"]) == 2
    assert "neither a path nor a model" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no model index"):
        models.load(model="SpectrogramNetSimple", target="vocals")
