"""The one place that walks a Keras model's graph: who feeds whom.

Keras has public API for a layer's own tensors (`layer.input`, `layer.output`, a model's
`inputs`/`outputs`/`layers`) but none for "which call of a layer belongs to this model" or
"which layer produced this tensor". For those two questions this module reads Keras' private
bookkeeping, `Function._nodes_by_depth` and `KerasTensor._keras_history`, *without* defaults:
if Keras renames either, every caller fails loudly (and `tests/test_graph.py` says which),
instead of BatchNorm folding being silently skipped or the layers in front of a nested
backbone being silently dropped.

Keras is imported inside functions only, so importing this module is cheap.
"""

from __future__ import annotations

from typing import Any

from resnet_cli.errors import ModelFileError


def is_functional(model: Any) -> bool:
    """Whether `model` is a graph of layer calls (a functional model, such as every Keras
    application and every model finetune builds); Sequential and subclassed models are not."""
    import keras

    return isinstance(model, keras.Function)


def model_nodes(model: Any) -> list[Any]:
    """The layer calls (`Node`s) that make up the functional `model`'s own graph, from its
    outputs back to its inputs; nested models appear as one call each."""
    return [node for depth in model._nodes_by_depth.values() for node in depth]


def producer(tensor: Any) -> Any:
    """The layer (or operation) whose call produced the symbolic `tensor`."""
    return tensor._keras_history.operation


def own_node(model: Any, layer: Any) -> Any:
    """The call of `layer` that is part of `model`'s graph (a layer shared with other models
    has one call per model).

    Raises:
        ModelFileError: `layer` is called more than once, or not at all, in `model`.
    """
    nodes = [node for node in model_nodes(model) if node.operation is layer]
    if len(nodes) != 1:
        raise ModelFileError(f"{layer.name} is called {len(nodes)} times in {model.name}; "
                             "expected once.")
    return nodes[0]


def consumers(model: Any, tensor: Any) -> list[Any]:
    """The layers of `model`'s own graph that take `tensor` as an input."""
    return [node.operation for node in model_nodes(model)
            if any(t is tensor for t in node.input_tensors)]


def find_backbone(model: Any) -> Any:
    """The ResNet inside `model`: a nested model named like a variant (finetuned `.keras`
    models), the largest nested model, or `model` itself (a plain application model)."""
    import keras

    from resnet_cli.registry import MODELS

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    for layer in nested:
        if layer.name in MODELS:
            return layer
    if nested:
        return max(nested, key=lambda layer: len(layer.layers))
    return model


def backbone_feed(outer: Any, backbone: Any) -> Any | None:
    """The tensor `outer` feeds its nested `backbone` with, when layers (augmentation,
    resizing) stand between `outer`'s input and it; None when the input goes straight in.

    Raises:
        ModelFileError: the backbone is called more than once, or with several inputs.
    """
    feeds = list(own_node(outer, backbone).input_tensors)
    if len(feeds) != 1:
        raise ModelFileError(f"{backbone.name} takes {len(feeds)} inputs in {outer.name}; "
                             "expected one.")
    return None if any(feeds[0] is x for x in outer.inputs) else feeds[0]


def head_after(outer: Any, backbone: Any) -> list[Any]:
    """The layers of `outer` after its nested `backbone` (the classifier head finetune
    builds), checked to be a single chain that ends at `outer`'s output.

    Raises:
        ModelFileError: they are not a single chain.
    """
    layers = outer.layers
    head = layers[layers.index(backbone) + 1:]
    previous = backbone
    for layer in head:
        inputs = list(own_node(outer, layer).input_tensors)
        if len(inputs) != 1 or producer(inputs[0]) is not previous:
            raise ModelFileError(f"The layers of {outer.name} after {backbone.name} are not "
                                 f"a single chain (at {layer.name}).")
        previous = layer
    if producer(outer.outputs[0]) is not previous:
        raise ModelFileError(f"The output of {outer.name} does not come from the layers "
                             f"after {backbone.name}.")
    return list(head)


def first_conv(model: Any) -> Any:
    """The convolution that takes the model's input (through zero padding and nested models
    only), or None when the input goes anywhere else first."""
    import keras

    current = model
    while is_functional(current):
        following = consumers(current, current.inputs[0])
        if len(following) != 1:
            return None
        layer = following[0]
        while isinstance(layer, keras.layers.ZeroPadding2D):
            following = consumers(current, layer.output)
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
    return None
