"""Inference copies of a model with each BatchNormalization folded into the convolution before it.

At inference a BatchNormalization layer is a fixed per-channel affine map, so a convolution
followed by one is the same as a single convolution with a rescaled kernel and a shifted bias:

    scale  = gamma / sqrt(moving_variance + epsilon)
    kernel = kernel * scale                      (per output channel)
    bias   = (bias - moving_mean) * scale + beta

Without the separate normalisation ops in between, TensorFlow fuses each convolution with its
bias and ReLU into one oneDNN kernel. On ResNet50 that makes the model about 1.2x faster in
float32 and 1.5x faster under mixed bfloat16 on a CPU, with outputs equal up to float rounding.
Folded models are for inference only: they have no BatchNormalization left to train.
"""

from __future__ import annotations

import logging
from typing import Any

from resnet_cli.graph import is_functional, model_nodes, producer

log = logging.getLogger(__name__)


def fold_batch_norm(model: Any) -> Any:
    """A copy of `model` in which every conv -> BatchNormalization pair is one convolution.

    A pair folds when the Conv2D has no activation, its output feeds only that
    BatchNormalization (over the channel axis), and it is not an output of the model. Nested
    functional models (a finetuned model's backbone) are folded as well. Every layer of the
    copy is new and holds its own copy of the weights: `model` is left exactly as it was.
    Returns `model` itself when nothing can be folded.
    """
    import keras

    pairs = _foldable_pairs(model)
    if not pairs:
        return model
    folded_bn = {id(bn) for _, bn in pairs.values()}
    clones: list[tuple[Any, Any]] = []
    skipped: set[int] = set()  # the clones of folded BatchNormalization layers, never called

    def clone(layer: Any) -> Any:
        if id(layer) in folded_bn:
            new = keras.layers.Identity(name=layer.name, dtype=layer.dtype_policy)
            skipped.add(id(new))
        else:
            config = layer.get_config()
            if id(layer) in pairs:
                config["use_bias"] = True
            # Every weight is overwritten below: skip drawing random initial values.
            config.update({key: "zeros" for key in config if key.endswith("_initializer")})
            new = layer.__class__.from_config(config)
        clones.append((layer, new))
        return new

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        return args[0] if id(layer) in skipped else layer(*args, **kwargs)

    copy = keras.models.clone_model(model, clone_function=clone, call_function=call,
                                    recursive=True)
    for old, new in clones:
        if id(old) in pairs:
            new.set_weights(_folded_weights(*pairs[id(old)]))
        elif id(old) not in folded_bn:
            new.set_weights(old.get_weights())
    log.debug("folded %d BatchNormalization layers into convolutions in %s", len(pairs),
              model.name)
    return copy


def _foldable_pairs(model: Any) -> dict[int, tuple[Any, Any]]:
    """{id(conv): (conv, bn)} for every pair that folds, in `model` and the models it nests."""
    import keras

    pairs: dict[int, tuple[Any, Any]] = {}
    if not is_functional(model):  # a Sequential or subclassed model: left as it is
        return pairs
    nodes = model_nodes(model)
    consumers: dict[int, int] = {}
    calls: dict[int, int] = {}
    for node in nodes:
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        for tensor in node.input_tensors:
            consumers[id(tensor)] = consumers.get(id(tensor), 0) + 1
    outputs = {id(tensor) for tensor in model.outputs}
    for node in nodes:
        layer = node.operation
        if isinstance(layer, keras.Model):
            pairs.update(_foldable_pairs(layer))
            continue
        if not isinstance(layer, keras.layers.BatchNormalization) \
                or len(node.input_tensors) != 1 or calls[id(layer)] != 1:
            continue
        source = node.input_tensors[0]
        conv = producer(source)
        if (type(conv) is keras.layers.Conv2D and calls.get(id(conv)) == 1
                and conv.data_format == "channels_last" and layer.axis in (-1, 3)
                and conv.get_config()["activation"] == "linear"
                and consumers[id(source)] == 1 and id(source) not in outputs):
            pairs[id(conv)] = (conv, layer)
    return pairs


def _folded_weights(conv: Any, bn: Any) -> list[Any]:
    import numpy as np

    kernel = np.asarray(conv.kernel.numpy(), dtype=np.float64)
    channels = kernel.shape[-1]
    bias = (np.asarray(conv.bias.numpy(), dtype=np.float64) if conv.use_bias
            else np.zeros(channels))
    gamma = np.asarray(bn.gamma.numpy(), dtype=np.float64) if bn.scale else np.ones(channels)
    beta = np.asarray(bn.beta.numpy(), dtype=np.float64) if bn.center else np.zeros(channels)
    mean = np.asarray(bn.moving_mean.numpy(), dtype=np.float64)
    variance = np.asarray(bn.moving_variance.numpy(), dtype=np.float64)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return [(kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)]
