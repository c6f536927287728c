"""Feature sets: L2-normalised rows, their paths and the record of the model behind them.

Rows are always computed by extract's pipeline (`extract.extract_features`, with its remote
inputs, `--ray` and failure lines), written to a feature file with its `.card.json` beside, and
read back here with `allow_pickle=False`. The model record decides how new rows can be made to
match old ones: a search or an `--append` takes the model, weights, size, pooling, layer and
resize from it, and a conflicting option is a usage error.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_cli.card import ModelCard
from resnet_cli.errors import UsageError
from resnet_cli.features import INDEX_SUFFIX, NPY, NPZ, card_path
from resnet_cli.images import ResizeMode

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.inference import RunnerFactory
    from resnet_cli.loaded import FailureHandler
    from resnet_cli.models import ModelOptions


@dataclass(frozen=True)
class ModelRecord:
    """What made a set of feature rows (extract's `FILE.card.json`)."""

    card: ModelCard
    weights: str  # "imagenet", "none" (random: never reproducible) or a resolved file path
    pooling: str
    layer: str
    resize: ResizeMode
    precision: str = "fp32"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str) -> ModelRecord:
        """Read a record written by `extract.feature_record`.

        Raises:
            UsageError: not such a record.
        """
        try:
            return cls(card=ModelCard.from_dict(data["card"], where=where),
                       weights=str(data["weights"]), pooling=str(data["pooling"]),
                       layer=str(data["layer"]), resize=ResizeMode(str(data["resize"])),
                       precision=str(data.get("precision", "fp32")))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{where} is not a feature card from resnet extract ({exc}).") \
                from None

    def to_dict(self) -> dict[str, Any]:
        return {"format": "resnet-features", "version": 1, "card": self.card.to_dict(),
                "weights": self.weights, "pooling": self.pooling, "layer": self.layer,
                "resize": self.resize.value, "l2_normalize": True,
                "precision": self.precision}

    @property
    def identity(self) -> tuple[Any, ...]:
        """What must be equal for two sets of rows to be comparable."""
        c = self.card
        return (c.base_model, c.image_size, c.preprocess_mode, c.format, self.weights,
                self.pooling, self.layer, self.resize)

    @property
    def reproducible(self) -> bool:
        """Whether rows for new images can be made to match: not with random weights."""
        return self.weights != "none"

    def describe(self) -> str:
        weights = {"imagenet": "ImageNet weights", "none": "random weights"}.get(
            self.weights, self.weights)
        return (f"{self.card.base_model} ({weights}) at {self.card.image_size} px, "
                f"{self.pooling} pooling of {self.layer}, resize {self.resize.value}")


def check_same_model(ours: ModelRecord, theirs: ModelRecord, *, ours_name: str,
                     theirs_name: str) -> None:
    """Refuse rows of another model, or of random weights (which differ on every run).

    Raises:
        UsageError: the records differ, or both are random.
    """
    if ours.identity != theirs.identity:
        raise UsageError(f"{theirs_name} holds features of {theirs.describe()}, but "
                         f"{ours_name} holds {ours.describe()}; their features cannot be "
                         "compared.")
    if not ours.reproducible:
        raise UsageError(f"{ours_name} was built with --weights none: random weights differ "
                         "on every run, so no other features compare with its rows. Build it "
                         "with imagenet weights or a weights file.")


@dataclass
class FeatureSet:
    """Rows (float32, unit length), their paths, and the model record."""

    vectors: np.ndarray
    paths: list[str]
    record: ModelRecord


def read_record(features: Path) -> ModelRecord:
    """The model record beside a feature file.

    Raises:
        UsageError: it is missing or unreadable.
    """
    path = card_path(features)
    if not path.is_file():
        raise UsageError(f"{features}: no {path.name} beside it, so the model behind its rows "
                         "is unknown; re-run resnet extract (it writes one).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not readable as JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a feature card from resnet extract.")
    return ModelRecord.from_dict(data, where=str(path))


def read_feature_file(path: Path) -> FeatureSet:
    """A feature file from `resnet extract` (.npy with .paths.txt beside, or .npz) and its
    record, rows scaled to unit length. Loaded with allow_pickle=False.

    Raises:
        UsageError: missing, not a feature file, rows that are not vectors, no record.
    """
    import numpy as np

    suffix = path.suffix.lower()
    if suffix not in (NPY, NPZ):
        raise UsageError(f"--from {path}: give a .npy or .npz feature file from resnet extract.")
    if not path.is_file():
        raise UsageError(f"--from {path}: no such file.")
    record = read_record(path)
    try:
        if suffix == NPY:
            rows = np.load(path, allow_pickle=False, mmap_mode="r")
            names = path.with_suffix(INDEX_SUFFIX).read_text(encoding="utf-8",
                                                             errors="surrogateescape")
            paths = names.split("\n")[:-1] if names else []
        else:
            with np.load(path, allow_pickle=False) as archive:
                rows, paths = archive["features"], [str(p) for p in archive["paths"]]
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"--from {path}: not a feature file from resnet extract ({exc}).") \
            from None
    if rows.ndim != 2:
        raise UsageError(f"--from {path}: rows of shape {rows.shape[1:]}; index vectors "
                         "(extract with --pooling avg or max).")
    if len(rows) != len(paths):
        raise UsageError(f"--from {path}: {len(rows)} rows but {len(paths)} paths.")
    return FeatureSet(normalized(rows), paths, record)


def normalized(rows: Any, block: int = 65536) -> np.ndarray:
    """Rows as float32 C-ordered unit vectors (block by block: memory stays at one copy)."""
    import numpy as np

    out = np.empty(rows.shape, dtype=np.float32)
    for start in range(0, len(rows), block):
        part = np.asarray(rows[start:start + block], dtype=np.float32)
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        out[start:start + block] = part / np.maximum(norms, np.finfo(np.float32).tiny)
    return out


@dataclass(frozen=True)
class FeatureOptions:
    """The feature options beside the model options (None: the model's default)."""

    pooling: str | None = None
    layer: str | None = None
    resize: ResizeMode | None = None
    batch_size: int = 32


def compute_features(paths: Sequence[str], output: Path, *, options: ModelOptions,
                     features: FeatureOptions, progress: bool = True,
                     on_failure: FailureHandler | None = None,
                     runner: RunnerFactory | None = None) -> int:
    """Rows of `paths` through extract's pipeline, unit length, into the feature file
    `output` (with its `.card.json`); returns the rows written.

    Raises:
        OutputError: no input could be read. Model errors as `extract_features`.
    """
    from resnet_cli.extract import extract_features

    if features.pooling == "none":
        raise UsageError("--pooling none gives feature maps; similarity needs vectors "
                         "(--pooling avg or max).")
    summary = extract_features(
        paths, output, options=options, pooling=features.pooling, layer=features.layer,
        batch_size=features.batch_size, resize=features.resize, l2_normalize=True,
        overwrite=True, progress=progress, on_failure=on_failure, runner=runner)
    return summary.output.rows


def embed(paths: Sequence[str], *, options: ModelOptions, features: FeatureOptions,
          progress: bool = True, on_failure: FailureHandler | None = None,
          runner: RunnerFactory | None = None) -> FeatureSet:
    """`compute_features` into a scratch folder, read back as a FeatureSet."""
    with tempfile.TemporaryDirectory(prefix="resnet-features-") as scratch:
        output = Path(scratch) / "features.npy"
        compute_features(paths, output, options=options, features=features,
                         progress=progress, on_failure=on_failure, runner=runner)
        return read_feature_file(output)


def options_from_record(record: ModelRecord, *, given: ModelOptions, given_features:
                        FeatureOptions, where: str) -> tuple[ModelOptions, FeatureOptions]:
    """The model and feature options that reproduce `record`'s rows; options the user gave
    (`given`, with None/"" for "not given") must agree with it.

    Raises:
        UsageError: a conflicting option, or random weights.
    """
    from dataclasses import replace

    wanted = {"model": record.card.base_model, "weights": record.weights,
              "image_size": record.card.image_size}
    for name, value in wanted.items():
        asked = getattr(given, name)
        if name == "weights" and asked and asked.lower() not in ("imagenet", "none"):
            asked = str(Path(asked).resolve())
        if asked not in (None, "") and str(asked).lower() != str(value).lower():
            raise UsageError(f"--{name.replace('_', '-')} {getattr(given, name)} conflicts "
                             f"with {where}, built with {record.describe()}; its card decides "
                             f"the model: drop --{name.replace('_', '-')}.")
    for name, value in (("pooling", record.pooling), ("layer", record.layer),
                        ("resize", record.resize)):
        asked = getattr(given_features, name)
        if asked is not None and str(asked) != str(value) and \
                getattr(asked, "value", asked) != getattr(value, "value", value):
            raise UsageError(f"--{name} {getattr(asked, 'value', asked)} conflicts with "
                             f"{where}, built with {record.describe()}; drop --{name}.")
    if not record.reproducible:
        raise UsageError(f"{where} was built with --weights none: random weights differ on "
                         "every run, so new images cannot get comparable features. Build it "
                         "with imagenet weights or a weights file.")
    options = replace(given, model=record.card.base_model, weights=record.weights,
                      image_size=record.card.image_size, precision=record.precision)
    return options, replace(given_features, pooling=record.pooling, layer=record.layer,
                            resize=record.resize)


__all__ = ["FeatureOptions", "FeatureSet", "ModelRecord", "check_same_model",
           "compute_features", "embed", "options_from_record", "read_feature_file",
           "read_record"]
