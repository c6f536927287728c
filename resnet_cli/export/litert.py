"""LiteRT (.tflite): float32, or full-integer int8 calibrated on the user's own images.

The converter is TensorFlow's (`tf.lite.TFLiteConverter`, from the served model's concrete
function): on TensorFlow 2.21 it still converts and quantizes Keras models, and its
full-integer output runs on the XNNPACK int8 kernels of the `ai-edge-litert` runtime. With
`int8`, weights are int8 per output channel and activations int8 per tensor, calibrated on a
random sample of the given images read exactly as every command reads them; the input stays
uint8 pixels (a cast inside the graph) and the output float32. The card is stored as the
model's metadata entry `resnet_cli_card`, where `runtimes.litert` reads it back; beside it
goes the standard TFLite model metadata (`tflite_metadata`) that MediaPipe Tasks read, when
MediaPipe is installed (`pip install 'resnet-cli[mediapipe]'`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from resnet_cli.card import CARD_KEY, ModelCard
from resnet_cli.errors import ModelFileError, NoInputsError
from resnet_cli.export.calibration import (
    DEFAULT_CALIBRATION_IMAGES,
    calibration_sample,
    iter_calibration_images,
)

log = logging.getLogger(__name__)

def write_litert(served: Any, card: ModelCard, path: Path, *, int8: bool = False,
                 calibration: Sequence[str] = (), calibration_images: int =
                 DEFAULT_CALIBRATION_IMAGES, progress: bool = True,
                 on_failure: Callable[[Any], None] | None = None) -> None:
    """Convert `served` (uint8 images in) to LiteRT and write it, with `card`, to `path`.

    Raises:
        NoInputsError: `int8` without any readable calibration image.
        ModelFileError: the converter failed.
    """
    import tempfile

    import tensorflow as tf

    from resnet_cli.export.saved_model import write_saved_model

    with tempfile.TemporaryDirectory(prefix="resnet-litert-") as folder:
        # The converter's Keras 3 route: a SavedModel first (variables become constants).
        write_saved_model(served, card, Path(folder) / "saved_model")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(folder) / "saved_model"))
        flat = _convert(converter, card, int8=int8, calibration=calibration,
                        calibration_images=calibration_images, progress=progress,
                        on_failure=on_failure)
    # Our card, and beside it the standard TFLite metadata (MediaPipe, Android's Task Library).
    from resnet_cli.export import tflite_metadata

    standard = tflite_metadata.build_standard_metadata(flat, card)
    entries = {CARD_KEY: card.to_json().encode()}
    if standard is not None:
        entries[tflite_metadata.METADATA_NAME] = standard.metadata
    flat = add_metadata(flat, entries)
    path.write_bytes(tflite_metadata.append_associated_files(
        flat, standard.files if standard is not None else {}))


def _convert(converter: Any, card: ModelCard, *, int8: bool, calibration: Sequence[str],
             calibration_images: int, progress: bool,
             on_failure: Callable[[Any], None] | None) -> bytes:
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if int8:
        samples = calibration_sample(calibration, calibration_images)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [image] for image in iter_calibration_images(
                samples, size=card.image_size, resize=card.resize, progress=progress,
                on_failure=on_failure))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    from resnet_cli.devices import native_stderr_to_log

    try:
        with native_stderr_to_log():  # the converter prints its settings on fd 2
            return bytes(converter.convert())
    except NoInputsError:
        raise
    except Exception as exc:  # the converter raises ConverterError, RuntimeError, ...
        from resnet_cli.errors import first_line

        raise ModelFileError(f"LiteRT conversion failed: {first_line(exc)}") from exc


def add_metadata(flat: bytes, entries: dict[str, bytes]) -> bytes:
    """`flat` (a .tflite flatbuffer) with `entries` added to its metadata."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flat))
    import numpy as np

    for name, data in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(data, dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
