"""`resnet extract`: feature vectors (or maps) of images from the ResNet backbone.

Rows are streamed to a feature file (`features.py` holds the format) batch by batch, in input
order; inputs that cannot be read are reported and left out.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from resnet_cli.errors import ImageError, NoInputsError, OutputError, UsageError
from resnet_cli.features import (
    FeatureFile,
    check_feature_output,
    feature_writer,
    index_path,
    write_feature_card,
)
from resnet_cli.images import ResizeMode

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.features import RowWriter
    from resnet_cli.inference import Batch, FeatureSpec, RunnerFactory
    from resnet_cli.loaded import FailureHandler, LoadedModel
    from resnet_cli.models import ModelOptions

log = logging.getLogger(__name__)


class FeatureDType(str, Enum):
    """The float type stored on disk."""

    float32 = "float32"
    float16 = "float16"


@dataclass(frozen=True)
class Shard:
    """Slice `index` (0-based) of `count` contiguous, near-equal slices of the sorted inputs.

    Concatenating the outputs of shards 0..count-1 gives the rows of one run over the sorted
    inputs.
    """

    index: int
    count: int

    def select(self, paths: Sequence[str]) -> list[str]:
        ordered = sorted(paths)
        start = self.index * len(ordered) // self.count
        stop = (self.index + 1) * len(ordered) // self.count
        return ordered[start:stop]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class ExtractSummary:
    """What `extract_features` did."""

    output: FeatureFile
    inputs: int  # inputs attempted (after --shard)
    failed: int
    seconds: float  # from the first batch to the last row written
    source: str
    layer: str  # the backbone layer the features come from

    @property
    def images_per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0


def parse_shard(text: str) -> Shard:
    """Parse `K/N` (0 <= K < N; shards are numbered from 0, like Slurm array and Kubernetes
    indexed-Job indices)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise UsageError(f"Invalid --shard '{text}': use K/N with 0 <= K < N, e.g. 0/4.")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        n = max(count, 1)
        raise UsageError(f"Invalid --shard '{text}': shards are numbered from 0, so K must be "
                         f"0..{n - 1} for N={n} (e.g. 0/{n} .. {n - 1}/{n}).")
    return Shard(index, count)


def extract_features(
    paths: Sequence[str],
    output: Path,
    *,
    options: ModelOptions,
    pooling: str | None = None,
    layer: str | None = None,
    batch_size: int = 32,
    resize: ResizeMode | None = None,
    l2_normalize: bool = False,
    dtype: str = "float32",
    shard: Shard | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_failure: FailureHandler | None = None,
    runner: RunnerFactory | None = None,
) -> ExtractSummary:
    """Load the backbone described by `options` and write features of `paths` to `output`.

    The output is checked before the model is loaded. With several GPUs visible the model is
    built under a `tf.distribute.MirroredStrategy` and every batch is split across them.
    `runner` runs the feature model elsewhere (`cluster.ray_runner`); the model is still
    loaded here, for the rows' shape.

    Raises:
        UsageError: bad options, an existing output without `overwrite`, an empty shard.
        OutputError: no input could be read (nothing is written).
        WeightsError / ModelFileError / DeviceError: from loading the model.
    """
    from resnet_cli.devices import apply_device, multi_gpu_strategy, parse_device
    from resnet_cli.models import load_model, resolve_pooling

    check_feature_output(output, overwrite=overwrite)
    resolve_pooling(pooling, include_top=False)
    out_dtype = FeatureDType(dtype)
    if shard is not None:
        selected = shard.select(paths)
        if not selected:
            raise NoInputsError(f"--shard {shard} selects no inputs: there are {len(paths)} "
                                f"inputs for {shard.count} shards. Use at most {len(paths)} "
                                "shards.")
        paths = selected
    # Fix the visible devices before counting GPUs (counting initialises TensorFlow's runtime).
    apply_device(parse_device(options.device))
    strategy = multi_gpu_strategy()
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        loaded = load_model(replace(options, include_top=False, pooling=None), progress=progress)
        summary = _write_features(
            paths, loaded, output, pooling=pooling, layer=layer, batch_size=batch_size,
            resize=resize, l2_normalize=l2_normalize, dtype=out_dtype, overwrite=overwrite,
            progress=progress, on_failure=on_failure, strategy=strategy, runner=runner,
        )
    write_feature_card(output, feature_record(
        loaded, weights=options.weights, pooling=pooling, layer=summary.layer, resize=resize,
        l2_normalize=l2_normalize, precision=options.precision))
    return summary


FEATURE_RECORD_FORMAT = "resnet-features"


def feature_record(loaded: LoadedModel, *, weights: str, pooling: str | None, layer: str,
                   resize: ResizeMode | None, l2_normalize: bool, precision: str
                   ) -> dict[str, Any]:
    """What made a feature file's rows (written beside it as FILE.card.json): the model card,
    the weights ("imagenet", "none" or a resolved file path) and the feature options, each
    resolved, so an index can refuse rows of another model and recompute rows like them."""
    from resnet_cli.models import resolve_pooling

    kind = weights.strip().lower()
    return {
        "format": FEATURE_RECORD_FORMAT, "version": 1, "card": loaded.card.to_dict(),
        "weights": kind if kind in ("imagenet", "none") else str(Path(weights).resolve()),
        "pooling": resolve_pooling(pooling, include_top=False) or "none", "layer": layer,
        "resize": loaded.resize_or_own(resize).value, "l2_normalize": l2_normalize,
        "precision": precision,
    }


def write_features(
    paths: Sequence[str],
    loaded: LoadedModel,
    output: Path,
    *,
    pooling: str | None = None,
    layer: str | None = None,
    batch_size: int = 32,
    resize: ResizeMode | None = None,
    l2_normalize: bool = False,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    on_failure: FailureHandler | None = None,
    strategy: Any = None,
) -> ExtractSummary:
    """Write the features of `paths` under an already loaded model (rows in input order).

    Failed inputs are passed to `on_failure` and left out of the rows.

    Raises:
        UsageError: a bad pooling or layer name, an existing output without `overwrite`.
        OutputError: no input could be read (nothing is written).
    """
    check_feature_output(output, overwrite=overwrite)
    return _write_features(
        paths, loaded, output, pooling=pooling, layer=layer, batch_size=batch_size,
        resize=resize, l2_normalize=l2_normalize, dtype=FeatureDType(dtype),
        overwrite=overwrite, progress=progress, on_failure=on_failure, strategy=strategy,
    )


def _write_features(
    paths: Sequence[str],
    loaded: LoadedModel,
    output: Path,
    *,
    pooling: str | None,
    layer: str | None,
    batch_size: int,
    resize: ResizeMode | None,
    l2_normalize: bool,
    dtype: FeatureDType,
    overwrite: bool,
    progress: bool,
    on_failure: FailureHandler | None,
    strategy: Any,
    runner: RunnerFactory | None = None,
) -> ExtractSummary:
    """`write_features` for an output that the caller has already checked."""
    import numpy as np

    from resnet_cli.inference import predict_paths

    out_dtype = np.dtype(dtype.value)
    plan = resolve_features(loaded, pooling=pooling, layer=layer)
    resize = loaded.resize_or_own(resize)  # resolved here, for whichever path runs it
    row_shape = plan.row_shape
    failed = 0

    def fail(error: ImageError) -> None:
        nonlocal failed
        failed += 1
        if on_failure is not None:
            on_failure(error)

    todo = _listable(paths, fail)
    started = time.perf_counter()
    run = runner(loaded, features=plan.spec) if runner else functools.partial(
        predict_paths, loaded=loaded, model=plan.model, strategy=strategy)
    batches = cast("Generator[Batch, None, None]", run(
        todo, batch_size=batch_size, resize=resize, progress=progress, on_failure=fail,
        desc="extract"))
    with feature_writer(output, row_shape=row_shape, dtype=out_dtype, capacity=len(todo),
                        overwrite=overwrite) as writer, contextlib.closing(batches):
        _write_rows(batches, writer, l2_normalize=l2_normalize)
        if writer.rows == 0:
            raise OutputError(f"No features written: none of the {len(paths)} inputs could be "
                              f"read, so {output} was not created.")
        rows_written = writer.rows
    seconds = time.perf_counter() - started
    return ExtractSummary(
        output=FeatureFile(path=output, index=index_path(output), rows=rows_written,
                           row_shape=row_shape, dtype=out_dtype.name),
        inputs=len(paths), failed=failed, seconds=seconds, source=loaded.source,
        layer=plan.layer_name,
    )


@dataclass(frozen=True)
class FeaturePlan:
    """`--pooling` and `--layer` resolved for one loaded model: what every path computes."""

    spec: FeatureSpec
    row_shape: tuple[int, ...]
    layer_name: str  # what the rows are, for the summary line
    model: Any  # the Keras feature model to run here; None for an exported backbone


def resolve_features(loaded: LoadedModel, *, pooling: str | None, layer: str | None
                     ) -> FeaturePlan:
    """The one rule for extract's rows: an exported backbone's own features, else the
    backbone's `layer` (default: the last conv stage) pooled as `pooling` says (default avg).

    Raises:
        UsageError: a bad pooling or layer, or one an exported file cannot honour.
    """
    from resnet_cli.backbones import build_feature_model, feature_layer
    from resnet_cli.graph import find_backbone
    from resnet_cli.inference import FeatureSpec
    from resnet_cli.models import resolve_pooling

    if loaded.exported is not None:
        from resnet_cli.runtimes import exported_features

        row_shape, layer_name = exported_features(loaded, pooling=pooling, layer=layer)
        return FeaturePlan(FeatureSpec(loaded.card.pooling or "none"), row_shape, layer_name,
                           None)
    spec = FeatureSpec(resolve_pooling(pooling, include_top=False) or "none", layer)
    model = build_feature_model(loaded, pooling=spec.pooling, layer=layer)
    return FeaturePlan(spec, tuple(int(d) for d in model.output_shape[1:]),
                       str(feature_layer(find_backbone(loaded.model), layer).name), model)


def _listable(paths: Sequence[str], fail: FailureHandler) -> list[str]:
    """The paths that fit on one line of the row index; the others go to `fail`."""
    todo: list[str] = []
    for path in paths:
        if "\n" in path or "\r" in path:
            fail(ImageError(path, "file name contains a line break; it cannot be listed in "
                                  "the row index"))
        else:
            todo.append(path)
    return todo


def _write_rows(batches: Iterable[Batch], writer: RowWriter, *, l2_normalize: bool) -> None:
    """Each batch's rows (normalised, in the writer's dtype) with their paths, in order."""
    import numpy as np

    warned_overflow = False
    for batch in batches:
        if not batch.ok:
            continue
        rows = _l2_normalize(batch.outputs) if l2_normalize else batch.outputs
        rows = rows.astype(writer.dtype, copy=False)
        if writer.dtype == np.float16 and not warned_overflow and np.isinf(rows).any():
            warned_overflow = True
            log.warning("some features are too large for float16 and became inf; "
                        "use --dtype float32 or --l2-normalize")
        writer.add(rows, [batch.paths[i] for i in batch.ok])


def _l2_normalize(rows: np.ndarray) -> np.ndarray:
    import numpy as np

    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    normalized: np.ndarray = rows / np.maximum(norms, np.finfo(np.float32).tiny)
    return normalized
