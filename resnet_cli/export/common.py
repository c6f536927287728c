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

import logging
from typing import TYPE_CHECKING, Any

from resnet_cli.card import INPUT_NAME, ModelCard, public_source
from resnet_cli.errors import ModelFileError, UsageError

if TYPE_CHECKING:
    from resnet_cli.loaded import LoadedModel
    from resnet_cli.models import ModelOptions

log = logging.getLogger(__name__)

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, mode="caffe"


def load_export_source(options: ModelOptions, *, progress: bool | None = None
                       ) -> tuple[LoadedModel, Any]:
    """The model to export as (loaded, network): `backbones.load_network` (the classifier, or
    the pooled backbone that `resnet extract` runs), from a Keras model at float32.

    Raises:
        UsageError: an exported file as the source, or --precision.
        WeightsError / ModelFileError: from loading the model.
    """
    from resnet_cli.backbones import load_network
    from resnet_cli.runtimes import exported_runtime

    if exported_runtime(options.weights) is not None:
        raise UsageError(f"{options.weights} is already an exported file; export the Keras "
                         "model (imagenet, a weights file or a .keras model).")
    if options.precision != "fp32":
        raise UsageError("export writes float32 (or --int8) files; drop --precision.")
    return load_network(options, progress=progress)


def build_card(loaded: LoadedModel, network: Any, *, pooling: str | None, fmt: str,
               precision: str) -> ModelCard:
    """The card of `network` (what `load_export_source` returned: the classifier, or the
    backbone pooled with `pooling`), exported as `fmt` at `precision`."""
    include_top = loaded.labels is not None and network is loaded.model
    names = () if not include_top or loaded.card.imagenet_labels else \
        tuple(label.name for label in loaded.labels or ())
    return loaded.card.replace(
        include_top=include_top, imagenet_labels=include_top and loaded.card.imagenet_labels,
        class_names=names, pooling=None if include_top else pooling, precision=precision,
        format=fmt, source=public_source(loaded.source),
        output_shape=tuple(int(d) for d in network.output_shape[1:]))


def build_serving_model(network: Any, *, image_size: int, mode: str) -> Any:
    """A Keras model from uint8 RGB images `(batch, size, size, 3)` to float32 outputs:
    `network` (which takes images preprocessed with `mode`) with its preprocessing inside and
    its BatchNormalization folded. `network` itself is left as it was."""
    import keras
    import numpy as np
    from keras.applications import imagenet_utils

    from resnet_cli.folding import fold_batch_norm
    from resnet_cli.graph import first_conv

    folded = fold_batch_norm(network)
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name=INPUT_NAME)
    x = keras.ops.cast(inputs, "float32")
    first = first_conv(folded) if folded is not network else None
    if mode == "caffe" and first is not None:
        # BGR conversion folded into the kernel: reverse its input-channel axis.
        kernel, *rest = first.get_weights()
        first.set_weights([np.ascontiguousarray(kernel[:, :, ::-1, :]), *rest])
        x = keras.ops.subtract(x, np.asarray(CAFFE_MEAN_BGR[::-1], dtype=np.float32))
    else:
        x = imagenet_utils.preprocess_input(x, mode=mode)
    outputs = keras.ops.cast(folded(x, training=False), "float32")
    return keras.Model(inputs, outputs, name=f"{network.name}_serving")


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
