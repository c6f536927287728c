"""`--precision bf16` in the models: the policy reaches every layer and never leaks out.

Detecting bf16 CPUs and choosing the policy are tested in test_devices.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from resnet_cli import devices
from resnet_cli.card import ModelCard, card_entry
from resnet_cli.inference import Predictor
from resnet_cli.models import ModelOptions, load_model


@pytest.fixture
def force_cpu_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the bf16 path whatever this CPU has (TensorFlow emulates bf16 where it must)."""
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda cpuinfo=None: True)


def test_bf16_model_keeps_policy_without_leaking(force_cpu_bf16: None) -> None:
    loaded = load_model(ModelOptions(weights="none", image_size=32, precision="bf16"))
    assert keras.mixed_precision.global_policy().name == "float32"
    assert loaded.policy == "mixed_bfloat16"
    model = loaded.model
    assert model.get_layer("conv1_conv").compute_dtype == "bfloat16"
    assert model.get_layer("conv1_conv").kernel.dtype == "float32"  # variables stay fp32
    assert model.get_layer("predictions").compute_dtype == "float32"  # softmax in fp32

    plain = load_model(ModelOptions(weights="none", image_size=32))
    assert plain.policy == "float32"
    assert plain.model.get_layer("conv1_conv").compute_dtype == "float32"

    plain.model.set_weights(model.get_weights())
    batch = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    half, full = Predictor(loaded, 2)(batch), Predictor(plain, 2)(batch)
    assert half.dtype == np.float32 and half.shape == (2, 1000)
    np.testing.assert_allclose(half.sum(axis=1), 1.0, atol=1e-4)
    # Same weights, bf16 arithmetic: close to fp32, but not equal (random weights make peaky,
    # sensitive outputs; trained-model drift is measured in benchmarks/precision_drift.py).
    assert 0 < np.abs(half - full).max() < 0.05


def test_bf16_finetuned_model_switches_its_layers(tmp_path: Path, force_cpu_bf16: None) -> None:
    backbone = keras.applications.ResNet50(weights=None, include_top=False,
                                           input_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    (tmp_path / "config.json").write_text(json.dumps(card_entry(ModelCard(
        base_model="resnet50", image_size=32, preprocess_mode="caffe", class_names=("a", "b")))))

    loaded = load_model(ModelOptions(weights=str(path), precision="bf16"))
    nested = loaded.model.get_layer("resnet50")
    assert loaded.policy == "mixed_bfloat16"
    assert nested.get_layer("conv3_block1_1_conv").compute_dtype == "bfloat16"
    assert loaded.model.get_layer("predictions").compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    out = Predictor(loaded, 1)(np.full((1, 32, 32, 3), 128, dtype=np.uint8))
    assert out.dtype == np.float32 and out.shape == (1, 2)
