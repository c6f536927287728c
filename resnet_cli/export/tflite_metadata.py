"""The standard TFLite model metadata of a LiteRT export, for MediaPipe Tasks and Android's
Task Library: what the input image is, and for a classifier the class names as the associated
file `labels.txt`, so `mediapipe.tasks.python.vision.ImageClassifier` names its categories.

The metadata is built with MediaPipe's own metadata classes (`metadata_info`, the generated
`metadata_schema` flatbuffer classes). MediaPipe's `MetadataWriter.populate()` would also
pack it, but from MediaPipe 0.10.30 on it cannot be imported (it needs a native module the
wheels no longer ship), and the older wheels that have it pin protobuf < 5 and numpy < 2,
which TensorFlow 2.21 cannot use. So the last two steps of populating are done here: the
metadata goes into the model's `TFLITE_METADATA` entry (beside our own card, by
`litert.add_metadata`) and `labels.txt` is appended as an uncompressed zip archive, as the
populator does.

The input is raw uint8 RGB (the preprocessing is inside the graph): the normalization written
is the identity (mean 0, std 1).
MediaPipe resizes the whole image (or a region of interest) to the input size: that is
`--resize squash`; for a model trained with `crop`, the input's description says which region
to pass.
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass
from typing import Any

from resnet_cli.card import ModelCard
from resnet_cli.errors import ModelFileError
from resnet_cli.images import ResizeMode

log = logging.getLogger(__name__)

METADATA_NAME = "TFLITE_METADATA"  # the entry MediaPipe and the Task Library read
LABEL_FILE = "labels.txt"
# The lowest metadata parser that reads what is written here: the image, normalization,
# statistics and TENSOR_AXIS_LABELS file fields are all in the schema's first version.
MIN_PARSER_VERSION = "1.0.0"
_IDENTIFIER = b"M001"  # the metadata flatbuffer's file identifier


@dataclass(frozen=True)
class StandardMetadata:
    """The `TFLITE_METADATA` entry's bytes and the files to append after the model."""

    metadata: bytes
    files: dict[str, bytes]


def build_standard_metadata(flat: bytes, card: ModelCard) -> StandardMetadata | None:
    """The standard metadata of the converted model `flat`, described by `card`; None (with
    a warning naming the extra) when MediaPipe is not installed.

    Raises:
        ModelFileError: the model is not one uint8 image in, one tensor out; a class name
            has a line break (the label file has one name per line).
    """
    modules = _mediapipe_metadata()
    if modules is None:
        log.warning("no standard TFLite metadata written (MediaPipe and Android's Task "
                    "Library would not see the class names): pip install 'resnet-cli[mediapipe]'")
        return None
    info, schema, utils = modules
    if len(utils.get_input_tensor_types(flat)) != 1 or \
            len(utils.get_output_tensor_types(flat)) != 1:
        raise ModelFileError("The converted model does not have one input and one output.")
    size = card.image_size
    region = ("the whole image" if card.resize is ResizeMode.squash else
              "the centre square of 0.875 x the shorter side (pass it as the region of "
              "interest)")
    image = info.InputImageTensorMd(
        name="image", description=f"RGB pixels as read (0-255), {region} resized to "
        f"{size}x{size}; the preprocessing is inside the model.", norm_mean=[0.0],
        norm_std=[1.0], color_space_type=schema.ColorSpaceType.RGB,
        tensor_type=utils.get_input_tensor_types(flat)[0])
    names = _class_names(card)
    files = {}
    if names is None:
        output = info.TensorMd(name="features", description="float32 features.")
    else:
        files[LABEL_FILE] = "\n".join(names).encode()
        output = info.ClassificationTensorMd(
            name="probability", description=f"Probabilities of the {len(names)} classes.",
            label_files=[info.LabelFileMd(LABEL_FILE)],
            tensor_type=utils.get_output_tensor_types(flat)[0])
    subgraph = schema.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image.create_metadata()]
    subgraph.outputTensorMetadata = [output.create_metadata()]
    kind = "classifier" if names is not None else "feature extractor"
    model = info.GeneralMd(
        name=f"{card.base_model} {kind}",
        description=f"{card.base_model} {kind} ({card.precision}), exported by resnet-cli "
        f"from {card.source}.").create_metadata()
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION
    import flatbuffers

    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), _IDENTIFIER)
    return StandardMetadata(metadata=bytes(builder.Output()), files=files)


def append_associated_files(flat: bytes, files: dict[str, bytes]) -> bytes:
    """`flat` followed by a zip archive of `files`, uncompressed (what the metadata readers
    take; the flatbuffer ahead of the archive is left as it was)."""
    if not files:
        return flat
    buffer = io.BytesIO(flat)
    buffer.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():  # a fixed date: the same model, the same bytes
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def _class_names(card: ModelCard) -> list[str] | None:
    if not card.include_top:
        return None  # a backbone: features out
    if card.imagenet_labels:
        from resnet_cli.labels import load_imagenet_labels

        names = [label.name for label in load_imagenet_labels()]
    else:
        names = list(card.class_names)
    for name in names:
        if "\n" in name or "\r" in name:
            raise ModelFileError(f"Class name {name!r} has a line break; the label file of "
                                 "the TFLite metadata has one name per line.")
    return names


def _mediapipe_metadata() -> tuple[Any, Any, Any] | None:
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated as schema
        from mediapipe.tasks.python.metadata.metadata_writers import metadata_info as info
        from mediapipe.tasks.python.metadata.metadata_writers import writer_utils as utils
    except ImportError:
        return None
    return info, schema, utils
