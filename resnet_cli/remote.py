"""Images where they live: `s3://`, `gs://`, `https://` (any fsspec filesystem) URLs.

`images.collect_inputs` hands URL arguments to `expand_url` (a prefix or pattern becomes the
image objects under it) and `images.load_image` reads a URL with `read_url`, then decodes the
bytes through the same reader as a local file. fsspec (with s3fs, gcsfs and aiohttp behind it)
is imported only when an input has a scheme, so local runs never pay for it.

Credentials and endpoints come from the environment only, never from the command line: the
AWS conventions for S3 (`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, `AWS_ENDPOINT_URL` for MinIO and
other S3-compatible stores, ...) and Google's for GCS (`GOOGLE_APPLICATION_CREDENTIALS`, the
metadata server).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from resnet_cli.errors import ImageError, UsageError, first_line
from resnet_cli.extras import require_module

MAX_OBJECT_BYTES = 100 * 1024 * 1024  # an object is refused beyond this: memory stays bounded
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
                         f"{exc.name or 'its fsspec backend'}: pip install 'resnet[remote]'"
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
    """The bytes of the object at `url`, at most `limit` of them.

    Raises:
        ImageError: missing, forbidden, unreachable, or larger than `limit`.
        UsageError: the scheme's fsspec backend is not installed.
    """
    fs, path = _filesystem(url)
    scheme = url.split("://", 1)[0].lower()
    # HTTP: stream the body (a server need not support ranges); others: no read-ahead cache.
    kwargs: dict[str, Any] = {"block_size": 0} if scheme in _HTTP else {"cache_type": "none"}
    try:
        with fs.open(path, "rb", **kwargs) as handle:
            size = getattr(handle, "size", None)
            if size is not None and size > limit:
                raise ImageError(url, _too_large(size, limit))
            data: bytes = handle.read(limit + 1)
    except ImageError:
        raise
    except FileNotFoundError as exc:
        cause = exc.__cause__  # fsspec's HTTP reports a refused connection as not found too
        if cause is not None and getattr(cause, "status", None) is None:
            raise ImageError(url, f"cannot read: {first_line(cause)}") from None
        raise ImageError(url, "no such object") from None
    except PermissionError:
        raise ImageError(url, "permission denied") from None
    except IsADirectoryError:
        raise ImageError(url, "is a directory") from None
    except Exception as exc:  # network, TLS, HTTP and service errors of every backend
        raise ImageError(url, f"cannot read: {first_line(exc)}") from None
    if len(data) > limit:
        raise ImageError(url, _too_large(None, limit))
    return data


def _too_large(size: int | None, limit: int) -> str:
    what = f"{size:,} bytes" if size is not None else f"over {limit:,} bytes"
    return f"too large ({what}; objects over {limit:,} bytes are refused)"
