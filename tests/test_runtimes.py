"""Exported files behind the predictor interface: classify, extract, evaluate and benchmark
take --weights FILE.tflite/.onnx and behave as with the Keras model.

The exported files are session fixtures of conftest, shared with test_export.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_image, write_class_dataset
from typer.testing import CliRunner

from resnet_cli.cli import app
from resnet_cli.models import ModelOptions, load_model


def _top1(output: str) -> dict[str, str]:
    return {row["path"]: row["label"] for row in csv.DictReader(io.StringIO(output))}


@pytest.fixture
def photos(tmp_path: Path) -> list[str]:
    return [str(make_image(tmp_path / f"x{i}.jpg", (80 + 7 * i, 60), seed=70 + i))
            for i in range(5)]


@pytest.mark.parametrize("name", ["litert", "onnx"])
def test_classify_with_exported_file_gives_keras_labels(
        runner: CliRunner, exported, export_source, photos, tmp_path: Path, name: str) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    args = ["classify", *photos, str(bad), "-k", "1", "-f", "csv", "-b", "2"]
    keras_run = runner.invoke(app, [*args, "--weights", str(export_source[0]),
                                    "--image-size", str(TINY)])
    file_run = runner.invoke(app, [*args, "--weights", str(exported[name])])
    assert keras_run.exit_code == file_run.exit_code == 1  # the broken file, reported alike
    keras_rows = list(csv.DictReader(io.StringIO(keras_run.stdout)))
    file_rows = list(csv.DictReader(io.StringIO(file_run.stdout)))
    assert [r["label"] for r in file_rows] == [r["label"] for r in keras_rows]
    assert [r["error"] for r in file_rows] == [r["error"] for r in keras_rows]
    for a, b in zip(file_rows[:-1], keras_rows[:-1], strict=True):
        assert abs(float(a["probability"]) - float(b["probability"])) < 1e-4


def test_extract_with_exported_backbone(runner: CliRunner, exported, export_source, photos,
                                        tmp_path: Path) -> None:
    from resnet_cli.backbones import build_feature_model
    from resnet_cli.inference import make_predictor

    out = tmp_path / "f.npy"
    result = runner.invoke(app, ["extract", *photos, "--weights", str(exported["backbone"]),
                                 "-o", str(out), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = np.load(out)
    assert rows.shape == (5, 2048)
    # The same images through the Keras backbone of the same weights.
    keras_loaded = load_model(ModelOptions(weights=str(export_source[0]), include_top=False,
                                           image_size=TINY))
    from resnet_cli.images import load_image

    images = np.stack([load_image(p, size=TINY) for p in photos])
    want = make_predictor(keras_loaded, 5, model=build_feature_model(keras_loaded))(images)
    np.testing.assert_allclose(rows, want, rtol=1e-4, atol=1e-4)
    layer = runner.invoke(app, ["extract", *photos, "--weights", str(exported["backbone"]),
                                "--layer", "conv4_block6_out", "-o", str(tmp_path / "g.npy")])
    assert layer.exit_code == 2 and "--layer does not apply" in layer.output
    classifier = runner.invoke(app, ["extract", *photos, "--weights", str(exported["litert"]),
                                     "-o", str(tmp_path / "h.npy")])
    assert classifier.exit_code == 2 and "is a classifier" in classifier.output


def test_evaluate_with_exported_file_matches_keras(runner: CliRunner, exported, export_source,
                                                   tmp_path: Path) -> None:
    import keras

    from resnet_cli.labels import load_imagenet_labels

    data = write_class_dataset(tmp_path / "data")
    # Folder names must be classes of the model: rename to ImageNet ones.
    names = [label.name for label in load_imagenet_labels()[:3]]
    for folder, name in zip(sorted(data.iterdir()), names, strict=True):
        folder.rename(data / name)
    keras.utils.set_random_seed(0)
    common = ["evaluate", str(data), "-f", "json"]
    keras_run = runner.invoke(app, [*common, "--weights", str(export_source[0]),
                                    "--image-size", str(TINY)], catch_exceptions=False)
    file_run = runner.invoke(app, [*common, "--weights", str(exported["onnx"])],
                             catch_exceptions=False)
    assert keras_run.exit_code == file_run.exit_code == 0, file_run.output
    a, b = json.loads(keras_run.stdout), json.loads(file_run.stdout)
    assert a["top1_accuracy"] == b["top1_accuracy"]
    assert a["confusion_matrix"] == b["confusion_matrix"]
    # A random tiny model predicts outside the folders' classes: compare what it predicted.
    shown_a, shown_b = a["errors"]["shown"], b["errors"]["shown"]
    assert len(shown_a) == len(shown_b) == 10
    assert [(m["path"], m["predicted"]) for m in shown_a] == [
        (m["path"], m["predicted"]) for m in shown_b]
    np.testing.assert_allclose([m["probability"] for m in shown_a],
                               [m["probability"] for m in shown_b], atol=1e-4)


def test_benchmark_with_exported_file(runner: CliRunner, exported) -> None:
    result = runner.invoke(app, ["benchmark", "--weights", str(exported["int8"]), "--images",
                                 "2", "--photo-size", "64x48", "--repeats", "1", "--warmup",
                                 "0", "-b", "2", "-f", "json", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {t["name"] for t in report["timings"]} == {"model", "classify"}
    assert "classify/model" in report["ratios"]
    assert "no plain-Keras baseline" in result.stderr


def test_litert_predictor_batches(exported) -> None:
    from resnet_cli.inference import make_predictor
    from resnet_cli.runtimes.litert import LiteRTPredictor

    loaded = load_model(ModelOptions(weights=str(exported["litert"])))
    predictor = make_predictor(loaded, 4)
    assert isinstance(predictor, LiteRTPredictor)
    assert predictor.batch_size == 4 and predictor.shares_cpu
    images = np.random.default_rng(1).integers(0, 256, (4, TINY, TINY, 3), dtype=np.uint8)
    full = predictor(images)
    short = predictor(images[:3])  # padded, the rows are the same
    np.testing.assert_allclose(short, full[:3], atol=1e-6)
    assert make_predictor(loaded, 4, inputs=2).batch_size == 2
    assert make_predictor(loaded, 4)._interpreter is predictor._interpreter  # reused


def test_not_a_tflite_file(runner: CliRunner, tmp_path: Path, photos) -> None:
    fake = tmp_path / "fake.tflite"
    fake.write_text("hello")
    result = runner.invoke(app, ["classify", *photos, "--weights", str(fake)])
    assert result.exit_code == 1
    assert "is not a LiteRT (.tflite) model" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_wrong_image_size_for_exported_file(runner: CliRunner, exported, photos) -> None:
    result = runner.invoke(app, ["classify", *photos, "--weights", str(exported["litert"]),
                                 "--image-size", "96"])
    assert result.exit_code == 2
    assert f"takes {TINY}x{TINY} input; got --image-size 96" in result.output


def test_summary_and_explain_refuse_exported_files(runner: CliRunner, exported, photos,
                                                   tmp_path: Path) -> None:
    result = runner.invoke(app, ["summary", "--weights", str(exported["onnx"])])
    assert result.exit_code == 2 and "summary needs a Keras model" in result.output
    result = runner.invoke(app, ["explain", photos[0], "--weights", str(exported["litert"]),
                                 "-o", str(tmp_path / "maps")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: explain (gradients through its layers) needs a Keras model; "
        f"{exported['litert']} is an exported litert file. Use the model it was exported from."]
    assert not (tmp_path / "maps").exists()


def test_missing_onnxruntime_names_the_extra(runner: CliRunner, exported, photos,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    result = runner.invoke(app, ["classify", *photos, "--weights", str(exported["onnx"])])
    assert result.exit_code == 2
    assert "pip install 'resnet-cli[onnx]'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_real_command_prints_nothing_but_results(exported, photos) -> None:  # type: ignore[no-untyped-def]
    """The LiteRT runtime announces its XNNPACK delegate on the process's stderr (fd 2, which
    CliRunner cannot see): a real process shows that the line goes to the debug log."""
    import os
    import subprocess

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "resnet_cli", "classify", str(photos[0]),
                           "--weights", str(exported["litert"]), "-k", "1", "-f", "csv", "-q"],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines()[0].startswith("path,rank,index")
