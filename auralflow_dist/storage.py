"""One place that turns a URL into an fsspec filesystem, writes atomically and names failures.

Every module reads and writes through here so that plain paths, ``file://``, ``s3://`` (AWS, MinIO,
SeaweedFS, with endpoint and credentials from the standard AWS environment or from `configure`) and
any other fsspec protocol behave the same, and so that a missing bucket, a wrong key or an
unreachable endpoint is one `StorageError` line within seconds instead of a hang or a traceback.
Credentials never appear in those lines: every message goes through `redact`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import fsspec
from fsspec.core import split_protocol, url_to_fs
from fsspec.implementations.local import LocalFileSystem

from auralflow_dist.errors import StorageError

if TYPE_CHECKING:
    import pyarrow.fs

S3_PROTOCOLS = ("s3", "s3a")
# soundfile reads a header, seeks and reads a few seconds: fetch 1 MiB ranges, not s3fs's 50 MiB.
READ_BLOCK_SIZE = 1 << 20
# Fail within seconds when the endpoint is down instead of botocore's long default back-off.
_S3_CONFIG = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2}}
_S3FS_RETRIES = 2
_MASK = "***"
_TRUE = {"1", "true", "yes", "on"}
_ACCESS_HINT = "access denied (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
_ANON_HINT = "access denied to anonymous requests (unset AWS_NO_SIGN_REQUEST, give credentials)"


@dataclass(frozen=True)
class S3Settings:
    """Where and as whom to reach S3; ``None`` fields fall back to botocore's own lookup."""

    endpoint_url: str | None = None
    key: str | None = None
    secret: str | None = None
    region: str | None = None
    anon: bool = False
    token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        """The settings the standard AWS variables give; the S3-specific endpoint wins."""
        env = os.environ if environ is None else environ
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret=env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            anon=env.get("AWS_NO_SIGN_REQUEST", "").strip().lower() in _TRUE,
            token=env.get("AWS_SESSION_TOKEN") or None,
        )

    def over(self, base: S3Settings) -> S3Settings:
        """These settings where given, ``base`` elsewhere; given credentials replace base's whole."""
        if self.anon or self.key:
            creds = {"key": self.key, "secret": self.secret, "token": self.token, "anon": self.anon}
        else:
            creds = {"key": base.key, "secret": base.secret, "token": base.token, "anon": base.anon}
        return S3Settings(
            endpoint_url=self.endpoint_url or base.endpoint_url,
            region=self.region or base.region,
            **creds,
        )

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem``."""
        options: dict[str, Any] = {
            "config_kwargs": {**_S3_CONFIG, "retries": dict(_S3_CONFIG["retries"])},
            # Other processes (Ray workers) write too: a cached listing would hide their files.
            "use_listings_cache": False,
        }
        if self.anon:
            options["anon"] = True
        else:
            options.update(
                {
                    k: v
                    for k, v in [("key", self.key), ("secret", self.secret), ("token", self.token)]
                    if v
                }
            )
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.region:
            options["client_kwargs"] = {"region_name": self.region}
        return options

    def __repr__(self) -> str:
        shown = {
            f.name: (
                _MASK
                if getattr(self, f.name) and f.name in ("key", "secret", "token")
                else getattr(self, f.name)
            )
            for f in dataclasses.fields(self)
        }
        if self.endpoint_url:
            shown["endpoint_url"] = mask_url(self.endpoint_url)
        return "S3Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


_configured: S3Settings | None = None


def configure(settings: S3Settings | None) -> None:
    """Set S3 settings from config; they override the environment field by field. None: env only."""
    global _configured
    _configured = settings


def current_settings() -> S3Settings:
    """The S3 settings in force: configured fields over the environment's."""
    env = S3Settings.from_env()
    return env if _configured is None else _configured.over(env)


# ----------------------------------------------------------------------------------------------
# Redaction


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_USERINFO = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|awsaccesskeyid|signature"
    r"|token|key|secret|password)=)[^&#\s]*"
)


def _known_secrets() -> list[str]:
    sources = [S3Settings.from_env()] + ([_configured] if _configured else [])
    values = {v for s in sources for v in (s.key, s.secret, s.token) if v}
    return sorted(values, key=len, reverse=True)  # longest first: a key inside a secret still goes


def _mask_values(text: str) -> str:
    for value in _known_secrets():
        text = text.replace(value, _MASK)
    return text


def mask_url(url: str) -> str:
    """``url`` fit to show: user info, signing query parameters and known keys replaced by ***."""
    url = _USERINFO.sub(rf"\g<scheme>{_MASK}@", url)
    return _mask_values(_SECRET_QUERY.sub(rf"\g<1>{_MASK}", url))


def redact(text: str) -> str:
    """``text`` fit to print or log: every URL in it masked, every known key and secret removed."""
    return _mask_values(_URL.sub(lambda m: mask_url(m.group(0)), text))


# ----------------------------------------------------------------------------------------------
# Filesystems and error translation


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return any(p in S3_PROTOCOLS for p in _protocols(fs))


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``url`` and the path inside it; S3 gets the current settings."""
    layers = [split_protocol(part)[0] for part in url.split("::")]
    s3_layers = [p for p in layers if p in S3_PROTOCOLS]
    kwargs: dict[str, Any] = {}
    if s3_layers:
        options = current_settings().storage_options()
        kwargs = options if len(layers) == 1 else {p: options for p in s3_layers}
    try:
        # fsspec caches instances per arguments (and per process), so this is cheap to repeat.
        fs, path = url_to_fs(url, **kwargs)
    except (ValueError, ImportError) as err:
        raise StorageError(redact(f"{mask_url(url)}: unsupported URL ({err})")) from err
    if _is_s3(fs):
        fs.retries = _S3FS_RETRIES
    return fs, path


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _client_code(err: BaseException) -> str | None:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "")) or None
    return None


def _endpoint() -> str:
    endpoint = current_settings().endpoint_url
    return mask_url(endpoint) if endpoint else "the default AWS endpoint"


def _bucket_missing(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether the bucket of ``path`` is absent; asked only after a 'not found', so errors mean no."""
    try:
        fs.call_s3("head_bucket", Bucket=path.split("/", 1)[0])
    except FileNotFoundError:
        return True
    except Exception:
        return False
    return False


def _reason(err: BaseException, fs: fsspec.AbstractFileSystem | None, path: str) -> str | None:
    """A short reason for ``err``, or None where it is not a storage failure."""
    chain = _chain(err)
    names = {type(e).__name__ for e in chain}
    codes = {_client_code(e) for e in chain} - {None}
    foreign = any(
        type(e).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp") for e in chain
    )
    s3 = fs is not None and _is_s3(fs)
    if "NoSuchBucket" in codes:
        return "bucket does not exist"
    if names & {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ClientConnectorError",
        "ConnectionClosedError",
    } or (s3 and any(isinstance(e, ConnectionError) for e in chain)):
        return f"cannot reach endpoint {_endpoint()}"
    if names & {"ReadTimeoutError", "ServerTimeoutError"} or (
        s3 and any(isinstance(e, TimeoutError) for e in chain)
    ):
        return f"endpoint {_endpoint()} did not answer in time"
    if "NoCredentialsError" in names:
        return "no credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or AWS_NO_SIGN_REQUEST=1 for public data)"
    if codes & {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "403",
        "Forbidden",
    } or any(isinstance(e, PermissionError) for e in chain):
        if not s3:
            return "permission denied"
        return _ANON_HINT if current_settings().anon else _ACCESS_HINT
    if codes & {"NoSuchKey", "404", "NotFound"} or any(
        isinstance(e, FileNotFoundError) for e in chain
    ):
        if s3 and _bucket_missing(fs, path):
            return "bucket does not exist"
        return "not found"
    if isinstance(err, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(err, NotADirectoryError):
        return "a file stands where a folder is expected"
    if isinstance(err, FileExistsError):
        return "already exists"
    if isinstance(err, OSError) or foreign:
        return f"{type(err).__name__}: {err}"
    return None


@contextlib.contextmanager
def _errors(
    url: str, fs: fsspec.AbstractFileSystem | None = None, path: str = ""
) -> Iterator[None]:
    """Turn storage failures inside the block into one `StorageError` naming ``url``."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        reason = _reason(err, fs, path)
        if reason is None:
            raise
        raise StorageError(redact(f"{mask_url(url)}: {reason}")) from err


def _bucket(path: str) -> str:
    return path.split("/", 1)[0]


def _is_bucket_root(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    return _is_s3(fs) and "/" not in path.strip("/")


def check_readable(url: str) -> None:
    """Stat ``url`` once so that a wrong bucket, key or endpoint fails here, named, at the edge."""
    fs, path = filesystem(url)
    with _errors(url, fs, path):
        if _is_bucket_root(fs, path):
            fs.call_s3("head_bucket", Bucket=_bucket(path))
        else:
            fs.info(path)


def ensure_bucket(url: str) -> None:
    """Create the bucket of an ``s3://`` URL unless it exists (tests and tools, not jobs)."""
    fs, path = filesystem(url)
    if not _is_s3(fs):
        raise StorageError(f"{mask_url(url)}: not an s3:// URL, no bucket to create")
    bucket = _bucket(path)
    settings = current_settings()
    params: dict[str, Any] = {"Bucket": bucket}
    # Only AWS itself wants a LocationConstraint; S3-compatible servers reject it.
    if settings.endpoint_url is None and settings.region not in (None, "us-east-1"):
        params["CreateBucketConfiguration"] = {"LocationConstraint": settings.region}
    with _errors(f"s3://{bucket}", fs, bucket):
        try:
            fs.call_s3("head_bucket", Bucket=bucket)
            return
        except FileNotFoundError:
            pass
        try:
            fs.call_s3("create_bucket", **params)
        except FileExistsError as err:
            if "BucketAlreadyOwnedByYou" not in {_client_code(e) for e in _chain(err)}:
                raise StorageError(f"s3://{bucket}: bucket name taken by another account") from err
        fs.invalidate_cache()


# ----------------------------------------------------------------------------------------------
# URLs


def join(url: str, *parts: str) -> str:
    """Join URL parts with '/', keeping the scheme."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def _to_url(url: str, root: str, path: str) -> str:
    """``path`` (as the filesystem names it) spelled like ``url``, which names ``root``."""
    rel = path[len(root) :] if path.startswith(root) else path
    rel = rel.strip("/")
    return join(url, rel) if rel else url


# ----------------------------------------------------------------------------------------------
# Reading and writing


@contextlib.contextmanager
def atomic_write(url: str, mode: str = "wb", *, part_size: int | None = None) -> Iterator[IO]:
    """A file that appears under ``url`` whole on clean exit, and not at all after an exception.

    Local files are written under a hidden temporary name in the same folder and renamed; object
    stores get a local spool uploaded on exit as one PUT, or as a multipart upload (parts of
    ``part_size`` bytes) that becomes visible only on completion.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write needs a write mode, not {mode!r}")
    fs, path = filesystem(url)
    encoding = None if "b" in mode else "utf-8"
    if _is_local(fs):
        folder, name = os.path.split(path)
        tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
        with _errors(url, fs, path):
            os.makedirs(folder or ".", exist_ok=True)
            f = open(tmp, mode, encoding=encoding)  # noqa: SIM115 - closed below before the rename
        try:
            with f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            with _errors(url, fs, path):
                os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="auralflow-upload-") as spool_dir:
        # Keep the file name: s3fs guesses the Content-Type from it.
        spool = os.path.join(spool_dir, os.path.basename(path) or "object")
        with open(spool, mode, encoding=encoding) as f:
            yield f
        options = {"chunksize": part_size} if part_size and _is_s3(fs) else {}
        with _errors(url, fs, path):
            fs.put_file(spool, path, **options)


@contextlib.contextmanager
def open_file(url: str, mode: str = "rb", *, block_size: int = READ_BLOCK_SIZE) -> Iterator[IO]:
    """Open ``url``; reads are ranged on object stores, writes go through `atomic_write`."""
    if "w" in mode:
        with atomic_write(url, mode) as f:
            yield f
        return
    fs, path = filesystem(url)
    options = {} if _is_local(fs) else {"block_size": block_size}
    with _errors(url, fs, path):
        f = fs.open(path, mode, **options)
    with f:
        yield f


def write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` atomically: a reader sees the old file, or the whole new one."""
    with atomic_write(url, "wb") as f:
        f.write(data)


def read_bytes(url: str) -> bytes:
    """The whole content of ``url``."""
    fs, path = filesystem(url)
    with _errors(url, fs, path):
        return fs.cat_file(path)


# ----------------------------------------------------------------------------------------------
# Listing and housekeeping


def _kind(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """'file', 'dir' or None (absent).

    On S3 a prefix counts only while objects are under it: servers such as SeaweedFS keep listing
    a folder for a while after its last object is deleted.
    """
    if _is_bucket_root(fs, path):
        try:
            fs.call_s3("head_bucket", Bucket=_bucket(path))
        except FileNotFoundError:
            return None
        return "dir"
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    if info["type"] != "directory":
        return "file"
    if _is_s3(fs):
        bucket, _, key = path.partition("/")
        listing = fs.call_s3(
            "list_objects_v2", Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1
        )
        return "dir" if listing.get("Contents") else None
    return "dir"


def exists(url: str) -> bool:
    """Whether a file, folder, prefix or bucket is at ``url``; unreachable storage raises."""
    fs, path = filesystem(url)
    with _errors(url, fs, path):
        return _kind(fs, path) is not None


def is_dir(url: str) -> bool:
    """Whether ``url`` is a folder (or, on object stores, a bucket or a prefix with objects)."""
    fs, path = filesystem(url)
    with _errors(url, fs, path):
        return _kind(fs, path) == "dir"


def local_path(url: str) -> str | None:
    """The OS path of ``url`` where it lies on this machine's disk, else None.

    Libraries with their own file I/O (libsndfile) read a path ~1.5x faster than they read
    through callbacks into a Python file object.
    """
    fs, path = filesystem(url)
    return path if _is_local(fs) else None


def absolute(url: str) -> str:
    """``url`` with a relative local path made absolute against this process's directory.

    For URLs handed to other processes: Ray Train runs each worker in its run's artifacts
    folder, where ``demo_output/session`` would name somewhere else entirely.
    """
    return local_path(url) or url


def size(url: str) -> int:
    """Bytes in the file at ``url``."""
    fs, path = filesystem(url)
    with _errors(url, fs, path):
        return int(fs.size(path))


def makedirs(url: str) -> None:
    """Make the folder ``url`` and its parents; object stores have no folders, so nothing there."""
    fs, path = filesystem(url)
    if _is_s3(fs):
        return  # s3fs would create a missing bucket: a typo must fail at write time instead
    with _errors(url, fs, path):
        fs.makedirs(path, exist_ok=True)


def remove(url: str, *, missing_ok: bool = False) -> None:
    """Delete the file or the whole folder/prefix at ``url``."""
    fs, path = filesystem(url)
    with _errors(url, fs, path):
        if _kind(fs, path) is None:
            if missing_ok:
                return
            raise FileNotFoundError(path)
        fs.rm(path, recursive=True)


def listdir(url: str) -> list[str]:
    """URLs of the entries directly under the folder or prefix ``url``, sorted."""
    fs, root = filesystem(url)
    with _errors(url, fs, root):
        found = fs.ls(root, detail=False)
    return sorted(_to_url(url, root, p) for p in found if p.rstrip("/") != root)


def glob(url: str, pattern: str) -> list[str]:
    """URLs under ``url`` matching the glob ``pattern`` (``**`` recurses), sorted."""
    fs, root = filesystem(url)
    with _errors(url, fs, root):
        found = fs.glob(join(root, pattern))
    return sorted(_to_url(url, root, p) for p in found)


def find_files(url: str, extensions: Iterable[str] | None = None) -> list[str]:
    """URLs of every file under ``url`` (recursively) whose suffix is in ``extensions``, sorted.

    Hidden names are skipped: they are temporary files of `atomic_write` or macOS ``._*`` sidecars
    that look like audio by suffix but are not.
    """
    fs, root = filesystem(url)
    suffixes = (
        None if extensions is None else tuple("." + e.lower().lstrip(".") for e in extensions)
    )
    with _errors(url, fs, root):
        found = fs.find(root)
        if not found and _kind(fs, root) is None:
            raise FileNotFoundError(root)
    urls = []
    for path in found:
        rel = path[len(root) :] if path.startswith(root) else path
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if suffixes is None or path.lower().endswith(suffixes):
            urls.append(_to_url(url, root, path))
    return sorted(urls)


def to_pyarrow_fs(url: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """A pyarrow filesystem and path for ``url`` (Ray Train's ``storage_filesystem``/``storage_path``)."""
    import pyarrow.fs

    fs, path = filesystem(url)
    if _is_local(fs):
        return pyarrow.fs.LocalFileSystem(), path
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path
