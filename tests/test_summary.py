"""`resnet summary`: totals equal Keras' own counts, MACs agree with an independent count."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from resnet_cli.card import ModelCard, card_entry
from resnet_cli.cli import app
from resnet_cli.models import ModelOptions, load_model
from resnet_cli.render.summary import format_count, format_shape
from resnet_cli.summary import summarize_loaded

STAGES = ["stem", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "head"]


def independent_macs(model) -> int:
    """Conv2D: kh*kw*cin*cout*Hout*Wout (cin read from the layer's input); Dense: in*out."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            _, h, w, cout = layer.output.shape
            total += kh * kw * cin * cout * h * w
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


@pytest.fixture(scope="module")
def resnet50_224():
    return load_model(ModelOptions(weights="none", device="cpu"))


def test_resnet50_totals_and_macs(resnet50_224) -> None:
    summary = summarize_loaded(resnet50_224, layers=True)
    model = resnet50_224.model
    assert summary.total_params == model.count_params() == 25_636_712
    assert summary.non_trainable_params == 53_120  # batch-norm moving statistics
    assert summary.trainable_params + summary.non_trainable_params == summary.total_params
    assert summary.macs == independent_macs(model)
    assert summary.macs == pytest.approx(3.86e9, rel=0.01)
    assert summary.weight_bytes == 4 * 25_636_712  # float32 variables
    assert summary.input_shape == (None, 224, 224, 3)
    assert summary.output_shape == (None, 1000)
    assert summary.num_classes == 1000 and summary.class_names is None
    assert (summary.top1, summary.top5) == (0.749, 0.921)


def test_resnet50_stages(resnet50_224) -> None:
    summary = summarize_loaded(resnet50_224)
    assert [s.name for s in summary.stages] == STAGES
    assert [s.blocks for s in summary.stages] == [0, 3, 4, 6, 3, 0]
    shapes = {s.name: s.output_shape for s in summary.stages}
    assert shapes["stem"] == (None, 56, 56, 64)
    assert shapes["conv2_x"] == (None, 56, 56, 256)
    assert shapes["conv5_x"] == (None, 7, 7, 2048)
    assert shapes["head"] == (None, 1000)
    head = summary.stages[-1]
    assert head.params == 2048 * 1000 + 1000
    assert sum(s.params for s in summary.stages) == summary.total_params
    assert sum(s.macs or 0 for s in summary.stages) == summary.macs
    assert summary.layers is None  # only with layers=True


def test_json_v2_backbone(runner) -> None:
    result = runner.invoke(app, ["summary", "--model", "resnet50v2", "--image-size", "64",
                                 "--no-include-top", "--pooling", "avg", "--layers",
                                 "-f", "json", "-q"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "resnet50v2" and data["preprocess_mode"] == "tf"
    assert data["include_top"] is False and data["num_classes"] is None
    # The classifier's 2048 * 1000 + 1000 weights are gone; the rest does not depend on size.
    assert data["params"]["total"] == 25_613_800 - 2_049_000
    assert data["output_shape"] == [None, 2048]
    assert [s["name"] for s in data["stages"]] == STAGES
    assert [s["blocks"] for s in data["stages"]] == [0, 3, 4, 6, 3, 0]
    names = {layer["name"]: layer for layer in data["layers"]}
    assert names["conv4_block6_out"]["output_shape"] == [None, 2, 2, 1024]
    assert names["conv4_block6_out"]["stage"] == "conv4_x"
    assert names["post_bn"]["stage"] == "head"  # V2's final batch norm follows conv5
    assert sum(layer["params"] for layer in data["layers"]) == data["params"]["total"]
    assert sum(layer["macs"] for layer in data["layers"]) == data["macs"] > 0


def test_table_lists_layers_offline(runner) -> None:
    result = runner.invoke(app, ["summary", "--image-size", "64", "--layers"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for text in ("25,636,712", "53,120", "conv4_block6_out", "conv5_x", "caffe",
                 "74.9% / 92.1%", "published", "1000 (1000 classes)"):
        assert text in out, text
    assert result.stderr == ""


def test_finetuned_model_shows_classes_and_backbone(tmp_path: Path, runner) -> None:
    import keras

    backbone = keras.applications.ResNet50(weights=None, include_top=False,
                                           input_shape=(32, 32, 3))
    backbone.trainable = False
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "model.keras"
    model.save(path)
    names = ["cat", "coffee mug", "rocket"]
    (tmp_path / "config.json").write_text(json.dumps(card_entry(ModelCard(
        base_model="resnet50", image_size=32, preprocess_mode="caffe", class_names=tuple(names)))))

    result = runner.invoke(app, ["summary", "--weights", str(path), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["finetuned"] is True and data["backbone"] == "resnet50"
    assert data["class_names"] == names and data["num_classes"] == 3
    assert data["params"]["total"] == model.count_params()
    assert data["params"]["trainable"] == 2048 * 3 + 3  # the backbone is frozen
    stages = {s["name"]: s for s in data["stages"]}
    assert list(stages) == STAGES
    assert stages["conv4_x"]["blocks"] == 6
    assert stages["head"]["params"] == 2048 * 3 + 3

    table = runner.invoke(app, ["summary", "--weights", str(path)])
    assert table.exit_code == 0, table.stderr
    for text in ("coffee mug", "rocket", "backbone", "nested model 'resnet50'"):
        assert text in table.stdout, text


@pytest.mark.parametrize("args,message", [
    (["--no-include-top", "--pooling", "mean"], "'mean' is not one of"),
    (["--pooling", "avg"], "--no-include-top"),
    (["--model", "resnet51"], "Unknown model"),
])
def test_bad_options_exit_2(runner, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["summary", *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_imagenet_weights_offline_fail_in_one_line(runner, monkeypatch) -> None:
    monkeypatch.setenv("RESNET_WEIGHTS_URL", "http://127.0.0.1:9/")
    result = runner.invoke(app, ["summary", "--weights", "imagenet"])
    assert result.exit_code == 1
    assert "resnet50_weights_tf_dim_ordering_tf_kernels.h5" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_formatting_helpers() -> None:
    assert format_shape((None, 7, 7, 2048)) == "7 x 7 x 2048"
    assert format_shape(None) == "?"
    assert format_count(3_857_973_248, "MAC") == "3.86 GMAC"
    assert format_count(2_049_000) == "2.05 M"
    assert format_count(512) == "512"
    assert format_count(None) == "unknown"
    assert math.isclose(float(format_count(1500).split()[0]), 1.5)
