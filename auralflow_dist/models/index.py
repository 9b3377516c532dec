"""Models by name: an index file maps a name to a model (or bundle) URL and its files' SHA-256.

The index is JSON at any fsspec URL, named by ``--model-index`` or ``AURALFLOW_MODEL_INDEX``::

    {"models": {
        "vocals-simple": {"url": "s3://models/vocals", "targets": ["vocals"],
                          "files": {"model.json": "<sha256>", "weights.pt": "<sha256>"}},
        "4stems": {"url": "s3://models/bundle", "targets": ["bass", "drums", "other", "vocals"],
                   "files": {"bass/model.json": "<sha256>", "bass/weights.pt": "<sha256>", ...}}}}

`fetch` copies every listed file into a cache folder (``AURALFLOW_CACHE``, else
``~/.cache/auralflow/models``; a bucket prefix works too, which is what a multi-node job wants),
checking each checksum before anything lands, so the cached folder is a model or bundle folder
that ``separate``, ``test`` and ``train --init-from`` take like any other. Files not listed are
never fetched: an index that names no checksum for a file cannot have it loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass

from auralflow_dist import storage
from auralflow_dist.errors import CheckpointError, ConfigError, StorageError

INDEX_ENV = "AURALFLOW_MODEL_INDEX"
CACHE_ENV = "AURALFLOW_CACHE"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class IndexEntry:
    name: str
    url: str
    targets: tuple[str, ...]
    files: tuple[tuple[str, str], ...]  # (path under url, sha256)
    model_type: str = ""

    @property
    def fingerprint(self) -> str:
        """A short digest of the listed checksums: a changed entry gets a fresh cache folder."""
        text = json.dumps([self.url, list(self.files)])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def index_url(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get(INDEX_ENV) or None


def cache_root() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "auralflow", "models"
    )


def read_index(url: str) -> dict[str, IndexEntry]:
    """Every entry of the index at ``url``, checked once here: names, URLs, paths, checksums."""
    try:
        data = json.loads(storage.read_bytes(url))
    except StorageError as err:
        raise ConfigError("model_index", f"cannot read {url}: {err}") from None
    except ValueError as err:
        raise ConfigError("model_index", f"{url} is not JSON ({err})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ConfigError("model_index", f'{url} must be {{"models": {{name: entry}}}}')
    return {name: _entry(url, name, raw) for name, raw in models.items()}


def _entry(index: str, name: str, raw: object) -> IndexEntry:
    where = f"{index}: model {name!r}"
    if not isinstance(raw, dict) or not isinstance(raw.get("url"), str) or not raw["url"]:
        raise ConfigError("model_index", f"{where} needs a 'url'")
    files = raw.get("files")
    if not isinstance(files, dict) or not files:
        raise ConfigError("model_index", f"{where} needs 'files': {{path: sha256}}")
    checked = []
    for path, digest in sorted(files.items()):
        parts = path.split("/")
        if path.startswith("/") or ".." in parts or "" in parts:
            raise ConfigError("model_index", f"{where}: file path {path!r} must stay under url")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest.lower()) <= _HEX:
            raise ConfigError("model_index", f"{where}: {path} needs a 64-digit hex SHA-256")
        checked.append((path, digest.lower()))
    if not any(posixpath.basename(p) == "weights.pt" for p, _ in checked):
        raise ConfigError("model_index", f"{where} lists no weights.pt")
    targets = raw.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ConfigError("model_index", f"{where}: 'targets' must be a list of stem names")
    model_type = raw.get("model_type", "")
    if not isinstance(model_type, str):
        raise ConfigError("model_index", f"{where}: 'model_type' must be a network's name")
    return IndexEntry(name, raw["url"], tuple(targets), tuple(checked), model_type)


def lookup(name: str, index: str | None = None) -> IndexEntry | None:
    """The entry called ``name``, or None where no index is set or it has no such name."""
    url = index_url(index)
    if url is None:
        return None
    return read_index(url).get(name)


def fetch(entry: IndexEntry, dest: str | None = None) -> str:
    """``entry``'s files in ``dest`` (default: its cache folder), fetched and verified first
    where they are not all there yet."""
    dest = dest or storage.join(cache_root(), f"{entry.name}-{entry.fingerprint}")
    if all(storage.exists(storage.join(dest, path)) for path, _ in entry.files):
        return dest
    blobs = {}
    for path, expected in entry.files:
        url = storage.join(entry.url, path)
        try:
            data = storage.read_bytes(url)
        except StorageError as err:
            raise CheckpointError(f"model {entry.name!r}: cannot fetch {url} ({err})") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise CheckpointError(
                f"model {entry.name!r}: {url} has SHA-256 {actual}, the index says {expected}"
            )
        blobs[path] = data
    # weights.pt last: `fetch` and `session._is_model` take a folder with weights as complete.
    for path in sorted(blobs, key=lambda p: posixpath.basename(p) == "weights.pt"):
        storage.write_bytes(storage.join(dest, path), blobs[path])
    return dest


def resolve(spec: str, index: str | None = None) -> str:
    """``spec`` itself where it is a path or URL that exists, else the cached folder of the
    index entry of that name; an unknown name is an error that lists the index's names."""
    if "://" in spec or "," in spec or storage.exists(spec):
        return spec
    url = index_url(index)
    if url is None:
        return spec  # the loader reports the missing path
    entries = read_index(url)
    if spec not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise CheckpointError(f"{spec}: neither a path nor a model in {url} (it has: {known})")
    return fetch(entries[spec])


def index_entry(name: str, url: str) -> dict[str, dict[str, object]]:
    """The index entry of the model or bundle folder at ``url``: every model.json and weights.pt
    under it with its SHA-256 (what `auralflow index add` writes)."""
    from auralflow_dist.session import MODEL_JSON, WEIGHTS, bundle_dirs, read_model_config

    base = url.rstrip("/")
    files, targets, types = {}, [], set()
    for model_dir in bundle_dirs(url):
        rel = model_dir[len(base) :].strip("/")
        for filename in (MODEL_JSON, WEIGHTS):
            path = posixpath.join(rel, filename) if rel else filename
            files[path] = hashlib.sha256(
                storage.read_bytes(storage.join(model_dir, filename))
            ).hexdigest()
        config = read_model_config(model_dir)
        targets.append(config.target)
        types.add(config.model_type)
    entry: dict[str, object] = {"url": url, "targets": sorted(targets), "files": files}
    if len(types) == 1:
        entry["model_type"] = types.pop()
    return {name: entry}


def add_to_index(index: str, name: str, url: str) -> dict[str, object]:
    """Add (or replace) the entry ``name`` for the model or bundle at ``url`` in the index file
    at ``index``, creating the file where there is none; returns the entry."""
    entries: dict[str, object] = {}
    if storage.exists(index):
        read_index(index)  # refuse to rewrite a broken index
        entries = json.loads(storage.read_bytes(index))["models"]
    entry = index_entry(name, url)
    entries.update(entry)
    storage.write_bytes(index, json.dumps({"models": entries}, indent=2).encode())
    return entry[name]


def find(model: str, target: str, index: str | None = None) -> IndexEntry:
    """The entry named ``model``, else the one of network ``model`` that has ``target``."""
    url = index_url(index)
    if url is None:
        raise ConfigError("model_index", f"no model index: pass one, or set {INDEX_ENV} to its URL")
    entries = read_index(url)
    if model in entries:
        return entries[model]
    for entry in entries.values():
        if entry.model_type == model and target in entry.targets:
            return entry
    raise CheckpointError(
        f"{url} has no {model} model for {target} (it has: {', '.join(sorted(entries)) or 'none'})"
    )
