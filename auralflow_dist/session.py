"""The layout of a session folder and of a checkpoint directory, and the one reader/writer of each file.

A session folder is a URL (local or ``s3://``); it is created on demand and never deleted::

    <session>/
      model.json          the ModelConfig (`auralflow config` writes it, training reads it)
      trainer.json        the TrainerConfig of the last `auralflow train`
      best/               the best epoch's model: model.json + weights.pt
      checkpoints/<run>/  Ray Train's checkpoint directories (below), images, runs/, ...

A checkpoint directory holds the model (``model.json``, ``weights.pt``: a plain state dict) and,
when it continues training, ``optimizer.pt``, ``scheduler.pt``, ``grad_scaler.pt`` and
``state.json`` (epoch, global step, best score, history). Tensor files load with
``torch.load(weights_only=True)``: a checkpoint fetched from a bucket can carry tensors and
numbers, never code. Every file is written through `storage`, atomically.

Nothing here imports torch until a tensor is saved or loaded: the CLI builds its parser without it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from auralflow_dist import storage
from auralflow_dist.config import ModelConfig, TrainerConfig, from_json, to_json
from auralflow_dist.errors import AuralflowError, CheckpointError, StorageError

if TYPE_CHECKING:
    import torch
    from torch import nn

MODEL_JSON = "model.json"
TRAINER_JSON = "trainer.json"
WEIGHTS = "weights.pt"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
GRAD_SCALER = "grad_scaler.pt"
STATE_JSON = "state.json"
BEST = "best"


# ----------------------------------------------------------------------------------------------
# model.json and trainer.json


def write_model_config(directory: str, config: ModelConfig, overwrite: bool = False) -> str:
    """Write ``model.json``; an existing, different one is kept unless ``overwrite``."""
    return _write_new(storage.join(directory, MODEL_JSON), to_json(config), overwrite)


def write_configs(
    directory: str, model: ModelConfig, trainer: TrainerConfig, overwrite: bool = False
) -> list[str]:
    """Write ``model.json`` and ``trainer.json`` (a preset), both or, on a conflict, neither."""
    files = {MODEL_JSON: to_json(model), TRAINER_JSON: to_json(trainer)}
    for name, text in files.items():
        _check_new(storage.join(directory, name), text, overwrite)
    return [_write_new(storage.join(directory, n), t, overwrite) for n, t in files.items()]


def _check_new(url: str, text: str, overwrite: bool) -> None:
    if overwrite or not storage.exists(url) or storage.read_bytes(url).decode() == text:
        return
    raise AuralflowError(
        f"{url} already exists with another config; "
        "pass --overwrite to replace it (nothing else is touched)"
    )


def _write_new(url: str, text: str, overwrite: bool) -> str:
    _check_new(url, text, overwrite)
    storage.write_bytes(url, text.encode())
    return url


def read_model_config(directory: str) -> ModelConfig:
    """The ``ModelConfig`` of a session, checkpoint or model folder, or of a ``.json`` file."""
    url = directory if directory.endswith(".json") else storage.join(directory, MODEL_JSON)
    try:
        text = storage.read_bytes(url).decode()
    except StorageError:
        raise CheckpointError(
            f"{url} not found: not a model or session folder (create one with `auralflow config`)"
        ) from None
    return from_json(ModelConfig, text, source=url)


def write_trainer_config(directory: str, config: TrainerConfig) -> str:
    """Record a run's settings: ``train`` reads them back as its defaults next time."""
    url = storage.join(directory, TRAINER_JSON)
    storage.write_bytes(url, to_json(config).encode())
    return url


def read_trainer_config(directory: str) -> TrainerConfig | None:
    """The folder's ``trainer.json``, or None where it has none."""
    url = storage.join(directory, TRAINER_JSON)
    if not storage.exists(url):
        return None
    return from_json(TrainerConfig, storage.read_bytes(url).decode(), source=url)


# ----------------------------------------------------------------------------------------------
# Tensor files: weights.pt, optimizer.pt, scheduler.pt, grad_scaler.pt


def tensor_bytes(obj: Any) -> bytes:
    """Serialise tensors/numbers/containers for ``torch.load(weights_only=True)``."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_tensors(directory: str, name: str, obj: Any) -> None:
    """Write ``obj`` (tensors, numbers, containers of them) as ``directory/name``, atomically."""
    storage.write_bytes(storage.join(directory, name), tensor_bytes(obj))


def _checkpoint_bytes(url: str) -> bytes:
    """A checkpoint file's bytes; a missing one is a CheckpointError naming it."""
    try:
        return storage.read_bytes(url)
    except StorageError as err:
        raise CheckpointError(f"{url}: checkpoint file missing ({err})") from None


def load_tensors(directory: str, name: str, map_location: str | torch.device = "cpu") -> Any:
    """Load ``directory/name`` without unpickling arbitrary objects."""
    import torch

    url = storage.join(directory, name)
    data = _checkpoint_bytes(url)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(
            f"{url}: not a loadable tensor file ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]})"
        ) from None


# ----------------------------------------------------------------------------------------------
# The model: model.json + weights.pt


def save_network(directory: str, config: ModelConfig, network: nn.Module) -> None:
    """Write ``weights.pt`` and ``model.json``, each atomically; weights first, config last."""
    from auralflow_dist.models.registry import unwrap

    state = {k: v.detach().cpu() for k, v in unwrap(network).state_dict().items()}
    save_tensors(directory, WEIGHTS, state)
    storage.write_bytes(storage.join(directory, MODEL_JSON), to_json(config).encode())


def load_network(
    directory: str, device: str | torch.device = "cpu"
) -> tuple[ModelConfig, nn.Module]:
    """Rebuild the network from ``model.json`` and load ``weights.pt`` into it, strictly."""
    from auralflow_dist.models.registry import build_network

    config = read_model_config(directory)
    network = build_network(config)
    state = load_tensors(directory, WEIGHTS, map_location="cpu")
    if not isinstance(state, dict):
        raise CheckpointError(f"{directory}: weights.pt does not hold a state dict")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{directory}: weights do not match model.json ({str(err).splitlines()[0][:300]})"
        ) from None
    return config, network.to(device).eval()


def resolve_model_dir(url: str) -> str:
    """A session folder's exported ``best/`` model if it has one, else ``url`` itself."""
    best = storage.join(url, BEST)
    if storage.exists(storage.join(best, WEIGHTS)):
        return best
    return url


def _is_model(url: str) -> bool:
    """Whether ``url`` holds a trained model (a session: in its ``best/``)."""
    return storage.exists(storage.join(resolve_model_dir(url), WEIGHTS))


def bundle_dirs(url: str) -> list[str]:
    """The model folders of a separator bundle, one per target.

    ``url`` is a model or session folder (a bundle of one), a folder of them (one per target,
    as ``train --targets`` leaves), or several of them separated by commas.
    """
    if _is_model(url):
        return [resolve_model_dir(url)]
    parts = [part.strip() for part in url.split(",") if part.strip()]
    if len(parts) > 1:
        for part in parts:
            if not _is_model(part):
                raise CheckpointError(f"{part}: no trained model ({WEIGHTS}) here or in best/")
        return [resolve_model_dir(part) for part in parts]
    if not storage.exists(url):
        raise CheckpointError(f"{url}: not found")
    folders = [d for d in storage.listdir(url) if storage.is_dir(d)] if storage.is_dir(url) else []
    members = [d for d in folders if _is_model(d)]
    if not members:
        raise CheckpointError(
            f"{url}: no trained model ({WEIGHTS}) here, in best/ or in its subfolders (give a "
            "session, a model folder, or a folder of one per target)"
        )
    return [resolve_model_dir(d) for d in members]


# ----------------------------------------------------------------------------------------------
# state.json: where the training loop stands


def write_state(directory: str, state: Mapping[str, Any]) -> None:
    """Write ``state.json`` (plain JSON; inf and NaN scores as JavaScript's literals), atomically."""
    storage.write_bytes(storage.join(directory, STATE_JSON), json.dumps(dict(state)).encode())


def read_state(directory: str) -> dict[str, Any]:
    url = storage.join(directory, STATE_JSON)
    data = _checkpoint_bytes(url)
    try:
        state = json.loads(data)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError both are
        raise CheckpointError(f"{url}: not a JSON state file ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{url}: not a JSON object")
    return state


# ----------------------------------------------------------------------------------------------
# Fetching a model from anywhere


def sha256_of(url: str) -> str:
    digest = hashlib.sha256()
    with storage.open_file(url, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str, sha256: str | None = None) -> str:
    """Copy a model directory from any fsspec URL to ``dest``, checking the weights' SHA-256.

    The weights are verified before anything is written, so a corrupt or tampered download never
    lands under ``dest``.
    """
    weights = storage.read_bytes(storage.join(url, WEIGHTS))
    if sha256 is not None:
        actual = hashlib.sha256(weights).hexdigest()
        if actual != sha256.lower():
            raise CheckpointError(f"{url}: SHA-256 mismatch (expected {sha256}, got {actual})")
    config = read_model_config(url)
    storage.write_bytes(storage.join(dest, WEIGHTS), weights)
    storage.write_bytes(storage.join(dest, MODEL_JSON), to_json(config).encode())
    return dest
