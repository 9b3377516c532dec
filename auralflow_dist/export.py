"""``auralflow export``: trained networks as TorchScript or ONNX, to run without this package.

What is exported is the mask network: magnitude ``(batch, channels, bins, frames)`` in, mask of
the same shape out, any batch and any number of frames. The STFT that makes the magnitude and
the inverse that turns the masked spectrogram back into audio stay with the caller: their
settings, the target and the network's shapes travel in ``export.json`` beside it. Both
formats come from tracing (torch.jit.trace; ONNX through the TorchScript exporter, whose
dynamic axes hold for these networks: the dynamo exporter bakes the padded frame count in),
so each export is run at two frame counts, one a multiple of the networks' padding and one
not, and must match the PyTorch network within `TOLERANCE`.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from auralflow_dist import storage
from auralflow_dist.config import ModelConfig
from auralflow_dist.errors import AuralflowError, ConfigError
from auralflow_dist.models.unet import PAD_MULTIPLE
from auralflow_dist.session import bundle_dirs, load_network

FORMATS = {"torchscript": "network.pt", "onnx": "network.onnx"}
TOLERANCE = 1e-4
EXPORT_JSON = "export.json"


def export(model_url: str, fmt: str, save: str) -> list[str]:
    """Export every model of ``model_url`` (a model, session or bundle) into ``save`` (a
    bundle: ``save/<target>/``); returns the folders written."""
    if fmt not in FORMATS:
        raise ConfigError("format", f"must be one of {', '.join(FORMATS)}, not {fmt!r}")
    dirs = bundle_dirs(model_url)
    written = []
    for model_dir in dirs:
        config, network = load_network(model_dir, "cpu")
        dest = save if len(dirs) == 1 else storage.join(save, config.target)
        data = _torchscript(network, config) if fmt == "torchscript" else _onnx(network, config)
        storage.write_bytes(storage.join(dest, FORMATS[fmt]), data)
        storage.write_bytes(storage.join(dest, EXPORT_JSON), _description(config, fmt).encode())
        written.append(dest)
    return written


def _example(config: ModelConfig, frames: int, batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(frames)
    shape = (batch, config.num_channels, config.num_fft_bins, frames)
    return torch.rand(shape, generator=generator)


def _check_frames(config: ModelConfig) -> tuple[int, int]:
    """Two frame counts: about the model's own chunk and padded (traced at, so the padding is
    in the graph), and a multiple of the padding."""
    frames = config.num_frames
    return (frames if frames % PAD_MULTIPLE else frames + 1), 2 * PAD_MULTIPLE


def _torchscript(network: nn.Module, config: ModelConfig) -> bytes:
    traced_at, other = _check_frames(config)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the shape checks, frozen
        traced = torch.jit.trace(network, _example(config, traced_at), check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    loaded = torch.jit.load(io.BytesIO(buf.getvalue()))
    for frames, batch in ((traced_at, 1), (other, 2)):
        x = _example(config, frames, batch)
        with torch.no_grad():
            _verify(config, frames, loaded(x).numpy(), network(x).numpy())
    return buf.getvalue()


def _onnx(network: nn.Module, config: ModelConfig) -> bytes:
    try:
        import onnxruntime
    except ImportError:
        raise AuralflowError(
            "ONNX export is verified with onnxruntime: pip install 'auralflow-dist[export]'"
        ) from None
    traced_at, other = _check_frames(config)
    axes = {0: "batch", 3: "frames"}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation, tracer notes
        torch.onnx.export(
            network,
            (_example(config, traced_at),),
            buf,
            dynamo=False,
            input_names=["magnitude"],
            output_names=["mask"],
            dynamic_axes={"magnitude": axes, "mask": axes},
        )
    session = onnxruntime.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for frames, batch in ((traced_at, 1), (other, 2)):
        x = _example(config, frames, batch)
        with torch.no_grad():
            mask = session.run(None, {"magnitude": x.numpy()})[0]
            _verify(config, frames, mask, network(x).numpy())
    return buf.getvalue()


def _verify(config: ModelConfig, frames: int, exported: np.ndarray, reference: np.ndarray) -> None:
    error = float(np.abs(exported - reference).max()) if exported.shape == reference.shape else 1.0
    if exported.shape != reference.shape or error > TOLERANCE:
        raise AuralflowError(
            f"the exported {config.model_type} differs from the network at {frames} frames "
            f"(max error {error:.2e}, shape {exported.shape} vs {reference.shape}): not written"
        )


def _description(config: ModelConfig, fmt: str) -> str:
    return json.dumps(
        {
            "format": fmt,
            "file": FORMATS[fmt],
            "target": config.target,
            "model_type": config.model_type,
            "input": "magnitude (batch, channels, bins, frames) of the mixture's STFT",
            "output": "mask of the same shape; target = istft(mask * mixture STFT)",
            "channels": config.num_channels,
            "bins": config.num_fft_bins,
            "stft": {
                "sample_rate": config.sample_rate,
                "n_fft": config.num_fft,
                "win_length": config.window_size,
                "hop_length": config.hop_length,
                "window": "hann, periodic",
                "center": True,
            },
            "tolerance": TOLERANCE,
            "model": asdict(config),
        },
        indent=2,
    )
