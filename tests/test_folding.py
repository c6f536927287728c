"""BatchNorm folding: the folded copy computes what the model computes, with fewer layers."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
from conftest import all_layers, randomise_batch_norm

from resnet_cli.backbones import build_feature_model
from resnet_cli.folding import fold_batch_norm
from resnet_cli.models import ModelOptions, dtype_policy, load_model
from resnet_cli.registry import get_spec
from resnet_cli.training import build_classifier

SIZE = 32


def count(model: Any, kind: type) -> int:
    return sum(isinstance(layer, kind) for layer in all_layers(model))


def inputs(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, (3, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.parametrize(("variant", "left"), [("resnet50", 0), ("resnet50v2", 17)])
def test_folded_model_computes_the_same(variant: str, left: int) -> None:
    spec = get_spec(variant)
    model = getattr(keras.applications, spec.constructor)(weights=None,
                                                         input_shape=(SIZE, SIZE, 3))
    randomise_batch_norm(model)
    x = inputs()
    before = model(x, training=False).numpy()
    nodes = {layer.name: len(layer._inbound_nodes) for layer in model.layers}

    folded = fold_batch_norm(model)

    # V1 has a BatchNorm after every conv; V2's pre-activation ones follow additions.
    assert count(model, keras.layers.BatchNormalization) in (53, 49)
    assert count(folded, keras.layers.BatchNormalization) == left
    out = folded(x, training=False).numpy()
    np.testing.assert_allclose(out, before, rtol=1e-4, atol=1e-6)
    assert out.argmax(axis=1).tolist() == before.argmax(axis=1).tolist()
    # The statistics went into the kernels (a conv whose BatchNorm was dropped would not match).
    kernel = model.get_layer("conv2_block1_1_conv").kernel.numpy()
    assert not np.allclose(folded.get_layer("conv2_block1_1_conv").kernel.numpy(), kernel)
    # The original is untouched: same outputs, no new calls on its layers.
    np.testing.assert_array_equal(model(x, training=False).numpy(), before)
    assert {layer.name: len(layer._inbound_nodes) for layer in model.layers} == nodes


def test_nested_backbone_of_a_finetuned_model_is_folded() -> None:
    model, backbone = build_classifier(get_spec("resnet50"), 3, SIZE, pretrained=True)
    randomise_batch_norm(backbone, seed=2)
    x = inputs(3)
    folded = fold_batch_norm(model)
    assert count(model, keras.layers.BatchNormalization) == 53
    assert count(folded, keras.layers.BatchNormalization) == 0
    np.testing.assert_allclose(folded(x, training=False).numpy(),
                               model(x, training=False).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layer", ["conv2_block1_1_conv", "conv2_block1_1_bn", "conv1_bn"])
def test_features_of_an_inner_layer_survive_folding(layer: str) -> None:
    loaded = load_model(ModelOptions(weights="none", image_size=SIZE, include_top=False))
    randomise_batch_norm(loaded.model, seed=4)
    features = build_feature_model(loaded, pooling=None, layer=layer)
    folded = fold_batch_norm(features)
    x = inputs(5)
    np.testing.assert_allclose(folded(x).numpy(), features(x).numpy(), rtol=1e-4, atol=1e-5)
    assert count(folded, keras.layers.BatchNormalization) == 0


def test_a_conv_whose_output_is_a_model_output_keeps_its_batch_norm() -> None:
    image = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(4, 3, name="conv")(image)
    normed = keras.layers.BatchNormalization(name="bn")(conv)
    tail = keras.layers.BatchNormalization(name="bn2")(keras.layers.Conv2D(4, 1)(normed))
    model = keras.Model(image, [conv, tail])
    randomise_batch_norm(model, seed=10)
    folded = fold_batch_norm(model)
    assert [layer.name for layer in folded.layers
            if isinstance(layer, keras.layers.BatchNormalization)] == ["bn"]
    x = inputs(11)
    for got, want in zip(folded(x), model(x), strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_a_model_with_nothing_to_fold_is_returned_as_is() -> None:
    inputs_ = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs_)
    x = keras.layers.BatchNormalization()(x)  # after an activation: cannot fold
    model = keras.Model(inputs_, keras.layers.GlobalAveragePooling2D()(x))
    assert fold_batch_norm(model) is model


def test_folded_layers_keep_the_mixed_precision_policy() -> None:
    with dtype_policy("mixed_bfloat16"):
        model = keras.applications.ResNet50(weights=None, input_shape=(SIZE, SIZE, 3))
    randomise_batch_norm(model, seed=6)
    folded = fold_batch_norm(model)
    conv = folded.get_layer("conv2_block1_1_conv")
    assert conv.dtype_policy.name == "mixed_bfloat16" and conv.kernel.dtype == "float32"
    out = folded(inputs(7), training=False)
    reference = model(inputs(7), training=False)
    assert out.dtype == reference.dtype == "bfloat16"
    assert np.abs(np.asarray(out, np.float32) - np.asarray(reference, np.float32)).max() < 0.02
