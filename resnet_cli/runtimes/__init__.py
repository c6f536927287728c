"""Runtimes for files written by `resnet export`, behind the inference path's predictor
interface (`inference.BatchPredictor`): uint8 batches in, float32 rows out.

`litert` runs .tflite files on the `ai-edge-litert` interpreter, `onnx` runs .onnx files on
onnxruntime. Each reads the file's card, so a command needs only the file; `load_exported`
picks the runtime by suffix.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_cli.errors import ModelFileError, UsageError

if TYPE_CHECKING:
    from resnet_cli.export.common import ExportCard
    from resnet_cli.inference import BatchPredictor
    from resnet_cli.models import LoadedModel

RUNTIMES = {".tflite": "litert", ".onnx": "onnx"}


def exported_runtime(weights: str) -> str | None:
    """The runtime that runs the `--weights` value `weights` ("litert", "onnx"), or None for
    anything that is not an exported file."""
    return RUNTIMES.get(Path(weights.strip()).suffix.lower())


def load_exported(path: Path, *, image_size: int | None = None) -> LoadedModel:
    """The exported file at `path` as a LoadedModel whose `model` is the runtime's handle.

    Raises:
        UsageError: `image_size` given and not the file's input size.
        ModelFileError: not a file of that format, or one without a resnet card.
    """
    runtime = exported_runtime(str(path))
    if runtime == "litert":
        from resnet_cli.runtimes.litert import load_litert

        handle: Any = load_litert(path)
    elif runtime == "onnx":
        from resnet_cli.runtimes.onnx import load_onnx

        handle = load_onnx(path)
    else:
        raise ModelFileError(f"{path}: not an exported model (.tflite or .onnx).")
    card: ExportCard = handle.card
    if image_size is not None and image_size != card.image_size:
        raise UsageError(f"{path} takes {card.image_size}x{card.image_size} input; got "
                         f"--image-size {image_size}. Drop --image-size.")
    return _loaded(path, handle, card, runtime)


def _loaded(path: Path, handle: Any, card: ExportCard, runtime: str) -> LoadedModel:
    from resnet_cli.cards import ModelCard
    from resnet_cli.labels import build_labels, load_imagenet_labels
    from resnet_cli.models import LoadedModel
    from resnet_cli.registry import get_spec

    try:
        spec = get_spec(card.base_model)
    except UsageError as exc:
        raise ModelFileError(f"{path}: its card names an unknown model: {exc}") from exc
    if card.imagenet_labels:
        labels = load_imagenet_labels()
    elif card.class_names is not None:
        labels = build_labels(list(card.class_names))
    else:
        labels = None
    model_card = ModelCard(
        base_model=spec.name, image_size=card.image_size, preprocess_mode=card.preprocess_mode,
        class_names=list(card.class_names or ()),
        extra={"resize": card.resize, "precision": card.precision, "format": runtime,
               "include_top": card.include_top, "pooling": card.pooling})
    return LoadedModel(model=handle, spec=spec, image_size=card.image_size,
                       preprocess_mode=card.preprocess_mode, labels=labels, source=str(path),
                       device="/CPU:0", card=model_card, runtime=runtime)


def make_runtime_predictor(loaded: LoadedModel, batch_size: int) -> BatchPredictor:
    """The predictor of an exported model (`loaded.runtime` is not "keras")."""
    if loaded.runtime == "litert":
        from resnet_cli.runtimes.litert import LiteRTPredictor

        return LiteRTPredictor(loaded, batch_size)
    if loaded.runtime == "onnx":
        from resnet_cli.runtimes.onnx import OnnxPredictor

        return OnnxPredictor(loaded, batch_size)
    raise ModelFileError(f"{loaded.source}: no runtime '{loaded.runtime}'.")


def runtime_threads() -> int:
    """Threads a runtime computes with: every core this process may use."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def exported_features(loaded: LoadedModel, *, pooling: str | None, layer: str | None
                      ) -> tuple[tuple[int, ...], str]:
    """(row shape, what the rows are) for `resnet extract` on an exported backbone: the file's
    own outputs. A different --pooling is noted and the file's is kept.

    Raises:
        UsageError: --layer (an exported file has no layers to choose from), or the file is
            a classifier.
    """
    import logging

    card = loaded.model.card
    if layer is not None:
        raise UsageError(f"--layer does not apply to {loaded.source}: an exported file "
                         "computes only its own features. Export the model again, or use the "
                         "Keras model.")
    if card.include_top:
        raise UsageError(f"{loaded.source} is a classifier; extract needs a backbone export "
                         "(resnet export --no-include-top --pooling avg).")
    asked = None if pooling in (None, "none") else pooling
    if asked != card.pooling:
        logging.getLogger(__name__).warning(
            "%s computes %s features; --pooling %s is ignored.", loaded.source,
            f"{card.pooling}-pooled" if card.pooling else "unpooled (h, w, C)", pooling)
    return tuple(card.output_shape), f"exported {card.pooling or 'unpooled'} features"
