"""Model name -> network class, and checkpoints as directories any fsspec URL can hold.

A checkpoint directory holds ``model.json`` (the ``ModelConfig``) and ``weights.pt`` (a plain
state dict of tensors). Loading uses ``torch.load(weights_only=True)``: a checkpoint fetched from a
bucket can carry tensors and numbers, never code.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import torch
from torch import nn

from auralflow_dist import storage
from auralflow_dist.config import ModelConfig, from_json, to_json
from auralflow_dist.errors import CheckpointError, StorageError
from auralflow_dist.models.blstm import MaskInference
from auralflow_dist.models.unet import SpectrogramNetLSTM, SpectrogramNetSimple, SpectrogramNetVAE

NETWORKS: dict[str, type[nn.Module]] = {
    "SpectrogramNetSimple": SpectrogramNetSimple,
    "SpectrogramNetLSTM": SpectrogramNetLSTM,
    "SpectrogramNetVAE": SpectrogramNetVAE,
    "MaskInference": MaskInference,
}
CONFIG_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"


def build_network(config: ModelConfig) -> nn.Module:
    """The network a config describes, with freshly initialised weights."""
    common: dict[str, Any] = {
        "num_fft_bins": config.num_fft_bins,
        "num_frames": config.num_frames,
        "num_channels": config.num_channels,
        "mask_act_fn": config.mask_act_fn,
        "leak_factor": config.leak_factor,
        "dropout_p": config.dropout_p,
    }
    if config.model_type == "MaskInference":
        return MaskInference(
            **common, hidden_size=config.hidden_size, num_layers=config.recurrent_depth
        )
    common.update(
        hidden_channels=config.hidden_channels,
        normalize_input=config.normalize_input,
        normalize_output=config.normalize_output,
    )
    if config.model_type == "SpectrogramNetSimple":
        return SpectrogramNetSimple(**common)
    return NETWORKS[config.model_type](
        **common,
        recurrent_depth=config.recurrent_depth,
        hidden_size=config.hidden_size,
        input_axis=config.input_axis,
    )


def tensor_bytes(obj: Any) -> bytes:
    """Serialise tensors/numbers/containers for ``torch.load(weights_only=True)``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_tensors(url: str, map_location: str | torch.device = "cpu") -> Any:
    """Load a tensor file without unpickling arbitrary objects."""
    try:
        data = storage.read_bytes(url)
    except StorageError as err:
        raise CheckpointError(f"{url}: checkpoint file missing ({err})") from None
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(
            f"{url}: not a loadable tensor file ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]})"
        ) from None


def save_checkpoint(directory: str, config: ModelConfig, network: nn.Module) -> None:
    """Write ``model.json`` and ``weights.pt``, each atomically; weights first, config last."""
    state = {k: v.detach().cpu() for k, v in unwrap(network).state_dict().items()}
    storage.write_bytes(storage.join(directory, WEIGHTS_FILE), tensor_bytes(state))
    storage.write_bytes(storage.join(directory, CONFIG_FILE), to_json(config).encode())


def load_config(directory: str) -> ModelConfig:
    url = storage.join(directory, CONFIG_FILE)
    try:
        text = storage.read_bytes(url).decode()
    except StorageError:
        raise CheckpointError(f"{url}: no model.json (not a model or session folder)") from None
    return from_json(ModelConfig, text, source=url)


def load_network(
    directory: str, device: str | torch.device = "cpu"
) -> tuple[ModelConfig, nn.Module]:
    """Rebuild the network from ``model.json`` and load ``weights.pt`` into it, strictly."""
    config = load_config(directory)
    network = build_network(config)
    state = load_tensors(storage.join(directory, WEIGHTS_FILE), map_location="cpu")
    if not isinstance(state, dict):
        raise CheckpointError(f"{directory}: weights.pt does not hold a state dict")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{directory}: weights do not match model.json ({str(err).splitlines()[0][:300]})"
        ) from None
    return config, network.to(device).eval()


def unwrap(network: nn.Module) -> nn.Module:
    """The bare network inside a DDP/compiled wrapper."""
    while hasattr(network, "module") and isinstance(network.module, nn.Module):
        network = network.module
    return network


def sha256_of(url: str) -> str:
    digest = hashlib.sha256()
    with storage.open_file(url, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str, sha256: str | None = None) -> str:
    """Copy a checkpoint directory from any fsspec URL to ``dest``, checking the weights' SHA-256.

    The weights are verified before anything is written, so a corrupt or tampered download never
    lands under ``dest``.
    """
    weights = storage.read_bytes(storage.join(url, WEIGHTS_FILE))
    if sha256 is not None:
        actual = hashlib.sha256(weights).hexdigest()
        if actual != sha256.lower():
            raise CheckpointError(f"{url}: SHA-256 mismatch (expected {sha256}, got {actual})")
    config = load_config(url)
    storage.write_bytes(storage.join(dest, WEIGHTS_FILE), weights)
    storage.write_bytes(storage.join(dest, CONFIG_FILE), to_json(config).encode())
    return dest
