"""OpenVINO IR (.xml + .bin): `resnet export --format openvino` (float32 and NNCF int8) and
the OpenVINO runtime behind every command that takes an exported file.

Files are exported once per module: the conftest's tiny ResNet50 (BatchNorm randomised, so
the folding inside the file matters) as a classifier and as an avg-pooled backbone, and the
conftest's trained shapes classifier as int8, calibrated on its own held-out images.
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


@pytest.fixture(scope="module")
def ov_files(exported, export_source, shapes_model, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Path]:
    """The conftest's float32 .xml, and a backbone and an int8 classifier exported here."""
    from resnet_cli.export import ExportFormat, export_model

    weights, _ = export_source
    folder = tmp_path_factory.mktemp("openvino")
    jobs = {
        "backbone": (ModelOptions(weights=str(weights), image_size=TINY, device="cpu",
                                  include_top=False, pooling="avg"), {}),
        "int8": (ModelOptions(weights=str(shapes_model["path"]), device="cpu"),
                 {"int8": True, "calibrate": shapes_model["paths"][:60]}),
    }
    files = {name: export_model(options, ExportFormat.openvino, folder / f"{name}.xml",
                                progress=False, **extra).path  # type: ignore[arg-type]
             for name, (options, extra) in jobs.items()}
    return {"fp32": exported["openvino"], **files}


@pytest.fixture
def photos(tmp_path: Path, sample_photos: list[Path]) -> list[str]:
    made = [str(make_image(tmp_path / f"x{i}.jpg", (80 + 7 * i, 60), seed=90 + i))
            for i in range(3)]
    return made + [str(p) for p in sample_photos[:3]]


def _rows(output: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(output)))


def test_export_writes_the_pair_with_its_card(ov_files) -> None:  # type: ignore[no-untyped-def]
    for path in ov_files.values():
        assert path.suffix == ".xml" and path.with_suffix(".bin").stat().st_size > 1000
        assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]  # no temporaries
    classifier = load_model(ModelOptions(weights=str(ov_files["fp32"])))
    assert classifier.runtime == "openvino"
    card = classifier.card
    assert (card.format, card.precision, card.image_size, card.include_top) == (
        "openvino", "float32", TINY, True)
    assert card.imagenet_labels and card.output_shape == (1000,)
    backbone = load_model(ModelOptions(weights=str(ov_files["backbone"])))
    assert (backbone.card.include_top, backbone.card.pooling, backbone.card.output_shape) == (
        False, "avg", (2048,))
    int8 = load_model(ModelOptions(weights=str(ov_files["int8"])))
    assert (int8.card.precision, int8.card.class_names, int8.card.resize) == (
        "int8", ("circle", "square"), "squash")


def test_classify_fp32_reproduces_keras(runner: CliRunner, ov_files, export_source,  # type: ignore[no-untyped-def]
                                        photos, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    args = ["classify", *photos, str(bad), "-k", "5", "-f", "csv", "-b", "4"]
    keras_run = runner.invoke(app, [*args, "--weights", str(export_source[0]),
                                    "--image-size", str(TINY)])
    file_run = runner.invoke(app, [*args, "--weights", str(ov_files["fp32"])])
    assert keras_run.exit_code == file_run.exit_code == 1  # the broken file, reported alike
    want, got = _rows(keras_run.stdout), _rows(file_run.stdout)
    assert [(r["path"], r["rank"], r["label"], r["error"]) for r in got] == [
        (r["path"], r["rank"], r["label"], r["error"]) for r in want]  # the same top-5
    for a, b in zip(got, want, strict=True):
        if b["probability"]:
            assert abs(float(a["probability"]) - float(b["probability"])) < 1e-4


def test_extract_with_backbone_matches_keras(runner: CliRunner, ov_files, tiny_backbone,  # type: ignore[no-untyped-def]
                                             export_source, photos, tmp_path: Path) -> None:
    out = tmp_path / "f.npy"
    result = runner.invoke(app, ["extract", *photos, "--weights", str(ov_files["backbone"]),
                                 "-o", str(out), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    keras_out = tmp_path / "k.npy"
    result = runner.invoke(app, ["extract", *photos, "--weights", str(export_source[0]),
                                 "--image-size", str(TINY), "-o", str(keras_out), "-q"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows, want = np.load(out), np.load(keras_out)
    assert rows.shape == want.shape == (len(photos), 2048)
    np.testing.assert_allclose(rows, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_int8_agrees_with_keras(ov_files, shapes_model) -> None:  # type: ignore[no-untyped-def]
    from resnet_cli.inference import predict_paths

    paths = shapes_model["paths"][60:]  # not the calibration images
    keras_loaded = load_model(ModelOptions(weights=str(shapes_model["path"])))
    int8_loaded = load_model(ModelOptions(weights=str(ov_files["int8"])))
    want = np.concatenate([b.outputs for b in predict_paths(paths, keras_loaded, batch_size=16,
                                                            progress=False)])
    got = np.concatenate([b.outputs for b in predict_paths(paths, int8_loaded, batch_size=16,
                                                           progress=False)])
    truth = np.asarray(shapes_model["truth"])[60:]
    agreement = float(np.mean(want.argmax(1) == got.argmax(1)))
    keras_accuracy = float(np.mean(want.argmax(1) == truth))
    int8_accuracy = float(np.mean(got.argmax(1) == truth))
    assert keras_accuracy > 0.9  # a model worth quantizing
    assert agreement >= 0.98, agreement
    assert abs(int8_accuracy - keras_accuracy) <= 0.02
    assert float(np.abs(got - want).max()) < 0.1


def test_evaluate_and_benchmark_take_an_xml(runner: CliRunner, ov_files, export_source,  # type: ignore[no-untyped-def]
                                            tmp_path: Path) -> None:
    from resnet_cli.labels import load_imagenet_labels

    data = write_class_dataset(tmp_path / "data")
    for folder, label in zip(sorted(data.iterdir()), load_imagenet_labels()[:3], strict=True):
        folder.rename(data / label.name)
    common = ["evaluate", str(data), "-f", "json"]
    keras_run = runner.invoke(app, [*common, "--weights", str(export_source[0]),
                                    "--image-size", str(TINY)], catch_exceptions=False)
    file_run = runner.invoke(app, [*common, "--weights", str(ov_files["fp32"])],
                             catch_exceptions=False)
    assert keras_run.exit_code == file_run.exit_code == 0, file_run.output
    a, b = json.loads(keras_run.stdout), json.loads(file_run.stdout)
    assert a["confusion_matrix"] == b["confusion_matrix"]
    assert [m["predicted"] for m in a["errors"]["shown"]] == [
        m["predicted"] for m in b["errors"]["shown"]]

    result = runner.invoke(app, ["benchmark", "--weights", str(ov_files["int8"]), "--images",
                                 "2", "--photo-size", "64x48", "--repeats", "1", "--warmup",
                                 "0", "-b", "2", "-f", "json", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {t["name"] for t in report["timings"]} == {"model", "classify"}
    assert all(t["images_per_s"]["median"] > 0 for t in report["timings"])


def test_precision_is_openvinos_inference_precision(ov_files, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from resnet_cli.inference import make_predictor
    from resnet_cli.runtimes import openvino as runtime

    fp32 = load_model(ModelOptions(weights=str(ov_files["fp32"]), precision="fp32"))
    compiled = fp32.exported.compiled("LATENCY")  # type: ignore[union-attr]
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    monkeypatch.setattr("resnet_cli.devices.cpu_supports_bf16", lambda: False)
    assert runtime.inference_precision("bf16") == "f32"
    assert "no native bfloat16" in caplog.text
    monkeypatch.setattr("resnet_cli.devices.cpu_supports_bf16", lambda: True)
    assert runtime.inference_precision("BF16") == "bf16"
    bf16 = load_model(ModelOptions(weights=str(ov_files["fp32"]), precision="bf16"))
    predictor = make_predictor(bf16, 2)
    images = np.random.default_rng(2).integers(0, 256, (2, TINY, TINY, 3), dtype=np.uint8)
    full = make_predictor(fp32, 2)(images)
    half = predictor(images)
    assert half.shape == full.shape and np.isfinite(half).all()
    np.testing.assert_allclose(half.sum(1), 1, atol=2e-2)  # still probabilities


def test_predictor_splits_batches_over_streams(ov_files) -> None:  # type: ignore[no-untyped-def]
    from resnet_cli.inference import make_predictor
    from resnet_cli.runtimes.openvino import OpenVINOPredictor

    loaded = load_model(ModelOptions(weights=str(ov_files["fp32"])))
    single = make_predictor(loaded, 1)
    predictor = make_predictor(loaded, 8)
    assert isinstance(predictor, OpenVINOPredictor) and predictor.shares_cpu
    assert len(single._requests) == 1
    images = np.random.default_rng(1).integers(0, 256, (8, TINY, TINY, 3), dtype=np.uint8)
    one_by_one = np.concatenate([single(images[i:i + 1]) for i in range(8)])
    for count in (8, 5, 1):  # a full batch, a short one, one image: rows in input order
        np.testing.assert_allclose(predictor(images[:count]), one_by_one[:count], atol=1e-5)
    make_predictor(loaded, 8)
    assert set(loaded.exported._compiled) <= {"LATENCY", "THROUGHPUT"}  # type: ignore[union-attr]


@pytest.mark.parametrize("damage", ["corrupt_xml", "missing_bin", "no_card"])
def test_broken_files_are_one_line(runner: CliRunner, ov_files, photos, tmp_path: Path,  # type: ignore[no-untyped-def]
                                   damage: str) -> None:
    import shutil

    xml = tmp_path / "m.xml"
    shutil.copy(ov_files["fp32"], xml)
    shutil.copy(ov_files["fp32"].with_suffix(".bin"), xml.with_suffix(".bin"))
    if damage == "corrupt_xml":
        xml.write_text(xml.read_text()[:5000])
        expected = "OpenVINO cannot read it"
    elif damage == "missing_bin":
        xml.with_suffix(".bin").unlink()
        expected = "its weights file m.bin is missing"
    else:
        xml.write_text(xml.read_text().replace("resnet_cli_card", "something_else"))
        expected = "has no resnet card"
    result = runner.invoke(app, ["classify", photos[0], "--weights", str(xml)])
    assert result.exit_code == 1, result.output
    assert expected in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_option_rules(runner: CliRunner, ov_files, photos, tmp_path: Path,  # type: ignore[no-untyped-def]
                      monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = runner.invoke(app, ["classify", photos[0], "--weights", str(ov_files["fp32"]),
                              "--device", "gpu"])
    assert gpu.exit_code == 2 and "runs on the CPU (openvino)" in gpu.output
    size = runner.invoke(app, ["classify", photos[0], "--weights", str(ov_files["fp32"]),
                               "--image-size", "96"])
    assert size.exit_code == 2 and f"takes {TINY}x{TINY} input" in size.output
    summary = runner.invoke(app, ["summary", "--weights", str(ov_files["fp32"])])
    assert summary.exit_code == 2 and "summary needs a Keras model" in summary.output
    existing = runner.invoke(app, ["export", "--weights", "none", "--image-size", "32",
                                   "-f", "openvino", "-o", str(ov_files["fp32"])])
    assert existing.exit_code == 1 and "already exists" in existing.output
    suffix = runner.invoke(app, ["export", "--weights", "none", "-f", "openvino",
                                 "-o", str(tmp_path / "m.bin")])
    assert suffix.exit_code == 2 and "name the output m.xml" in suffix.output
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails
    missing = runner.invoke(app, ["classify", photos[0], "--weights", str(ov_files["fp32"])])
    assert missing.exit_code == 2 and "pip install 'resnet-cli[openvino]'" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
