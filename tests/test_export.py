"""``auralflow export``: TorchScript and ONNX networks that run without this package.

The exported files are loaded in a fresh interpreter that never imports auralflow_dist (the
TorchScript one with torch.jit, the ONNX one with onnxruntime alone) and must give the
network's masks within 1e-4 at two lengths; a bundle exports one folder per target.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from auralflow_dist.cli import main
from auralflow_dist.config import ModelConfig
from auralflow_dist.models.registry import build_network
from auralflow_dist.session import load_network, save_network

RUNNER = """
import json, sys
import numpy as np
fmt, folder, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
meta = json.load(open(f"{folder}/export.json"))
x = np.random.default_rng(frames).random((2, meta["channels"], meta["bins"], frames), np.float32)
np.save(f"{folder}/in_{frames}.npy", x)
if fmt == "torchscript":
    import torch
    out = torch.jit.load(f"{folder}/{meta['file']}")(torch.from_numpy(x)).detach().numpy()
else:
    import onnxruntime
    session = onnxruntime.InferenceSession(f"{folder}/{meta['file']}")
    out = session.run(None, {"magnitude": x})[0]
np.save(f"{folder}/out_{frames}.npy", out)
assert "auralflow_dist" not in sys.modules
"""


@pytest.mark.parametrize("model_type", ["SpectrogramNetSimple", "SpectrogramNetVAE"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_exported_network_runs_without_the_package_and_matches(
    tmp_path: Path, fmt: str, model_type: str
) -> None:
    config = ModelConfig(
        model_type=model_type, sample_rate=8000, num_fft=256, window_size=256, hop_length=128,
        sample_length=0.5, hidden_channels=4, num_channels=2,
    ).validate()  # fmt: skip
    torch.manual_seed(0)
    save_network(str(tmp_path / "model"), config, build_network(config))
    out = tmp_path / "exported"
    assert main(["export", str(tmp_path / "model"), f"--format={fmt}", f"--save={out}"]) == 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["target"] == "vocals" and meta["stft"]["n_fft"] == 256
    _, network = load_network(str(tmp_path / "model"))
    for frames in (45, 300):  # dynamic length: neither is the traced one
        subprocess.run(
            [sys.executable, "-c", RUNNER, fmt, str(out), str(frames)], check=True, cwd=tmp_path
        )
        x = torch.from_numpy(np.load(out / f"in_{frames}.npy"))
        with torch.no_grad():
            expected = network(x).numpy()
        np.testing.assert_allclose(np.load(out / f"out_{frames}.npy"), expected, atol=1e-4)


def test_a_bundle_exports_a_folder_per_target(tmp_path: Path) -> None:
    config = ModelConfig(
        sample_rate=8000, num_fft=256, window_size=256, hop_length=128, sample_length=0.5,
        hidden_channels=4,
    ).validate()  # fmt: skip
    for target in ("bass", "vocals"):
        member = ModelConfig(**{**config.__dict__, "target": target}).validate()
        save_network(str(tmp_path / "bundle" / target), member, build_network(member))
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "bundle"), "--format=torchscript", f"--save={out}"]) == 0
    for target in ("bass", "vocals"):
        assert json.loads((out / target / "export.json").read_text())["target"] == target
        assert (out / target / "network.pt").is_file()
