"""Find, verify and download published ImageNet weights (Keras' cache layout, no TensorFlow import).

Keras keeps downloaded weights in `$KERAS_HOME/models` (default `~/.keras/models`). This module
looks there first, checks the published md5, and downloads with a progress bar only when the
file is missing or wrong. With no network it fails fast and says how to supply the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from resnet_cli.errors import WeightsError
from resnet_cli.registry import WeightsFile

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 15.0
_CHUNK = 1 << 20


def keras_cache_dir() -> Path:
    """The folder where Keras caches model weights: `$KERAS_HOME/models` or `~/.keras/models`."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def file_md5(path: Path) -> str:
    """md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_imagenet_weights(
    weights: WeightsFile, *, cache_dir: Path | None = None, progress: bool | None = None
) -> Path:
    """Return the path of a verified copy of `weights`, downloading it into the cache if needed.

    A cached file whose md5 differs from the published one is never used: it is replaced by a
    fresh download, and if that fails the error names the bad file.

    Raises:
        WeightsError: no verified copy is cached and the download failed.
    """
    cache = cache_dir or keras_cache_dir()
    target = cache / weights.filename
    stale: str | None = None
    if target.is_file():
        actual = file_md5(target)
        if actual == weights.md5:
            log.debug("using cached weights %s", target)
            return target
        stale = actual
        log.warning("cached %s has md5 %s, expected %s: downloading again", target, actual,
                    weights.md5)
    try:
        _download(weights, target, progress=progress)
    except WeightsError as exc:
        if stale is not None:
            raise WeightsError(
                f"{target} is corrupt (md5 {stale}, expected {weights.md5}) and could not be "
                f"downloaded again ({exc}). Delete it, or pass --weights PATH."
            ) from exc
        raise
    return target


def _download(weights: WeightsFile, target: Path, *, progress: bool | None) -> None:
    from tqdm import tqdm

    try:
        response = urllib.request.urlopen(weights.url, timeout=DOWNLOAD_TIMEOUT_S)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsError(
            f"ImageNet weights {weights.filename} are not cached and cannot be downloaded "
            f"({reason}). Put the file in {target.parent}/ or pass --weights PATH."
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{weights.filename}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        total = int(response.headers.get("Content-Length") or 0) or None
        with os.fdopen(fd, "wb") as out, response, tqdm(
            total=total, unit="B", unit_scale=True, desc=weights.filename,
            disable=None if progress is None else not progress, leave=False,
        ) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != weights.md5:
            raise WeightsError(
                f"Downloaded {weights.filename} has md5 {digest.hexdigest()}, expected "
                f"{weights.md5}. Try again, or pass --weights PATH."
            )
        os.replace(tmp, target)
    except (OSError, urllib.error.URLError) as exc:
        raise WeightsError(f"Download of {weights.filename} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
