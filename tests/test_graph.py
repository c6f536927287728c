"""The one module that walks Keras graphs. Keras' private bookkeeping it relies on is checked
here by name, so a Keras release that renames it fails this test, not a user's features."""

from __future__ import annotations

import pytest

from resnet_cli import graph
from resnet_cli.errors import ModelFileError


@pytest.fixture(scope="module")
def finetuned():  # type: ignore[no-untyped-def]
    """A finetune-shaped model: input -> rescaling -> nested ResNet50 -> pooling -> dense."""
    import keras

    backbone = keras.applications.ResNet50(include_top=False, weights=None,
                                           input_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1.0, name="before")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(x))
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs), backbone


def test_keras_private_bookkeeping_is_still_there(finetuned) -> None:  # type: ignore[no-untyped-def]
    model, _ = finetuned
    assert hasattr(model, "_nodes_by_depth")
    assert hasattr(model.outputs[0], "_keras_history")
    assert graph.is_functional(model)


def test_backbone_feed_head_and_first_conv(finetuned) -> None:  # type: ignore[no-untyped-def]
    model, backbone = finetuned
    assert graph.find_backbone(model) is backbone
    assert graph.producer(graph.backbone_feed(model, backbone)) is model.get_layer("before")
    assert [layer.name for layer in graph.head_after(model, backbone)] == ["pool",
                                                                          "predictions"]
    assert graph.first_conv(backbone).name == "conv1_conv"  # through conv1_pad
    assert graph.first_conv(model) is None  # the rescaling comes first
    assert graph.consumers(model, model.inputs[0]) == [model.get_layer("before")]


def test_a_layer_called_twice_is_refused(finetuned) -> None:  # type: ignore[no-untyped-def]
    import keras

    _, backbone = finetuned
    shared = keras.layers.Dense(4, name="twice")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, shared(shared(inputs)))
    with pytest.raises(ModelFileError, match="twice is called 2 times"):
        graph.own_node(model, shared)
    assert graph.find_backbone(backbone) is backbone
