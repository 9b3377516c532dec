"""The session folder: ``model.json``, ``trainer.json``, checkpoints, ``runs/``, images.

A session folder is a URL (local or ``s3://``); it is created on demand and never deleted.
"""

from __future__ import annotations

from auralflow_dist import storage
from auralflow_dist.config import ModelConfig, TrainerConfig, from_json, to_json
from auralflow_dist.errors import AuralflowError, StorageError

MODEL_JSON = "model.json"
TRAINER_JSON = "trainer.json"


def write_model_config(session: str, config: ModelConfig, overwrite: bool = False) -> str:
    """Write ``model.json``; an existing, different one is kept unless ``overwrite``."""
    url = storage.join(session, MODEL_JSON)
    text = to_json(config)
    if storage.exists(url) and not overwrite:
        if storage.read_bytes(url).decode() == text:
            return url
        raise AuralflowError(
            f"{url} already exists with another config; "
            "pass --overwrite to replace it (nothing else is touched)"
        )
    storage.write_bytes(url, text.encode())
    return url


def read_model_config(session: str) -> ModelConfig:
    url = storage.join(session, MODEL_JSON)
    try:
        text = storage.read_bytes(url).decode()
    except StorageError:
        raise AuralflowError(f"{url} not found: create it with `auralflow config`") from None
    return from_json(ModelConfig, text, source=url)


def write_trainer_config(session: str, config: TrainerConfig) -> str:
    url = storage.join(session, TRAINER_JSON)
    storage.write_bytes(url, to_json(config).encode())
    return url


def read_trainer_config(session: str) -> TrainerConfig | None:
    url = storage.join(session, TRAINER_JSON)
    if not storage.exists(url):
        return None
    return from_json(TrainerConfig, storage.read_bytes(url).decode(), source=url)
