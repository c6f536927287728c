"""The feature-file format of `resnet extract` and `resnet merge`: naming, checking, writing
and reading `.npy` / `.npz` feature files, and joining them.

Rows go to disk batch by batch with plain file writes, so memory stays flat however many
rows there are. (Not through a memory map: dirty mapped pages count towards the process's
resident memory and would grow with the file.) The `.npy` header is written for every row
promised up front and rewritten for the rows written at the end, when the file is cut to size.
Everything is written under temporary names beside the output and renamed only when complete.

A `.npy` output has its row index beside it (`feats.npy` -> `feats.paths.txt`, row i = line i);
a `.npz` output holds `features` and `paths` (a unicode array: loads with allow_pickle=False).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from resnet_cli.errors import NoInputsError, OutputError, UsageError
from resnet_cli.outputs import atomic_path, check_output_path

if TYPE_CHECKING:
    import numpy as np

NPY, NPZ = ".npy", ".npz"
INDEX_SUFFIX = ".paths.txt"  # feats.npy -> feats.paths.txt
CARD_SUFFIX = ".card.json"  # feats.npy / feats.npz -> feats.card.json: the model behind them
FEATURES_KEY, PATHS_KEY = "features", "paths"  # the arrays in a .npz output
COPY_CHUNK_BYTES = 16 * 1024 * 1024
PATHS_PER_CHUNK = 8192


@dataclass(frozen=True)
class FeatureFile:
    """A feature file as written (or read)."""

    path: Path
    index: Path | None  # the .paths.txt row index beside a .npy; None for .npz
    rows: int
    row_shape: tuple[int, ...]
    dtype: str


def index_path(output: Path) -> Path | None:
    """The row index beside a `.npy` output (`feats.npy` -> `feats.paths.txt`); None for .npz."""
    return output.with_suffix(INDEX_SUFFIX) if output.suffix.lower() == NPY else None


def card_path(output: Path) -> Path:
    """The record of the model beside a feature file (`feats.npy` -> `feats.card.json`)."""
    return output.with_suffix(CARD_SUFFIX)


def write_feature_card(output: Path, record: dict[str, Any]) -> Path:
    """Write `record` (the model card and the feature options, JSON-ready) beside `output`,
    atomically, so that an index or a search can tell which model the rows come from."""
    import json

    from resnet_cli.outputs import atomic_open

    path = card_path(output)
    with atomic_open(path) as handle:
        handle.write(json.dumps(record, indent=2) + "\n")
    return path


def check_feature_output(output: Path, *, overwrite: bool) -> None:
    """Fail before any work if `output` is not a .npy/.npz name or cannot be written."""
    if output.suffix.lower() not in (NPY, NPZ):
        raise UsageError(f"-o {output}: write features to a .npy file (with a .paths.txt row "
                         "index beside it) or a .npz file; give a name ending in one of those.")
    check_output_path(output, overwrite=overwrite)
    index = index_path(output)
    if index is not None:
        check_output_path(index, overwrite=overwrite)


def merge_features(files: Sequence[Path], output: Path, *, overwrite: bool = False
                   ) -> FeatureFile:
    """Join feature files (`.npy` with `.paths.txt` beside, or `.npz`) into `output`, rows and
    paths in the order of `files`, streaming and atomically.

    Raises:
        UsageError: no files, a file that is not a feature file, or files whose rows differ
            in shape or type; an existing output without `overwrite`.
        OutputError: the files hold no rows at all.
    """
    import numpy as np

    if not files:
        raise NoInputsError("No feature files to merge.")
    check_feature_output(output, overwrite=overwrite)
    infos: list[FeatureFile] = []
    for path in files:  # check everything before writing anything
        with contextlib.ExitStack() as stack:
            infos.append(_open_feature_file(path, stack)[0])
    first = infos[0]
    for info in infos[1:]:
        if (info.row_shape, info.dtype) != (first.row_shape, first.dtype):
            raise UsageError(
                f"{info.path} has rows of shape {info.row_shape} {info.dtype}, but "
                f"{first.path} has {first.row_shape} {first.dtype}; merge only files written "
                "with the same extract options.")
    total = sum(info.rows for info in infos)
    if total == 0:
        raise OutputError(f"Nothing to merge: the files hold no rows; {output} was not created.")
    card = _common_card(files)
    dtype = np.dtype(first.dtype)
    row_bytes = dtype.itemsize * int(np.prod(first.row_shape, dtype=np.int64))
    chunk_rows = max(1, COPY_CHUNK_BYTES // max(row_bytes, 1))
    with feature_writer(output, row_shape=first.row_shape, dtype=dtype, capacity=total,
                         overwrite=overwrite) as writer:
        for path in files:
            with contextlib.ExitStack() as stack:
                info, data, names = _open_feature_file(path, stack)
                left = info.rows
                while left:
                    count = min(chunk_rows, left)
                    block = _read_exact(data, count * row_bytes, path)
                    rows = np.frombuffer(block, dtype=dtype).reshape(count, *info.row_shape)
                    writer.add(rows, list(itertools.islice(names, count)))
                    left -= count
    if card is not None:
        write_feature_card(output, card)
    return FeatureFile(path=output, index=index_path(output), rows=total,
                       row_shape=first.row_shape, dtype=dtype.name)


def _common_card(files: Sequence[Path]) -> dict[str, Any] | None:
    """The model record beside every file (None when they have none, as from an older
    extract).

    Raises:
        UsageError: records that differ (shards of different models), or only some files
            with one.
    """
    import json

    cards = []
    for path in files:
        beside = card_path(path)
        try:
            cards.append(json.loads(beside.read_text(encoding="utf-8"))
                         if beside.is_file() else None)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{beside}: not readable as JSON ({exc}).") from None
    if all(card is None for card in cards):
        return None
    for path, card in zip(files, cards, strict=True):
        if card != cards[0]:
            raise UsageError(f"{path} and {files[0]} were extracted with different models or "
                             f"options (their {CARD_SUFFIX} files differ); merge only shards of "
                             "one run.")
    return cards[0]


def _open_feature_file(path: Path, stack: contextlib.ExitStack
                       ) -> tuple[FeatureFile, IO[bytes], Iterator[str]]:
    """Open a feature file: its description, its data stream (at the first row) and its paths.

    Raises:
        UsageError: the file is missing or not a feature file.
    """
    import zipfile

    suffix = path.suffix.lower()
    if suffix not in (NPY, NPZ):
        raise UsageError(f"{path}: not a feature file; merge takes .npy (with .paths.txt "
                         "beside it) or .npz files from resnet extract.")
    if not path.is_file():
        raise UsageError(f"{path}: no such file.")
    if suffix == NPY:
        data: IO[bytes] = stack.enter_context(open(path, "rb"))  # noqa: SIM115
        shape, dtype = _read_header(data, str(path))
        index = path.with_suffix(INDEX_SUFFIX)
        if not index.is_file():
            raise UsageError(f"{path}: its row index {index.name} is missing beside it.")
        lines = stack.enter_context(open(  # noqa: SIM115
            index, encoding="utf-8", errors="surrogateescape", newline="\n"))
        count = sum(1 for _ in lines)
        lines.seek(0)
        names: Iterator[str] = (line[:-1] if line.endswith("\n") else line for line in lines)
    else:
        try:
            archive = stack.enter_context(zipfile.ZipFile(path))
            data = stack.enter_context(archive.open(f"{FEATURES_KEY}.npy"))
            shape, dtype = _read_header(data, f"{path}:{FEATURES_KEY}")
            path_stream = stack.enter_context(archive.open(f"{PATHS_KEY}.npy"))
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise UsageError(f"{path}: not a feature .npz from resnet extract ({exc}).") from None
        path_shape, path_dtype = _read_header(path_stream, f"{path}:{PATHS_KEY}")
        if path_dtype.kind != "U" or len(path_shape) != 1:
            raise UsageError(f"{path}: '{PATHS_KEY}' is not a 1-D string array.")
        count = path_shape[0]
        names = _iter_strings(path_stream, path_dtype, count, str(path))
    if len(shape) < 1:
        raise UsageError(f"{path}: holds a scalar, not rows of features.")
    if count != shape[0]:
        raise UsageError(f"{path}: {shape[0]} rows but {count} paths; the files do not belong "
                         "together.")
    info = FeatureFile(path=path, index=index_path(path), rows=int(shape[0]),
                       row_shape=tuple(int(d) for d in shape[1:]), dtype=dtype.name
                       if dtype.isnative else dtype.str)
    return info, data, names


def _read_header(stream: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = npy.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as exc:
        raise UsageError(f"{name}: not a .npy array ({exc}).") from None
    if fortran_order or dtype.hasobject or dtype.kind not in "fiuU":
        raise UsageError(f"{name}: holds {dtype} in {'F' if fortran_order else 'C'} order; "
                         "expected a C-ordered numeric array from resnet extract.")
    return tuple(shape), dtype


def _read_exact(stream: IO[bytes], size: int, path: Path) -> bytes:
    parts, left = [], size
    while left:
        part = stream.read(left)
        if not part:
            raise UsageError(f"{path}: the file ends early; it is truncated.")
        parts.append(part)
        left -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _iter_strings(stream: IO[bytes], dtype: np.dtype[Any], count: int, name: str
                  ) -> Iterator[str]:
    import numpy as np

    left = count
    while left:
        take = min(PATHS_PER_CHUNK, left)
        block = _read_exact(stream, take * dtype.itemsize, Path(name))
        yield from (str(s) for s in np.frombuffer(block, dtype=dtype))
        left -= take


class RowWriter:
    """Appends rows to a `.npy` file whose header promises `capacity` rows, and their paths to
    a text index; `finish` rewrites the header for the rows written and cuts the file there."""

    def __init__(self, data: IO[bytes], index: IO[str], *, row_shape: tuple[int, ...],
                 dtype: np.dtype[Any], capacity: int) -> None:
        import numpy as np

        self._data, self._index = data, index
        self.row_shape, self.dtype, self.capacity = row_shape, dtype, capacity
        self.row_bytes = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
        self.rows = 0
        self.longest_path = 1
        self._offset = self._write_header(capacity)

    def _write_header(self, rows: int) -> int:
        from numpy.lib import format as npy

        self._data.seek(0)
        # numpy pads the header so that the row count can grow to any size in place.
        npy.write_array_header_1_0(self._data, {"descr": npy.dtype_to_descr(self.dtype),
                                                "fortran_order": False,
                                                "shape": (rows, *self.row_shape)})
        return self._data.tell()

    def add(self, rows: np.ndarray, paths: Sequence[str]) -> None:
        import numpy as np

        if rows.shape[1:] != self.row_shape or len(rows) != len(paths):
            raise ValueError(f"rows {rows.shape} / {len(paths)} paths do not fit "
                             f"{self.row_shape}")
        if self.rows + len(rows) > self.capacity:
            raise ValueError("more rows than the header was written for")
        self._data.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        for path in paths:
            self._index.write(path + "\n")
            self.longest_path = max(self.longest_path, len(path))
        self.rows += len(rows)

    def finish(self) -> None:
        self._data.flush()
        if self._write_header(self.rows) != self._offset:
            raise RuntimeError(".npy header changed size")
        self._data.truncate(self._offset + self.rows * self.row_bytes)
        for handle in (self._data, self._index):
            handle.flush()
            os.fsync(handle.fileno())


@contextlib.contextmanager
def feature_writer(output: Path, *, row_shape: tuple[int, ...], dtype: np.dtype[Any],
                    capacity: int, overwrite: bool) -> Iterator[RowWriter]:
    """A `RowWriter` whose result appears at `output` (and its index) only when the block
    completes; on any exception, including KeyboardInterrupt, every temporary file goes."""
    index = index_path(output)
    with contextlib.ExitStack() as stack:
        if index is not None:
            # Entered last, renamed first: the .npy appears after its index is in place.
            data_path = stack.enter_context(atomic_path(output, overwrite=overwrite))
            index_tmp = stack.enter_context(atomic_path(index, overwrite=overwrite))
        else:
            zip_path = stack.enter_context(atomic_path(output, overwrite=overwrite))
            data_path = stack.enter_context(_scratch_file(output, ".features.npy"))
            index_tmp = stack.enter_context(_scratch_file(output, ".paths.txt"))
        with open(data_path, "r+b") as data, open(index_tmp, "w", encoding="utf-8",
                                                   errors="surrogateescape", newline="\n") as idx:
            writer = RowWriter(data, idx, row_shape=row_shape, dtype=dtype, capacity=capacity)
            yield writer
            writer.finish()
        if index is None:
            _write_npz(zip_path, data_path, index_tmp, writer)


@contextlib.contextmanager
def _scratch_file(output: Path, suffix: str) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=f".tmp{suffix}",
                                dir=output.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _write_npz(zip_path: Path, data_path: Path, index_file: Path, writer: RowWriter) -> None:
    """Store the finished .npy and the paths (as a unicode array) in an uncompressed zip."""
    import zipfile

    import numpy as np
    from numpy.lib import format as npy

    string_dtype = np.dtype(f"<U{writer.longest_path}")
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        with archive.open(f"{FEATURES_KEY}.npy", "w", force_zip64=True) as member, \
                open(data_path, "rb") as source:
            shutil.copyfileobj(source, member, COPY_CHUNK_BYTES)
        with archive.open(f"{PATHS_KEY}.npy", "w", force_zip64=True) as member, \
                open(index_file, encoding="utf-8", errors="surrogateescape",
                     newline="\n") as lines:
            npy.write_array_header_1_0(member, {"descr": npy.dtype_to_descr(string_dtype),
                                                "fortran_order": False,
                                                "shape": (writer.rows,)})
            for chunk in _chunked((line[:-1] for line in lines), PATHS_PER_CHUNK):
                member.write(np.array(chunk, dtype=string_dtype).tobytes())
    with open(zip_path, "rb+") as handle:
        os.fsync(handle.fileno())


def _chunked(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
