"""What every export format shares: the served model (uint8 images in, probabilities or
features out, preprocessing inside) and its card (the facts another command needs to use the
file alone).

The served model is the inference copy of the network with its BatchNormalization folded into
the convolutions (`folding.fold_batch_norm`). For ResNet v1 ("caffe" preprocessing: RGB to
BGR, then the ImageNet mean subtracted) the channel flip is folded into the first
convolution's kernel as well, so the file's graph is: cast to float, subtract the mean (in RGB
order), the network. The outputs are the same numbers; in a full-integer LiteRT graph a channel
reversal is a slow gather, and this way there is none.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from resnet_cli.errors import ModelFileError, UsageError

if TYPE_CHECKING:
    from resnet_cli.models import LoadedModel, ModelOptions

log = logging.getLogger(__name__)

CARD_KEY = "resnet_cli_export"  # metadata key (ONNX, LiteRT) and asset name (SavedModel)
CARD_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAME = "outputs"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, mode="caffe"


@dataclass(frozen=True)
class ExportCard:
    """What a file exported by `resnet export` carries about itself.

    Attributes:
        base_model: the registry variant (resnet50, ...).
        class_names: the classifier's classes; None for a backbone; ["imagenet"]-style lists
            are not used: ImageNet models say `imagenet_labels=True` instead of 1000 names.
        pooling: for a backbone: "avg", "max", or None (the (h, w, C) map).
        resize: how images are brought to size (crop or squash), as the model was trained.
        precision: "float32" or "int8".
    """

    base_model: str
    image_size: int
    include_top: bool
    pooling: str | None
    class_names: tuple[str, ...] | None
    imagenet_labels: bool
    resize: str
    precision: str
    preprocess_mode: str  # what the graph does inside (informative: the input is raw uint8)
    source: str
    output_shape: tuple[int, ...]  # one row, without the batch axis

    def to_json(self) -> str:
        """The card as one JSON object (what goes into the file)."""
        return json.dumps({
            "format_version": CARD_VERSION, "base_model": self.base_model,
            "image_size": self.image_size, "include_top": self.include_top,
            "pooling": self.pooling,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "imagenet_labels": self.imagenet_labels, "resize": self.resize,
            "precision": self.precision, "preprocess_mode": self.preprocess_mode,
            "input": {"name": INPUT_NAME, "dtype": "uint8",
                      "shape": [None, self.image_size, self.image_size, 3], "channels": "RGB"},
            "output": {"name": OUTPUT_NAME, "dtype": "float32",
                       "shape": [None, *self.output_shape],
                       "meaning": "probabilities" if self.include_top else "features"},
            "source": self.source,
        })

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str) -> ExportCard:
        """Parse a card read from the file `where` (named in the error).

        Raises:
            ModelFileError: not a card this version can read.
        """
        try:
            data = json.loads(text)
            if int(data["format_version"]) > CARD_VERSION:
                raise ModelFileError(f"{where} was exported by a newer resnet (card version "
                                     f"{data['format_version']}); upgrade resnet to read it.")
            names = data["class_names"]
            return cls(
                base_model=str(data["base_model"]), image_size=int(data["image_size"]),
                include_top=bool(data["include_top"]), pooling=data["pooling"],
                class_names=tuple(str(n) for n in names) if names is not None else None,
                imagenet_labels=bool(data["imagenet_labels"]), resize=str(data["resize"]),
                precision=str(data["precision"]), preprocess_mode=str(data["preprocess_mode"]),
                source=str(data["source"]),
                output_shape=tuple(int(d) for d in data["output"]["shape"][1:]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{where} has no valid resnet export card: {exc}") from exc


def load_export_source(options: ModelOptions, *, progress: bool | None = None
                       ) -> tuple[LoadedModel, Any]:
    """The model to export as (loaded, network): the classifier, or for `include_top=False`
    the backbone's features pooled as asked (exactly what `resnet extract` computes).

    Raises:
        UsageError: bad options (pooling with the classifier, bf16, a wrong image size).
        WeightsError / ModelFileError: from loading the model.
    """
    from resnet_cli.backbones import build_feature_model
    from resnet_cli.models import load_model, validate_pooling
    from resnet_cli.runtimes import exported_runtime

    if exported_runtime(options.weights) is not None:
        raise UsageError(f"{options.weights} is already an exported file; export the Keras "
                         "model (imagenet, a weights file or a .keras model).")
    if options.precision != "fp32":
        raise UsageError("export writes float32 (or --int8) files; drop --precision.")
    pooling = validate_pooling(options.pooling, include_top=options.include_top)
    if options.include_top:
        loaded = load_model(options, progress=progress)
        if loaded.labels is None:
            raise UsageError(f"{loaded.source} has no classifier; export it with "
                             "--no-include-top --pooling avg.")
        network = loaded.model
    else:
        loaded = load_model(replace(options, include_top=False, pooling=None),
                            progress=progress)
        network = build_feature_model(loaded, pooling=pooling)
    if options.image_size is not None and options.image_size != loaded.image_size:
        raise UsageError(f"{loaded.source} takes {loaded.image_size}x{loaded.image_size} "
                         f"input; got --image-size {options.image_size}. Drop --image-size.")
    return loaded, network


def build_card(loaded: LoadedModel, network: Any, *, include_top: bool, pooling: str | None,
               precision: str) -> ExportCard:
    """The card of `network` (loaded as `loaded`), exported at `precision`."""
    from resnet_cli.evaluate import card_resize
    from resnet_cli.labels import load_imagenet_labels

    labels = loaded.labels if include_top else None
    imagenet = labels is not None and labels == load_imagenet_labels()
    names = None if labels is None or imagenet else tuple(label.name for label in labels)
    return ExportCard(
        base_model=loaded.spec.name, image_size=loaded.image_size, include_top=include_top,
        pooling=None if include_top else pooling, class_names=names, imagenet_labels=imagenet,
        resize=card_resize(loaded).value, precision=precision,
        preprocess_mode=loaded.preprocess_mode, source=loaded.source,
        output_shape=tuple(int(d) for d in network.output_shape[1:]),
    )


def build_serving_model(network: Any, *, image_size: int, mode: str) -> Any:
    """A Keras model from uint8 RGB images `(batch, size, size, 3)` to float32 outputs:
    `network` (which takes images preprocessed with `mode`) with its preprocessing inside and
    its BatchNormalization folded. `network` itself is left as it was."""
    import keras
    import numpy as np
    from keras.applications import imagenet_utils

    from resnet_cli.folding import fold_batch_norm

    folded = fold_batch_norm(network)
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name=INPUT_NAME)
    x = keras.ops.cast(inputs, "float32")
    first = _first_conv(folded) if folded is not network else None
    if mode == "caffe" and first is not None:
        # BGR conversion folded into the kernel: reverse its input-channel axis.
        kernel, *rest = first.get_weights()
        first.set_weights([np.ascontiguousarray(kernel[:, :, ::-1, :]), *rest])
        x = keras.ops.subtract(x, np.asarray(CAFFE_MEAN_BGR[::-1], dtype=np.float32))
    else:
        x = imagenet_utils.preprocess_input(x, mode=mode)
    outputs = keras.ops.cast(folded(x, training=False), "float32")
    return keras.Model(inputs, outputs, name=f"{network.name}_serving")


def _first_conv(model: Any) -> Any:
    """The convolution that takes the model's input (through zero padding and nested models
    only), or None when the input goes anywhere else first."""
    import keras

    current = model
    while True:
        consumers = _consumers(current, current.inputs[0] if current.inputs else None)
        if len(consumers) != 1:
            return None
        layer = consumers[0]
        while isinstance(layer, keras.layers.ZeroPadding2D):
            following = _consumers(current, layer.output)
            if len(following) != 1:
                return None
            layer = following[0]
        if isinstance(layer, keras.Model):
            current = layer
            continue
        if type(layer) is keras.layers.Conv2D and layer.data_format == "channels_last" \
                and layer.groups == 1:
            return layer
        return None


def _consumers(model: Any, tensor: Any) -> list[Any]:
    if tensor is None:
        return []
    found = []
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            if any(t is tensor for t in node.input_tensors):
                found.append(layer)
    return found


REPRODUCE_TOLERANCE = 1e-3  # relative to the largest output; float32 folding gives ~1e-7


def check_reproduces(served: Any, network: Any, *, image_size: int, mode: str) -> float:
    """Check that `served` on uint8 images computes what `network` computes on the same images
    preprocessed the usual way (the folding of BatchNorm and of the channel flip, on random
    pixels), before anything is converted or written; returns the largest difference.

    Raises:
        ModelFileError: they differ by more than REPRODUCE_TOLERANCE.
    """
    import numpy as np
    from keras.applications import imagenet_utils

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, image_size, image_size, 3), dtype=np.uint8)
    want = np.asarray(network(imagenet_utils.preprocess_input(images.astype(np.float32),
                                                              mode=mode), training=False))
    got = np.asarray(served(images, training=False))
    diff = float(np.max(np.abs(got - want)))
    if diff > REPRODUCE_TOLERANCE * max(1.0, float(np.max(np.abs(want)))):
        raise ModelFileError(f"The model prepared for export does not reproduce the Keras "
                             f"model (max difference {diff:.3g}); nothing was written.")
    return diff


def require_module(module: str, *, extra: str, purpose: str) -> Any:
    """Import an optional dependency, or fail with the one line that installs it.

    Raises:
        UsageError: the module is not installed.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"{purpose} needs {module.split('.')[0]}: "
                         f"pip install 'resnet[{extra}]'") from exc
