"""resnet export: every format reproduces the Keras model, carries its card, and is written
atomically; bad requests fail with one line before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from typer.testing import CliRunner

from resnet_cli.cli import app
from resnet_cli.images import ResizeMode
from resnet_cli.models import ModelOptions, load_model


def _images(count: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, TINY, TINY, 3), dtype=np.uint8)


def _keras_probs(loaded, images: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    from keras.applications import imagenet_utils

    x = imagenet_utils.preprocess_input(images.astype(np.float32), mode="caffe")
    return np.asarray(loaded.model(x, training=False))


@pytest.mark.parametrize("name", ["litert", "onnx"])
def test_float_files_reproduce_keras(exported, keras_loaded, name: str) -> None:
    from resnet_cli.inference import make_predictor

    loaded = load_model(ModelOptions(weights=str(exported[name])))
    images = _images()
    got = make_predictor(loaded, 4)(images[:4])
    np.testing.assert_allclose(got, _keras_probs(keras_loaded, images[:4]), rtol=0, atol=1e-4)
    assert got.dtype == np.float32 and got.shape == (4, 1000)


def test_saved_model_serves_uint8_and_reproduces_keras(exported, keras_loaded) -> None:
    import tensorflow as tf

    served = tf.saved_model.load(str(exported["saved_model"]))
    signature = served.signatures["serving_default"]
    images = _images()
    got = signature(images=tf.constant(images))["outputs"].numpy()
    np.testing.assert_allclose(got, _keras_probs(keras_loaded, images), rtol=0, atol=1e-5)


def test_cards_round_trip(exported) -> None:
    from resnet_cli.export.saved_model import read_saved_model_card
    from resnet_cli.labels import load_imagenet_labels

    card = read_saved_model_card(exported["saved_model"])
    assert card is not None
    assert (card.base_model, card.image_size, card.include_top, card.precision) == \
        ("resnet50", TINY, True, "float32")
    assert card.imagenet_labels and card.resize == "crop"
    for name, precision, fmt in (("litert", "float32", "litert"), ("onnx", "float32", "onnx"),
                                 ("int8", "int8", "litert")):
        loaded = load_model(ModelOptions(weights=str(exported[name])))
        assert loaded.runtime == fmt and loaded.card.format == fmt
        assert loaded.image_size == TINY and loaded.spec.name == "resnet50"
        assert loaded.labels == load_imagenet_labels()
        assert loaded.card.precision == precision and loaded.card.resize is ResizeMode.crop
    backbone = load_model(ModelOptions(weights=str(exported["backbone"])))
    assert backbone.labels is None
    assert backbone.card.output_shape == (2048,) and backbone.card.pooling == "avg"


def test_int8_file_is_full_integer(exported, keras_loaded) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from resnet_cli.inference import make_predictor

    interpreter = Interpreter(model_path=str(exported["int8"]))
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    kinds = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in kinds
    probs = make_predictor(load_model(ModelOptions(weights=str(exported["int8"]))), 3)(
        _images(3))
    assert probs.shape == (3, 1000)
    float_size = exported["litert"].stat().st_size
    assert exported["int8"].stat().st_size < float_size / 3


def test_cli_export_writes_atomically_and_refuses_existing(
        runner: CliRunner, export_source, tmp_path: Path) -> None:
    weights, _ = export_source
    out = tmp_path / "sm"
    args = ["export", "-f", "saved_model", "--weights", str(weights), "--image-size",
            str(TINY), "--no-include-top", "--pooling", "max", "-o", str(out)]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    card = json.loads((out / "assets" / "resnet_cli_card.json").read_text())
    assert card["pooling"] == "max" and card["output"]["shape"] == [None, 2048]
    assert [p.name for p in tmp_path.iterdir()] == ["sm"]  # no temporary left behind
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output
    replaced = runner.invoke(app, [*args, "--overwrite"], catch_exceptions=False)
    assert replaced.exit_code == 0 and [p.name for p in tmp_path.iterdir()] == ["sm"]


@pytest.mark.parametrize("args,code,message", [
    (["-f", "litert", "--int8"], 2, "--int8 needs calibration images"),
    (["-f", "onnx", "--int8", "--calibrate", "x.jpg"], 2, "--int8 is for --format litert"),
    (["-f", "litert"], 2, "writes a .tflite file"),
    (["-f", "litert", "--pooling", "avg"], 2, "--no-include-top"),
])
def test_cli_export_usage_errors(runner: CliRunner, tmp_path: Path, args: list[str],
                                 code: int, message: str) -> None:
    out = tmp_path / ("m.tflite" if "writes" not in message else "m.onnx")
    result = runner.invoke(app, ["export", "--weights", "none", "--image-size", str(TINY),
                                 *args, "-o", str(out)])
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_existing_output_refused_before_loading(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    # Weights that would fail to load: the output check comes first.
    bogus = tmp_path / "bogus.weights.h5"
    bogus.write_bytes(b"not hdf5")
    result = runner.invoke(app, ["export", "-f", "onnx", "--weights", str(bogus), "-o",
                                 str(out)])
    assert result.exit_code == 1 and "already exists" in result.output
    assert out.read_bytes() == b"old"


def test_atomic_dir_keeps_old_folder_on_failure(tmp_path: Path) -> None:
    from resnet_cli.outputs import atomic_dir

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_cli_int8_calibrates_on_a_finetune_data_folder(runner: CliRunner, export_source,
                                                       tmp_path: Path) -> None:
    from conftest import write_class_dataset

    weights, _ = export_source
    data = write_class_dataset(tmp_path / "data", per_class=2)  # data/<class>/*.png
    (tmp_path / "empty").mkdir()
    (data / "cat" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "m.tflite"
    result = runner.invoke(app, ["export", "-f", "litert", "--weights", str(weights),
                                 "--image-size", str(TINY), "--int8", "--calibrate", str(data),
                                 "--calibrate", str(tmp_path / "empty"), "-o", str(out)])
    assert result.exit_code == 1, result.output  # written, but one calibration image failed
    lines = result.stderr.strip().splitlines()
    assert f"warning: {tmp_path / 'empty'}: no images" in lines
    assert any(line.startswith(f"error: {data / 'cat' / 'broken.png'}:") for line in lines)
    assert "LiteRT int8" in lines[-1] and out.is_file()


def test_cli_calibration_folder_without_images_is_a_usage_error(runner: CliRunner,
                                                                tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "m.tflite"
    result = runner.invoke(app, ["export", "-f", "litert", "--weights", "none", "--int8",
                                 "--calibrate", str(tmp_path / "empty"), "-o", str(out)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"warning: {tmp_path / 'empty'}: no images",
        "error: No images found in the given inputs."]
    assert not out.exists()


def test_int8_agrees_with_keras_on_held_out_images(shapes_model, sample_photos,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    """A trained classifier's int8 file (calibrated on images of its task) against the Keras
    model it came from: the same top-1 on held-out images, probabilities within int8's error,
    and on real photos (outside the task) too."""
    from resnet_cli.export import ExportFormat, export_model
    from resnet_cli.images import load_image
    from resnet_cli.inference import make_predictor

    paths = shapes_model["paths"]
    out = export_model(ModelOptions(weights=str(shapes_model["path"]), device="cpu"),
                       ExportFormat.litert, tmp_path / "shapes_int8.tflite", int8=True,
                       calibrate=paths[:40], progress=False).path
    int8 = make_predictor(load_model(ModelOptions(weights=str(out))), 16)
    keras = make_predictor(load_model(ModelOptions(weights=str(shapes_model["path"]))), 16)
    # Measured: agreement 1.0 on both, max difference 0.017 (held-out) and 0.019 (photos).
    for files, agreement, tolerance in ((paths[40:], 0.97, 0.05),
                                        ([str(p) for p in sample_photos], 0.8, 0.06)):
        images = np.stack([load_image(p, size=TINY, resize=ResizeMode.squash) for p in files])
        got = np.concatenate([int8(images[i:i + 16]) for i in range(0, len(images), 16)])
        want = np.concatenate([keras(images[i:i + 16]) for i in range(0, len(images), 16)])
        assert np.mean(got.argmax(axis=1) == want.argmax(axis=1)) >= agreement
        assert np.abs(got - want).max() < tolerance
