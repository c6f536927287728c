"""Atomic output files: written under a temporary name beside the target, renamed on success.

An interrupted or failed run leaves no partial file, and an existing file at the target stays
untouched until the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from resnet_cli.errors import OutputError


def check_output_path(path: Path, *, overwrite: bool = True) -> None:
    """Fail early, before any work, if `path` cannot be written."""
    if path.is_dir():
        raise OutputError(f"Output {path} is a directory; give a file name.")
    if path.exists() and not overwrite:
        raise OutputError(f"Output {path} already exists; pass --overwrite to replace it.")
    if not path.parent.is_dir():
        raise OutputError(f"Cannot write {path}: folder {path.parent} does not exist.")


@contextlib.contextmanager
def atomic_path(path: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; rename it to `path` when the block succeeds.

    The temporary name keeps `path`'s suffix (numpy and Keras pick formats by suffix).
    """
    check_output_path(path, overwrite=overwrite)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}",
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    # mkstemp creates 0600; the finished file gets the permissions a plain open() would give.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        if not overwrite and path.exists():
            raise OutputError(f"Output {path} appeared while writing; not replacing it.")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: Path, *, overwrite: bool = True, newline: str | None = None
                ) -> Iterator[TextIO]:
    """Open a text file for writing that appears at `path` only once it is complete."""
    with atomic_path(path, overwrite=overwrite) as tmp, \
            open(tmp, "w", encoding="utf-8", newline=newline) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
