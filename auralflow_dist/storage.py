"""One place that turns a URL into an fsspec filesystem, writes atomically and names failures.

Every module reads and writes through here so that plain paths, ``file://``, ``s3://`` (AWS, MinIO,
SeaweedFS, with endpoint and credentials from the standard AWS environment or from `configure`) and
any other fsspec protocol behave the same, and so that a missing bucket, a wrong key or an
unreachable endpoint is one `StorageError` line within seconds instead of a hang or a traceback.
Credentials never appear in those lines: every message goes through `redact`.

Transient S3 failures (connection errors, timeouts, 5xx, throttling) are retried with growing
waits under a budget (`RetryPolicy`); permanent ones (403, 404, a missing bucket, bad credentials)
fail on the first answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TypeVar

import fsspec
from fsspec.core import split_protocol, url_to_fs
from fsspec.implementations.local import LocalFileSystem

from auralflow_dist import scratch
from auralflow_dist.errors import StorageError

if TYPE_CHECKING:
    import pyarrow.fs

T = TypeVar("T")

S3_PROTOCOLS = ("s3", "s3a")
# soundfile reads a header, seeks and reads a few seconds: fetch 1 MiB ranges, not s3fs's 50 MiB.
READ_BLOCK_SIZE = 1 << 20
_S3_CONFIG = {"connect_timeout": 5, "read_timeout": 60}
# Per S3 request: attempts in all (the first included), and seconds past the first failure after
# which no retry starts. Enough to ride out throttling and an endpoint restart; a dead endpoint
# still fails within seconds, not botocore's minutes.
DEFAULT_ATTEMPTS = 6
DEFAULT_RETRY_SECONDS = 30.0
_FIRST_WAIT_S = 0.2
_MAX_WAIT_S = 5.0
_ATTEMPTS_ENV = "AWS_MAX_ATTEMPTS"  # the AWS SDKs' own name for the same number
_RETRY_SECONDS_ENV = "AURALFLOW_S3_RETRY_SECONDS"
_MASK = "***"
_TRUE = {"1", "true", "yes", "on"}
_ACCESS_HINT = "access denied (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
_ANON_HINT = "access denied to anonymous requests (unset AWS_NO_SIGN_REQUEST, give credentials)"


@dataclass(frozen=True)
class RetryPolicy:
    """How one S3 request is retried after a transient failure.

    ``attempts`` tries in all; the waits double from ``first_wait_s`` up to ``max_wait_s``, each
    jittered to 50-100 % so that workers throttled together do not come back together; and no
    retry starts whose wait would end more than ``budget_s`` seconds after the first failure.
    """

    attempts: int = DEFAULT_ATTEMPTS
    budget_s: float = DEFAULT_RETRY_SECONDS
    first_wait_s: float = _FIRST_WAIT_S
    max_wait_s: float = _MAX_WAIT_S

    def wait(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        nominal = min(self.max_wait_s, self.first_wait_s * 2.0 ** (attempt - 1))
        return nominal * (0.5 + 0.5 * random.random())

    def delay(self, attempt: int, since_first_failure: float) -> float | None:
        """The wait before the next attempt after failed attempt ``attempt``, or None: give up."""
        if attempt >= self.attempts:
            return None
        wait = self.wait(attempt)
        return wait if since_first_failure + wait <= self.budget_s else None


def _env_number(env: Mapping[str, str], name: str, kind: type) -> Any:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise StorageError(f"{name}={text!r}: expected a number") from None


@dataclass(frozen=True)
class S3Settings:
    """Where and as whom to reach S3, and how long to retry; ``None`` fields fall back to defaults.

    ``max_attempts`` and ``retry_seconds`` bound each request's retries (`RetryPolicy`); the
    other ``None`` fields are left to botocore's own lookup.
    """

    endpoint_url: str | None = None
    key: str | None = None
    secret: str | None = None
    region: str | None = None
    anon: bool = False
    token: str | None = None
    max_attempts: int | None = None
    retry_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise StorageError(f"S3 max_attempts must be at least 1, got {self.max_attempts}")
        if self.retry_seconds is not None and not (
            math.isfinite(self.retry_seconds) and self.retry_seconds >= 0
        ):
            raise StorageError(
                f"S3 retry_seconds must be a finite number >= 0, got {self.retry_seconds}"
            )

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
            max_attempts=_env_number(env, _ATTEMPTS_ENV, int),
            retry_seconds=_env_number(env, _RETRY_SECONDS_ENV, float),
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
            max_attempts=base.max_attempts if self.max_attempts is None else self.max_attempts,
            retry_seconds=base.retry_seconds if self.retry_seconds is None else self.retry_seconds,
            **creds,
        )

    def retry_policy(self) -> RetryPolicy:
        """The retries these settings allow each request."""
        return RetryPolicy(
            attempts=DEFAULT_ATTEMPTS if self.max_attempts is None else self.max_attempts,
            budget_s=DEFAULT_RETRY_SECONDS if self.retry_seconds is None else self.retry_seconds,
            first_wait_s=_FIRST_WAIT_S,
            max_wait_s=_MAX_WAIT_S,
        )

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem``."""
        # `filesystem` replaces botocore's waits with the policy's; the attempt count here is for
        # instances built from these options elsewhere (unpickled by Ray Train, say).
        retries = {"mode": "standard", "total_max_attempts": self.retry_policy().attempts}
        options: dict[str, Any] = {
            "config_kwargs": {**_S3_CONFIG, "retries": retries},
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


# Error codes S3 and S3-compatible servers send for throttling or a passing fault; any 5xx but
# 501/505 and 429 count too, whatever their code.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
    }
)
_RETRY_HOOK_ID = "auralflow-retry"
_FIRST_FAILURE = "auralflow_first_failure"
_hook_lock = threading.Lock()


def _transient_status(status: int) -> bool:
    return status == 429 or (500 <= status < 600 and status not in (501, 505))


class _RetryHook:
    """botocore ``needs-retry`` handler that puts a `RetryPolicy` in charge of a client's retries.

    It runs before botocore's own handlers: for a transient failure it answers the wait or False
    (give up), which botocore then obeys; for anything else it answers None and leaves the call
    to them (S3's region redirects; botocore retries none of those errors).
    """

    def __init__(self, policy: RetryPolicy) -> None:
        import botocore.exceptions as bx

        self.policy = policy
        self._transient_errors = (
            bx.ConnectionError,
            bx.HTTPClientError,
            ConnectionError,
            TimeoutError,
        )
        self._permanent_errors = (bx.SSLError,)  # a certificate does not fix itself

    def transient(self, response: Any, caught_exception: BaseException | None) -> bool:
        """Whether the outcome of an attempt is worth another one."""
        if caught_exception is not None:
            return isinstance(caught_exception, self._transient_errors) and not isinstance(
                caught_exception, self._permanent_errors
            )
        if response is None:
            return False
        http_response, parsed = response
        code = (parsed.get("Error") or {}).get("Code") if isinstance(parsed, dict) else None
        return _transient_status(http_response.status_code) or code in _TRANSIENT_CODES

    def __call__(
        self,
        attempts: int,
        request_dict: dict[str, Any],
        response: Any = None,
        caught_exception: BaseException | None = None,
        **_: Any,
    ) -> float | bool | None:
        if not self.transient(response, caught_exception):
            return None
        context = request_dict.setdefault("context", {})
        now = time.monotonic()
        first = context.setdefault(_FIRST_FAILURE, now)
        wait = self.policy.delay(attempts, now - first)
        return False if wait is None else wait


def _s3_layers(fs: fsspec.AbstractFileSystem) -> list[fsspec.AbstractFileSystem]:
    """The S3 filesystems in ``fs``: itself, or those wrapped by caching layers of a chained URL."""
    found: list[fsspec.AbstractFileSystem] = []
    layer: Any = fs
    for _ in range(8):  # chains are short; a cycle must not hang
        if not isinstance(layer, fsspec.AbstractFileSystem):
            break
        if _is_s3(layer):
            found.append(layer)
        layer = getattr(layer, "fs", None)
    return found


def _install_retries(fs: fsspec.AbstractFileSystem, policy: RetryPolicy) -> None:
    """Make ``policy`` the one retry loop for every request ``fs`` sends.

    It sits on the botocore client, so file objects' ranged reads, multipart parts and callers
    that use ``fs`` directly get it too. s3fs's own loop is cut to one try: it would repeat the
    whole budget, with fixed 0.1 s waits.
    """
    fs.retries = 1
    client = fs.s3  # made here if new: no request is sent
    with _hook_lock:
        installed = getattr(fs, "_auralflow_retry", None)
        if installed is not None and installed[0] is client and installed[1] == policy:
            return
        events = client.meta.events
        events.unregister("needs-retry.s3", unique_id=_RETRY_HOOK_ID)
        events.register_first("needs-retry.s3", _RetryHook(policy), unique_id=_RETRY_HOOK_ID)
        fs._auralflow_retry = (client, policy)


@functools.cache
def _cut_body_errors() -> tuple[type[BaseException], ...]:
    """What a response body cut after its headers raises (aiohttp, aiobotocore, http.client)."""
    import http.client

    from aiobotocore.response import AioReadTimeoutError
    from aiohttp import ClientPayloadError
    from botocore.exceptions import ResponseStreamingError

    return (
        ClientPayloadError,
        ResponseStreamingError,
        AioReadTimeoutError,
        http.client.IncompleteRead,
    )


def _resending(fetch: Callable[..., T], policy: RetryPolicy) -> Callable[..., T]:
    """``fetch`` sent again under ``policy`` when the body of its answer is cut mid-read.

    botocore's loop (`_RetryHook`) sees only requests that fail before an answer; a body that
    breaks later surfaces in s3fs, whose own loop is cut to one try, so without this one dropped
    connection during a ranged GET failed the read at once.
    """

    @functools.wraps(fetch)
    def resent(*args: Any, **kwargs: Any) -> T:
        attempt, first = 0, None
        while True:
            try:
                return fetch(*args, **kwargs)
            except _cut_body_errors():
                attempt += 1
                now = time.monotonic()
                first = now if first is None else first
                wait = policy.delay(attempt, now - first)
                if wait is None:
                    raise
                time.sleep(wait)

    return resent


def _is_chain(url: str) -> bool:
    """Whether ``url`` chains filesystems (``simplecache::s3://b/k``) rather than holding ``::``
    in a name (``s3://b/a::b.wav``): in a chain, every part after a ``::`` names a protocol."""
    if "::" not in url:
        return False
    known = set(fsspec.available_protocols())
    return all(p in known or split_protocol(p)[0] in known for p in url.split("::")[1:])


def _url_to_fs(url: str, kwargs: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec's ``url_to_fs``, except that a ``::`` outside a chain stays part of the name."""
    if "::" not in url or _is_chain(url):
        return url_to_fs(url, **kwargs)
    cls = fsspec.get_filesystem_class(split_protocol(url)[0] or "file")
    protocol = cls.protocol if isinstance(cls.protocol, str) else cls.protocol[0]
    options = {**cls._get_kwargs_from_urls(url), **kwargs}
    return fsspec.filesystem(protocol, **options), cls._strip_protocol(url)


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``url`` and the path inside it; S3 gets the current settings."""
    parts = url.split("::") if _is_chain(url) else [url]
    layers = [split_protocol(part)[0] for part in parts]
    s3_layers = [p for p in layers if p in S3_PROTOCOLS]
    kwargs: dict[str, Any] = {}
    settings = current_settings() if s3_layers else None
    if settings is not None:
        options = settings.storage_options()
        kwargs = options if len(layers) == 1 else {p: options for p in s3_layers}
    try:
        # fsspec caches instances per arguments (and per process), so this is cheap to repeat.
        fs, path = _url_to_fs(url, kwargs)
    except (ValueError, ImportError) as err:
        raise StorageError(redact(f"{mask_url(url)}: unsupported URL ({err})")) from err
    if settings is not None:
        try:
            for layer in _s3_layers(fs):
                _install_retries(layer, settings.retry_policy())
        except ValueError as err:  # botocore rejects the endpoint URL or region
            raise StorageError(redact(f"{mask_url(url)}: cannot set up S3 ({err})")) from err
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
    if names & {"ClientPayloadError", "ResponseStreamingError", "IncompleteRead"}:
        return f"connection to endpoint {_endpoint()} was cut mid-read through every retry"
    if names & {"ReadTimeoutError", "ServerTimeoutError"} or (
        s3 and any(isinstance(e, TimeoutError) for e in chain)
    ):
        return f"endpoint {_endpoint()} did not answer in time"
    busy = sorted(
        c for c in codes if c in _TRANSIENT_CODES or (c.isdigit() and _transient_status(int(c)))
    )
    if s3 and busy:
        return (
            f"endpoint {_endpoint()} answered {busy[0]} (throttled or failing) through every retry"
        )
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
    ``part_size`` bytes) that becomes visible only on completion. Both name their writer
    (`scratch`), so what a writer killed outright leaves is removed by the next one.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write needs a write mode, not {mode!r}")
    fs, path = filesystem(url)
    encoding = None if "b" in mode else "utf-8"
    if _is_local(fs):
        folder, name = os.path.split(path)
        tmp = os.path.join(folder, scratch.partial_name(name))
        with _errors(url, fs, path):
            os.makedirs(folder or ".", exist_ok=True)
            scratch.remove_stale_partials(folder or ".")
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
    with tempfile.TemporaryDirectory(prefix="upload-", dir=scratch.process_dir()) as spool_dir:
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
    if _is_s3(fs):
        _resend_cut_reads(f, lambda fetch: _named(url, fs, path, fetch))
    with f:
        yield f


def _resend_cut_reads(f: IO, wrap: Callable[[Callable], Callable] = lambda fetch: fetch) -> None:
    """Make the ranged reads of the fsspec file ``f`` `_resending` (then ``wrap`` them)."""
    cache = getattr(f, "cache", None)
    if cache is not None:  # every read of an fsspec buffered file fetches through its cache
        cache.fetcher = wrap(_resending(cache.fetcher, _policy()))


def _policy() -> RetryPolicy:
    return current_settings().retry_policy()


def _named(
    url: str, fs: fsspec.AbstractFileSystem, path: str, fn: Callable[..., T]
) -> Callable[..., T]:
    """``fn`` with its storage failures turned into one `StorageError` naming ``url``."""

    @functools.wraps(fn)
    def named(*args: Any, **kwargs: Any) -> T:
        with _errors(url, fs, path):
            return fn(*args, **kwargs)

    return named


def write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` atomically: a reader sees the old file, or the whole new one."""
    with atomic_write(url, "wb") as f:
        f.write(data)


def read_bytes(url: str) -> bytes:
    """The whole content of ``url``."""
    fs, path = filesystem(url)
    cat = _resending(fs.cat_file, _policy()) if _is_s3(fs) else fs.cat_file
    with _errors(url, fs, path):
        return cat(path)


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
    """Delete the file or the whole folder/prefix at ``url``, its name taken literally.

    Never through fsspec's ``rm``: it expands ``[``, ``]``, ``*`` and ``?`` as a glob, so removing
    the marker of track "Song [ab]" would delete those of "Song a" and "Song b" instead.
    """
    fs, path = filesystem(url)
    with _errors(url, fs, path):
        kind = _kind(fs, path)
        if kind is None:
            if missing_ok:
                return
            raise FileNotFoundError(path)
        if kind == "file":
            fs.rm_file(path)
        elif _is_local(fs):
            shutil.rmtree(path)
        elif _is_s3(fs):
            _remove_prefix(fs, path)
        else:
            _remove_tree(fs, path)
        fs.invalidate_cache(path)


def _remove_prefix(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Delete every object under the S3 folder ``path``, by its listed key (the bucket too, at a root)."""
    bucket, _, key = path.strip("/").partition("/")
    prefix = key.rstrip("/") + "/" if key else ""
    keys: list[str] = []
    page_token: dict[str, str] = {}
    while True:
        page = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, **page_token)
        keys.extend(item["Key"] for item in page.get("Contents", []))
        if not page.get("IsTruncated"):
            break
        page_token = {"ContinuationToken": page["NextContinuationToken"]}
    for start in range(0, len(keys), 1000):  # the most one DeleteObjects takes
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        out = fs.call_s3("delete_objects", Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        if out.get("Errors"):
            from botocore.exceptions import ClientError

            error = out["Errors"][0]
            raise ClientError(
                {"Error": {"Code": error.get("Code", ""), "Message": error.get("Message", "")}},
                "DeleteObjects",
            )
    if not key:
        fs.call_s3("delete_bucket", Bucket=bucket)


def _remove_tree(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Delete the folder ``path`` of any other filesystem: listed files one by one, then folders."""
    entries = fs.find(path, withdirs=True, detail=True)
    for name, info in entries.items():
        if info["type"] != "directory":
            fs.rm_file(name)
    folders = [n for n, info in entries.items() if info["type"] == "directory" and n != path]
    for name in [*sorted(folders, key=len, reverse=True), path]:
        with contextlib.suppress(OSError):  # implied folders of key-value stores are gone already
            fs.rmdir(name)


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
    handler = _resending_handler()(fs) if _s3_layers(fs) else pyarrow.fs.FSSpecHandler(fs)
    return pyarrow.fs.PyFileSystem(handler), path


@functools.cache
def _resending_handler() -> type:
    """pyarrow's fsspec handler whose input files resend cut reads (checkpoints Ray downloads)."""
    import pyarrow
    import pyarrow.fs

    class ResendingHandler(pyarrow.fs.FSSpecHandler):
        def open_input_file(self, path: str) -> pyarrow.NativeFile:
            if not self.fs.isfile(path):
                raise FileNotFoundError(path)
            f = self.fs.open(path, mode="rb")
            _resend_cut_reads(f)
            return pyarrow.PythonFile(f, mode="r")

        open_input_stream = open_input_file

    return ResendingHandler
