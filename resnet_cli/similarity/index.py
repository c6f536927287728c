"""The index: a folder `NAME.index/` that extract's own files make up, nothing pickled.

    NAME.index/vectors.npy        float32 rows of unit length (numpy's .npy, no objects)
    NAME.index/vectors.paths.txt  row i's path on line i
    NAME.index/vectors.card.json  the model record (card, weights, pooling, layer, resize)
    NAME.index/index.json         {"format": "resnet-index", "version", "rows", "dim"}

Every write builds a new folder beside the old one and renames it into place
(`outputs.atomic_dir`: the old folder is set aside and restored if anything fails), so an
interrupted `--append` leaves the old index whole. `--append` computes rows only for paths the
index does not hold, with the model its record names.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from resnet_cli.errors import ImageError, NoInputsError, UsageError
from resnet_cli.features import card_path, feature_writer
from resnet_cli.outputs import atomic_dir, check_creatable
from resnet_cli.similarity.records import IndexSummary
from resnet_cli.similarity.vectors import (
    FeatureOptions,
    FeatureSet,
    ModelRecord,
    check_same_model,
    compute_features,
    options_from_record,
    read_feature_file,
    read_record,
)

if TYPE_CHECKING:
    from resnet_cli.inference import RunnerFactory
    from resnet_cli.loaded import FailureHandler
    from resnet_cli.models import ModelOptions

INDEX_FORMAT, INDEX_VERSION = "resnet-index", 1
VECTORS, META = "vectors.npy", "index.json"
COPY_ROWS = 8192


def check_index_output(path: Path, *, overwrite: bool) -> None:
    """Fail before any work when `path` cannot take a new index."""
    from resnet_cli.errors import OutputError

    if path.exists() and not overwrite:
        raise OutputError(f"Output {path} already exists; pass --overwrite to replace it, or "
                          f"--append {path} to add images to it.")
    if path.exists() and not path.is_dir():
        raise OutputError(f"Output {path} is a file, not an index folder.")
    check_creatable(path.parent if str(path.parent) else Path("."))


def load_index(path: Path) -> FeatureSet:
    """An index folder as a FeatureSet.

    Raises:
        UsageError: not an index (or one from a newer resnet).
    """
    meta = _check_is_index(path)
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
        version = int(data["version"])
        if data.get("format") != INDEX_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not an index from resnet index ({exc}).") from None
    if version > INDEX_VERSION:
        raise UsageError(f"{path} was written by a newer resnet (index version {version}); "
                         "upgrade resnet to read it.")
    found = read_feature_file(path / VECTORS)
    if len(found.paths) != int(data["rows"]):
        raise UsageError(f"{path}: {META} promises {data['rows']} rows, the vectors hold "
                         f"{len(found.paths)}; the index is damaged.")
    return found


def build_index(
    inputs: Sequence[str], output: Path, *, options: ModelOptions, features: FeatureOptions,
    append: bool = False, from_file: Path | None = None, overwrite: bool = False,
    progress: bool = True, on_failure: FailureHandler | None = None,
    runner: RunnerFactory | None = None,
) -> IndexSummary:
    """Write the index `output` of `inputs` (or of the rows in `from_file`); with `append`,
    add them to the index at `output`, computing rows only for paths it does not hold.

    Raises:
        UsageError: nothing to index, conflicting model options, rows of another model.
        OutputError: an output in the way; no input could be read.
    """
    old = load_index(output) if append else None
    if old is None:
        check_index_output(output, overwrite=overwrite)
    elif from_file is None:
        options, features = options_from_record(old.record, given=options,
                                                given_features=features, where=str(output))
    new = read_feature_file(from_file) if from_file is not None else None
    if old is not None and new is not None:
        check_same_model(old.record, new.record, ours_name=str(output),
                         theirs_name=str(from_file))
    held = set(old.paths) if old is not None else set()
    if new is None:
        todo = [p for p in dict.fromkeys(inputs) if p not in held]
        if not todo:
            raise NoInputsError(f"Nothing to index: all {len(inputs)} inputs are already in "
                                f"{output}." if inputs else "Nothing to index: no inputs.")
    failed = 0

    def fail(error: ImageError) -> None:
        nonlocal failed
        failed += 1
        if on_failure is not None:
            on_failure(error)

    with atomic_dir(output, overwrite=True) as folder:
        if new is None:
            scratch = folder / "new.npy"
            compute_features(todo, scratch, options=options, features=features,
                             progress=progress, on_failure=fail, runner=runner)
            new = read_feature_file(scratch)
        keep = [i for i, p in enumerate(new.paths) if p not in held]
        rows = _write_rows(folder, old, new, keep)
        with contextlib.suppress(OSError):
            for leftover in folder.glob("new.*"):
                leftover.unlink()
    dim = int(new.vectors.shape[1])
    return IndexSummary(path=str(output), rows=rows, added=len(keep), failed=failed, dim=dim,
                        model=new.record.describe())


def _write_rows(folder: Path, old: FeatureSet | None, new: FeatureSet, keep: list[int]) -> int:
    """Old rows, then the `keep` rows of `new`, into `folder`'s vectors; the record and the
    meta file last. Returns the rows written."""
    import numpy as np

    record: ModelRecord = old.record if old is not None else new.record
    total = (len(old.paths) if old is not None else 0) + len(keep)
    if total == 0:
        raise NoInputsError("Nothing to index: every row is already in the index.")
    dim = int(new.vectors.shape[1])
    vectors = folder / VECTORS
    with feature_writer(vectors, row_shape=(dim,), dtype=np.dtype(np.float32),
                        capacity=total, overwrite=True) as writer:
        if old is not None:
            for start in range(0, len(old.paths), COPY_ROWS):
                writer.add(old.vectors[start:start + COPY_ROWS],
                           old.paths[start:start + COPY_ROWS])
        for start in range(0, len(keep), COPY_ROWS):
            part = keep[start:start + COPY_ROWS]
            writer.add(new.vectors[part], [new.paths[i] for i in part])
    card_path(vectors).write_text(json.dumps(record.to_dict(), indent=2) + "\n",
                                  encoding="utf-8")
    (folder / META).write_text(json.dumps({"format": INDEX_FORMAT, "version": INDEX_VERSION,
                                           "rows": total, "dim": dim}) + "\n",
                               encoding="utf-8")
    return total


def record_of(path: Path) -> ModelRecord:
    """The model record of an index folder (without loading its rows).

    Raises:
        UsageError: not an index.
    """
    _check_is_index(path)
    return read_record(path / VECTORS)


def _check_is_index(path: Path) -> Path:
    meta = path / META
    if not path.is_dir() or not meta.is_file():
        raise UsageError(f"{path}: not an index (no {META}); build one with resnet index.")
    return meta
