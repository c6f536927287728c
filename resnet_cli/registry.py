"""The ResNet variants as data: one row per model, no TensorFlow import.

Every command reads model facts from here, so a variant is always paired with its
own preprocessing, default input size and published weights.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

from resnet_cli.errors import UnknownModelError

WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"


@dataclass(frozen=True)
class ModelSpec:
    """What the tool knows about one ResNet variant.

    Attributes:
        name: lowercase Keras name, e.g. "resnet50".
        constructor: attribute of `keras.applications` that builds it.
        preprocess_mode: mode of `keras.applications.imagenet_utils.preprocess_input`:
            "caffe" (RGB->BGR, ImageNet mean subtracted) for V1, "tf" (x/127.5 - 1) for V2.
        blocks: residual blocks in stages conv2_x..conv5_x.
        top_md5 / notop_md5: published md5 of the ImageNet weight files.
        top1 / top5: ImageNet accuracy published in Keras' documentation.
    """

    name: str
    constructor: str
    preprocess_mode: str
    blocks: tuple[int, int, int, int]
    top_md5: str
    notop_md5: str
    top1: float
    top5: float
    default_size: int = 224
    min_size: int = 32
    num_classes: int = 1000


@dataclass(frozen=True)
class WeightsFile:
    """A published weights file: its cache name, download address and md5."""

    filename: str
    url: str
    md5: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("resnet50", "ResNet50", "caffe", (3, 4, 6, 3),
                  "2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626",
                  0.749, 0.921),
        ModelSpec("resnet101", "ResNet101", "caffe", (3, 4, 23, 3),
                  "f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21",
                  0.764, 0.928),
        ModelSpec("resnet152", "ResNet152", "caffe", (3, 8, 36, 3),
                  "100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c",
                  0.766, 0.931),
        ModelSpec("resnet50v2", "ResNet50V2", "tf", (3, 4, 6, 3),
                  "3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917",
                  0.760, 0.930),
        ModelSpec("resnet101v2", "ResNet101V2", "tf", (3, 4, 23, 3),
                  "6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5",
                  0.772, 0.938),
        ModelSpec("resnet152v2", "ResNet152V2", "tf", (3, 8, 36, 3),
                  "a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33",
                  0.780, 0.942),
    )
}  # fmt: skip

MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
DEFAULT_MODEL = "resnet50"


def get_spec(name: str) -> ModelSpec:
    """Return the registry row for `name` (case-insensitive), or raise with the choices."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key in MODELS:
        return MODELS[key]
    close = difflib.get_close_matches(key, MODEL_NAMES, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UnknownModelError(
        f"Unknown model '{name}'.{hint} Choose one of: {', '.join(MODEL_NAMES)}."
    )


def imagenet_weights_file(spec: ModelSpec, *, include_top: bool) -> WeightsFile:
    """The published ImageNet weights file for `spec`, with or without the classifier.

    `RESNET_WEIGHTS_URL` replaces the download address's folder (a mirror inside a firewall).
    """
    suffix = "" if include_top else "_notop"
    filename = f"{spec.name}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"
    base = os.environ.get("RESNET_WEIGHTS_URL") or WEIGHTS_BASE_URL
    return WeightsFile(
        filename=filename,
        url=base.rstrip("/") + "/" + filename,
        md5=spec.top_md5 if include_top else spec.notop_md5,
    )
