"""`--precision bf16`: CPU detection, policy choice, fallback, and no policy leaking out."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
import pytest

from resnet_cli import devices
from resnet_cli.cli import app
from resnet_cli.devices import cpu_supports_bf16, parse_precision, precision_policy
from resnet_cli.errors import UsageError
from resnet_cli.inference import Predictor
from resnet_cli.models import ModelCard, ModelOptions, load_model, model_card_dict

ZEN4_FLAGS = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f "
              "avx512_bf16 avx512_vnni\n")
OLD_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: spectre_v1\n"
SAPPHIRE_FLAGS = "flags\t\t: avx512f amx_bf16 amx_tile\n"


@pytest.fixture
def force_cpu_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the bf16 path whatever this CPU has (TensorFlow emulates bf16 where it must)."""
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda cpuinfo=None: True)


def test_cpu_flags_are_read() -> None:
    assert cpu_supports_bf16(ZEN4_FLAGS)
    assert cpu_supports_bf16(SAPPHIRE_FLAGS)
    assert not cpu_supports_bf16(OLD_FLAGS)
    assert not cpu_supports_bf16("")
    assert not cpu_supports_bf16("model name\t: avx512_bf16 in a name, not a flag\n")


def test_policy_choice_and_fallback(caplog: pytest.LogCaptureFixture) -> None:
    assert precision_policy("fp32", "/CPU:0") == "float32"
    assert precision_policy("BF16", "/CPU:0", cpu_bf16=True) == "mixed_bfloat16"
    with caplog.at_level(logging.WARNING, logger="resnet_cli.devices"):
        assert precision_policy("bf16", "/CPU:0", cpu_bf16=False) == "float32"
    assert "no native bfloat16" in caplog.text and "fp32" in caplog.text
    with pytest.raises(UsageError, match="Invalid precision 'fp8': use fp32 or bf16"):
        parse_precision("fp8")


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
    (tmp_path / "config.json").write_text(json.dumps(model_card_dict(ModelCard(
        base_model="resnet50", image_size=32, preprocess_mode="caffe", class_names=["a", "b"]))))

    loaded = load_model(ModelOptions(weights=str(path), precision="bf16"))
    nested = loaded.model.get_layer("resnet50")
    assert loaded.policy == "mixed_bfloat16"
    assert nested.get_layer("conv3_block1_1_conv").compute_dtype == "bfloat16"
    assert loaded.model.get_layer("predictions").compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    out = Predictor(loaded, 1)(np.full((1, 32, 32, 3), 128, dtype=np.uint8))
    assert out.dtype == np.float32 and out.shape == (1, 2)


@pytest.mark.parametrize("command", ["classify", "benchmark"])
def test_bad_precision_exits_2(runner, command: str, tmp_path: Path) -> None:
    args = [command, "--precision", "fp8"]
    if command == "classify":
        args.append(str(tmp_path))
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "fp8" in result.stderr and "--precision" in result.stderr
