"""Runtimes for files written by `resnet export`, behind the inference path's predictor
interface (`inference.BatchPredictor`): uint8 batches in, float32 rows out.

`litert` runs .tflite files on the `ai-edge-litert` interpreter, `onnx` runs .onnx files on
onnxruntime, `openvino` runs OpenVINO IR (.xml + .bin) on OpenVINO's CPU plugin. Each reads
the file's card, so a command needs only the file; `load_exported` picks the runtime by
suffix. This package reads exported files; `export` writes them, and
sits above it.
"""

from __future__ import annotations

from pathlib import Path

from resnet_cli.errors import ModelFileError, UsageError
from resnet_cli.loaded import ExportedModel, LoadedModel

RUNTIMES = {".tflite": "litert", ".onnx": "onnx", ".xml": "openvino"}


def exported_runtime(weights: str) -> str | None:
    """The runtime that runs the `--weights` value `weights` ("litert", "onnx", "openvino"),
    or None for anything that is not an exported file."""
    return RUNTIMES.get(Path(weights.strip()).suffix.lower())


def exported_files(path: Path) -> list[Path]:
    """Every file the exported model at `path` consists of (an OpenVINO IR's `.bin` beside its
    `.xml`), `path` first: what must travel with it."""
    return [path, path.with_suffix(".bin")] if exported_runtime(str(path)) == "openvino" \
        else [path]


def load_exported(path: Path, *, precision: str = "fp32") -> LoadedModel:
    """The exported file at `path`, open in its runtime, as a LoadedModel.

    Args:
        precision: `--precision`; only OpenVINO takes another than fp32 (see
            `runtimes.openvino`).

    Raises:
        ModelFileError: not a file of that format, or one without a resnet card.
    """
    from resnet_cli.labels import build_labels, load_imagenet_labels

    runtime = exported_runtime(str(path))
    exported: ExportedModel
    if runtime == "litert":
        from resnet_cli.runtimes.litert import load_litert

        exported = load_litert(path)
    elif runtime == "onnx":
        from resnet_cli.runtimes.onnx import load_onnx

        exported = load_onnx(path)
    elif runtime == "openvino":
        from resnet_cli.runtimes.openvino import load_openvino

        exported = load_openvino(path, precision=precision)
    else:
        raise ModelFileError(f"{path}: not an exported model (.tflite, .onnx or .xml).")
    card = exported.card
    spec = card.spec(where=str(path))
    if not card.include_top:
        labels = None
    elif card.imagenet_labels:
        labels = load_imagenet_labels()
    else:
        labels = build_labels(list(card.class_names))
    return LoadedModel(spec=spec, card=card, labels=labels, source=str(path), exported=exported)


def exported_features(loaded: LoadedModel, *, pooling: str | None, layer: str | None
                      ) -> tuple[tuple[int, ...], str]:
    """(row shape, what the rows are) for `resnet extract` on an exported backbone: the file's
    own outputs.

    Raises:
        UsageError: --layer (an exported file has no layers to choose from), a --pooling
            other than the file's, or the file is a classifier.
    """
    card = loaded.card
    if layer is not None:
        raise UsageError(f"--layer does not apply to {loaded.source}: an exported file "
                         "computes only its own features. Export the model again, or use the "
                         "Keras model.")
    if card.include_top:
        raise UsageError(f"{loaded.source} is a classifier; extract needs a backbone export "
                         "(resnet export --no-include-top --pooling avg).")
    if pooling is not None and (None if pooling == "none" else pooling) != card.pooling:
        own = f"{card.pooling}-pooled" if card.pooling else "unpooled (h, w, C)"
        raise UsageError(f"{loaded.source} computes {own} features; drop --pooling, or "
                         f"export the model again with --pooling {pooling}.")
    return tuple(card.output_shape), f"exported {card.pooling or 'unpooled'} features"
