"""Atomic output files: written under a temporary name beside the target, renamed on success.

An interrupted or failed run leaves no partial file, and an existing file at the target stays
untouched until the new one is complete. The operating system's refusals while writing (disk
full, read-only file system, permission denied, missing folder, a directory in the way)
become one `OutputError` naming the target and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from resnet_cli.errors import OutputError

# errno values that mean "this output cannot be written here", whatever wrote it.
WRITE_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
    errno.ENOENT, errno.ENOTDIR, errno.EFBIG, errno.EIO, errno.ENAMETOOLONG,
})


def write_error(path: Path, exc: OSError) -> OutputError:
    """The one-line error for an OS refusal to write `path`."""
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    return OutputError(f"Cannot write {path}: {reason}.")


def find_write_error(exc: BaseException) -> OSError | None:
    """The OS write error behind `exc` (libraries such as Keras and h5py wrap them), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in WRITE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def check_output_path(path: Path, *, overwrite: bool = True) -> None:
    """Fail early, before any work, if `path` cannot be written."""
    if path.is_dir():
        raise OutputError(f"Output {path} is a directory; give a file name.")
    if path.exists() and not overwrite:
        raise OutputError(f"Output {path} already exists; pass --overwrite to replace it.")
    check_output_folder(path)


def check_output_folder(path: Path) -> None:
    """Fail early if the folder that will hold `path` is missing or not writable."""
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"Cannot write {path}: folder {folder} does not exist.")
    _check_writable(folder, path)


def check_creatable(folder: Path) -> None:
    """Fail early if `folder` cannot be created (or written, when it exists): its nearest
    existing ancestor must be a writable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"Cannot write {folder}: {existing} is not a folder.")
    _check_writable(existing, folder)


def make_folder(folder: Path) -> None:
    """Create `folder` (and its parents) when missing; an OS refusal is one OutputError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None


def _check_writable(folder: Path, target: Path) -> None:
    """`target` goes into (or below) the existing `folder`: refuse a folder we cannot write."""
    if not os.access(folder, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(folder) else "permission denied"
        raise OutputError(f"Cannot write {target}: {reason} (folder {folder}).")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def output_errors(path: Path) -> Iterator[None]:
    """Turn an OS refusal to write `path` (or a file beside it), raised in the block, into
    `OutputError` naming `path`. Errors about files elsewhere pass through unchanged."""
    try:
        yield
    except OutputError:
        raise
    except Exception as exc:
        cause = find_write_error(exc)
        if cause is None or not _beside(cause, path):
            raise
        raise write_error(path, cause) from exc


def _beside(error: OSError, path: Path) -> bool:
    """Whether `error` concerns a file in `path`'s folder or below it (an error that names no
    file is taken to)."""
    if not error.filename:
        return True
    try:
        named = Path(os.fsdecode(error.filename)).resolve()
        return named.is_relative_to(path.parent.resolve())
    except (OSError, TypeError, ValueError):
        return True


@contextlib.contextmanager
def atomic_path(path: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; rename it to `path` when the block succeeds.

    The temporary name keeps `path`'s suffix (numpy and Keras pick formats by suffix).
    """
    check_output_path(path, overwrite=overwrite)
    with output_errors(path):
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}",
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    # mkstemp creates 0600; the finished file gets the permissions a plain open() would give.
    umask = os.umask(0)
    os.umask(umask)
    try:
        with output_errors(path):
            os.chmod(tmp, 0o666 & ~umask)
            yield tmp
            if not overwrite and path.exists():
                raise OutputError(f"Output {path} appeared while writing; not replacing it.")
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
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


@contextlib.contextmanager
def atomic_dir(path: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; it becomes `path` when the block succeeds.

    An existing folder at `path` (with `overwrite`) is moved aside and removed only once the
    new one is in place, so a failed run leaves the old one as it was.
    """
    import shutil

    if path.exists() and not overwrite:
        raise OutputError(f"Output {path} already exists; pass --overwrite to replace it.")
    if path.exists() and not path.is_dir():
        raise OutputError(f"Output {path} is a file; expected a folder.")
    check_output_folder(path)
    with output_errors(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        with output_errors(path):
            os.chmod(tmp, 0o777 & ~umask)
            yield tmp
            if path.exists() and not overwrite:
                raise OutputError(f"Output {path} appeared while writing; not replacing it.")
            with set_aside(path):
                os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def set_aside(path: Path) -> Iterator[None]:
    """Move the folder at `path` (if there is one) aside while the block writes a new one
    there: the old one is removed once the block succeeds, or put back, in place of whatever
    the block left, if it fails. The one move-aside-and-restore of every command."""
    import shutil

    if not path.exists():
        yield
        return
    with output_errors(path):
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.rename(path, old / path.name)
    try:
        yield
    except BaseException:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        os.rename(old / path.name, path)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
