"""Images where they live: `s3://`, `gs://`, `https://` (any fsspec filesystem) URLs.

`images.collect_inputs` hands URL arguments to `expand_url` (a prefix or pattern becomes the
image objects under it) and `images.load_image` reads a URL with `read_url`, then decodes the
bytes through the same reader as a local file. fsspec (with s3fs, gcsfs and aiohttp behind it)
is imported only when an input has a scheme, so local runs never pay for it.

A read takes the whole body (a stream read is a loop) and checks its length against what the
server announced; `http(s)://` reads retry transient failures with backoff (s3fs and gcsfs
retry their own). `redact_urls` masks credentials that a URL carries (userinfo, query values
such as presigned signatures) in the lines the command line prints and logs.

Credentials and endpoints come from the environment only, never from the command line: the
AWS conventions for S3 (`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, `AWS_ENDPOINT_URL` for MinIO and
other S3-compatible stores, ...) and Google's for GCS (`GOOGLE_APPLICATION_CREDENTIALS`, the
metadata server).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Collection
from typing import Any

from resnet_cli.errors import ImageError, UsageError, first_line
from resnet_cli.extras import require_module

log = logging.getLogger(__name__)

MAX_OBJECT_BYTES = 100 * 1024 * 1024  # an object is refused beyond this: memory stays bounded
READ_CHUNK_BYTES = 1024 * 1024
HTTP_ATTEMPTS = 4  # one read and 3 retries: about 1.75 s of backoff at most
HTTP_BACKOFF_SECONDS = 0.25  # doubled after each failed attempt (with jitter)
HTTP_MAX_BACKOFF_SECONDS = 4.0
_RETRY_STATUSES = frozenset({408, 425, 429})  # and every 5xx
_SHORT_BODY_RE = re.compile(r"received (\d+) of (\d+) bytes")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = frozenset("*?[")
_HTTP = ("http", "https")


def is_url(name: str) -> bool:
    """Whether `name` is a URL (`scheme://...`) rather than a local path."""
    return _URL_RE.match(name) is not None


def _filesystem(url: str) -> tuple[Any, str]:
    """fsspec's filesystem for `url` (cached by fsspec, so one per scheme) and its path."""
    require_module("fsspec", extra="remote", purpose=f"reading {url.split('://')[0]}:// inputs")
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(url)
    except ImportError as exc:  # s3fs / gcsfs / aiohttp missing for this scheme
        raise UsageError(f"reading {url.split('://')[0]}:// inputs needs "
                         f"{exc.name or 'its fsspec backend'}: pip install 'resnet-cli[remote]'"
                         ) from exc
    except ValueError as exc:  # an unknown protocol
        raise UsageError(f"{url}: {first_line(exc)}") from exc
    return fs, str(path)


def expand_url(url: str, *, recursive: bool, extensions: Collection[str]) -> list[str] | None:
    """The image objects that a prefix (`s3://bucket/photos/`) or pattern
    (`gs://b/*.jpg`) names, sorted; None when `url` names one object (it is read as it is).

    HTTP(S) URLs always name one object. A prefix contributes objects whose names end in
    one of `extensions`; a pattern keeps every match, like a local glob. A prefix that
    cannot be listed (no such bucket, no network) is kept as one input, so its error is
    reported in its place.
    """
    scheme = url.split("://", 1)[0].lower()
    if scheme in _HTTP:
        return None
    fs, path = _filesystem(url)
    try:
        if _GLOB_CHARS & set(path):
            return sorted(_with_scheme(fs, p) for p in fs.glob(path)
                          if not fs.isdir(p))
        if not (url.endswith("/") or fs.isdir(path)):
            return None
        names = fs.find(path) if recursive else [
            entry["name"] for entry in fs.ls(path, detail=True) if entry["type"] == "file"]
    except (OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError) and url.endswith("/"):
            return []
        return None
    prefix = path.rstrip("/") + "/"
    return sorted(
        _with_scheme(fs, name) for name in names
        if name.lower().endswith(tuple(extensions))
        and not any(part.startswith(".") for part in name[len(prefix):].split("/"))
    )


def _with_scheme(fs: Any, path: str) -> str:
    return str(fs.unstrip_protocol(path))


def read_url(url: str, *, limit: int = MAX_OBJECT_BYTES) -> bytes:
    """The bytes of the object at `url`, all of them (at most `limit`).

    The body is read to the end of the stream and its length compared with what the server
    announced (Content-Length, or the object's size). `http(s)://` reads are retried on
    transient failures (a reset or dropped connection, a cut-short body, 5xx, 429) with
    exponential backoff, as s3fs and gcsfs retry their own.

    Raises:
        ImageError: missing, forbidden, unreachable, cut short, or larger than `limit`.
        UsageError: the scheme's fsspec backend is not installed.
    """
    fs, path = _filesystem(url)
    if url.split("://", 1)[0].lower() not in _HTTP:
        return _read_once(fs, path, url, limit=limit, http=False)
    for attempt in range(1, HTTP_ATTEMPTS + 1):
        try:
            return _read_once(fs, path, url, limit=limit, http=True)
        except _TransientError as exc:
            if attempt == HTTP_ATTEMPTS:
                raise ImageError(url, f"{exc.reason} (tried {HTTP_ATTEMPTS} times)") from None
            pause = min(HTTP_BACKOFF_SECONDS * 2 ** (attempt - 1), HTTP_MAX_BACKOFF_SECONDS)
            pause *= 0.5 + random.random() / 2  # jitter, so many readers do not retry at once
            log.info("%s: %s; retrying in %.2f s (attempt %d of %d)", url, exc.reason, pause,
                     attempt + 1, HTTP_ATTEMPTS)
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


class _TransientError(Exception):
    """A failure of one HTTP attempt that another attempt may not have."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _read_once(fs: Any, path: str, url: str, *, limit: int, http: bool) -> bytes:
    """One attempt at reading the whole object; a transient HTTP failure raises
    `_TransientError`, every other failure `ImageError`."""
    # HTTP: stream the body (a server need not support ranges) in one GET: fsspec probes the
    # size with another request unless given one, which its stream file never uses (the
    # length checked is the GET's own Content-Length). Others: no read-ahead cache.
    kwargs: dict[str, Any] = {"block_size": 0, "size": 1} if http else {"cache_type": "none"}
    try:
        with fs.open(path, "rb", **kwargs) as handle:
            expected = _announced_size(handle, http=http)
            if expected is not None and expected > limit:
                raise ImageError(url, _too_large(expected, limit))
            data = _read_to_end(handle, limit)
    except (ImageError, _TransientError):
        raise
    except FileNotFoundError as exc:
        # fsspec's HTTP reports a refused connection, or a 5xx of its size probe, as not
        # found too: only a 404 (or no cause) is a missing object.
        cause = exc.__cause__
        status = getattr(cause, "status", None)
        if cause is not None and (status is None or (http and status != 404)):
            raise _transient_or_error(url, cause, http=http) from None
        raise ImageError(url, "no such object") from None
    except PermissionError:
        raise ImageError(url, "permission denied") from None
    except IsADirectoryError:
        raise ImageError(url, "is a directory") from None
    except Exception as exc:  # network, TLS, HTTP and service errors of every backend
        raise _transient_or_error(url, exc, http=http) from None
    if len(data) > limit:
        raise ImageError(url, _too_large(None, limit))
    if expected is not None and len(data) != expected:
        reason = f"cut short: got {len(data):,} of {expected:,} bytes"
        raise _TransientError(reason) if http else ImageError(url, reason)
    return data


def _read_to_end(handle: Any, limit: int) -> bytes:
    """Everything left in `handle` up to `limit` + 1 bytes: a stream read is a loop, since
    one read() of an HTTP body returns what has arrived so far."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = handle.read(min(READ_CHUNK_BYTES, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _announced_size(handle: Any, *, http: bool) -> int | None:
    """The body length the server announced: Content-Length of an HTTP response whose body
    is not re-encoded (aiohttp decompresses gzip, so its length is not the header's), or the
    object's size from the store."""
    if not http:
        size = getattr(handle, "size", None)
        return int(size) if size is not None else None
    response = getattr(handle, "r", None)
    headers = getattr(response, "headers", None) or {}
    encoding = str(headers.get("Content-Encoding", "identity")).lower()
    length = headers.get("Content-Length")
    if encoding != "identity" or length is None or not str(length).isdigit():
        return None
    return int(length)


def _transient_or_error(url: str, exc: BaseException, *, http: bool) -> Exception:
    """`exc` of one read as `_TransientError` (HTTP: worth another attempt) or ImageError."""
    status = getattr(exc, "status", None)
    reason = f"cannot read: {first_line(exc)}"
    short = _SHORT_BODY_RE.search(str(exc))  # aiohttp's own Content-Length check
    if short:
        status = None
        reason = f"cut short: got {int(short[1]):,} of {int(short[2]):,} bytes"
    elif isinstance(status, int):
        message = str(getattr(exc, "message", "") or "")
        reason = f"HTTP {status}" + (f" {message}" if message else "")
    if http and (status in _RETRY_STATUSES or (isinstance(status, int) and status >= 500)
                 or (status is None and _is_connection_error(exc))):
        return _TransientError(reason)
    if isinstance(status, int) and status in (401, 403):
        return ImageError(url, f"permission denied (HTTP {status})")
    return ImageError(url, reason)


def _is_connection_error(exc: BaseException) -> bool:
    """A reset, refused or dropped connection, a body cut short, a timeout."""
    import asyncio

    try:
        import aiohttp
    except ImportError:  # pragma: no cover - fsspec's HTTP needs it
        return isinstance(exc, (ConnectionError, asyncio.TimeoutError))
    return isinstance(exc, (ConnectionError, asyncio.TimeoutError, aiohttp.ClientConnectionError,
                            aiohttp.ClientPayloadError))


def _too_large(size: int | None, limit: int) -> str:
    what = f"{size:,} bytes" if size is not None else f"over {limit:,} bytes"
    return f"too large ({what}; objects over {limit:,} bytes are refused)"


_URL_IN_TEXT_RE = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#@'\"]*@)?"
    r"(?P<rest>(?:(?!:\s)[^\s?#'\"])*)(?:\?(?P<query>(?:(?!:(?:\s|$))[^\s#'\"])*))?")


def redact_urls(text: str) -> str:
    """`text` with the credentials of every URL in it masked: the userinfo (`user:pass@`)
    becomes `***@`, and each query value (presigned signatures, tokens) `***`."""

    def mask(match: re.Match[str]) -> str:
        out = match["scheme"] + ("***@" if match["userinfo"] else "") + match["rest"]
        if match["query"] is not None:
            out += "?" + "&".join(f"{part.split('=', 1)[0]}=***" if part else part
                                  for part in match["query"].split("&"))
        return out

    return _URL_IN_TEXT_RE.sub(mask, text)
