""".tflite exports carry the standard TFLite model metadata: MediaPipe's ImageClassifier reads
the class names from it and agrees with `resnet classify` on the same file; our card is still
read.

The photos are the real ones of sample_images/, brought to a size at which neither MediaPipe
nor the tool resamples (the model's size, or for crop a size whose centre box is exactly the
model's size), so the two runs see the same pixels and must give the same numbers.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, randomise_batch_norm
from PIL import Image
from typer.testing import CliRunner

from resnet_cli.cli import app
from resnet_cli.models import ModelOptions, load_model

NAMES = ("red fox", "tabby cat", "Schäferhund")  # a space and a non-ASCII letter, on purpose
CROP_SIZE = 56  # a 64x80 photo's centre box (0.875 x its shorter side) is exactly 56x56


def _metadata(path: Path):  # type: ignore[no-untyped-def]
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    from resnet_cli.runtimes.litert import read_metadata

    data = read_metadata(path.read_bytes(), where=str(path)).get("TFLITE_METADATA")
    assert data is not None and schema.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0)
    return schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAs(data, 0))


def _photos(sources: list[Path], folder: Path, size: tuple[int, int]) -> list[str]:
    folder.mkdir(exist_ok=True)
    paths = []
    for source in sources:
        with Image.open(source) as image:
            paths.append(str(folder / f"{source.stem}.png"))
            image.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(paths[-1])
    return paths


def _classify(runner: CliRunner, model: Path, paths: list[str], classes: int, *extra: str
              ) -> list[dict[int, tuple[str, float]]]:
    """`resnet classify`'s (label, probability) of every class index, for each image."""
    result = runner.invoke(app, ["classify", *paths, "--weights", str(model), "-k",
                                 str(classes), "-f", "json", "-q", *extra],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {row["path"]: row["predictions"] for row in json.loads(result.stdout)}
    return [{p["index"]: (p["label"], p["probability"]) for p in rows[path]}
            for path in paths]


def _mediapipe(model: Path, paths: list[str], *, crop: bool
               ) -> list[dict[int, tuple[str, float]]]:
    """MediaPipe's (category name, score) of every class index, for each image; with `crop`,
    the region of interest that mirrors the tool's crop (the centre square of 0.875 x the
    shorter side)."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision
    from mediapipe.tasks.python.components.containers.rect import RectF

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(model)), max_results=-1)
    results = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for path in paths:
            image = mp.Image.create_from_file(path)
            processing = None
            if crop:  # the README's recipe (the shift is 0 here: the box is the model's size)
                w, h = image.width, image.height
                side = 0.875 * min(w, h)
                shift = (side / CROP_SIZE - 1) / 2
                left, upper = (w - side) / 2 + shift, (h - side) / 2 + shift
                processing = vision.ImageProcessingOptions(region_of_interest=RectF(
                    left=left / w, top=upper / h, right=(left + side) / w,
                    bottom=(upper + side) / h))
            (head,) = classifier.classify(image, processing).classifications
            results.append({c.index: (c.category_name, c.score) for c in head.categories})
    return results


def _assert_agree(theirs: list[dict[int, tuple[str, float]]],
                  ours: list[dict[int, tuple[str, float]]], tolerance: float) -> None:
    """Same names and scores for every class, and MediaPipe's top category is classify's
    top-1 (or, where int8 scores tie at the top, one of the tied classes)."""
    for mine, other in zip(ours, theirs, strict=True):
        assert sorted(mine) == sorted(other)
        assert {i: name for i, (name, _) in other.items()} == \
            {i: name for i, (name, _) in mine.items()}
        got = np.array([other[i][1] for i in sorted(mine)])
        want = np.array([mine[i][1] for i in sorted(mine)])
        np.testing.assert_allclose(got, want, rtol=0, atol=tolerance)
        top = max(other.values(), key=lambda item: item[1])[0]  # MediaPipe's first category
        tied = {mine[i][0] for i in sorted(mine) if want[i] == want.max()}
        assert top == max(mine.values(), key=lambda item: item[1])[0] or \
            (len(tied) > 1 and top in tied)


@pytest.fixture(scope="module")
def named_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small classifier with its own class names, in a finetune-style run folder (card:
    crop), exported as float32 .tflite. (A small convolutional net, not a ResNet: export and
    the metadata only need a Keras classifier and its card, and it converts in seconds.)"""
    import keras

    from resnet_cli.export import ExportFormat, export_model

    keras.utils.set_random_seed(3)
    inputs = keras.Input((CROP_SIZE, CROP_SIZE, 3))
    x = inputs
    for filters in (8, 16, 32):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(NAMES), activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    randomise_batch_norm(model, seed=1)
    run = tmp_path_factory.mktemp("named_run")
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"resnet_cli_model": {
        "base_model": "resnet50", "image_size": CROP_SIZE, "preprocess_mode": "caffe",
        "class_names": list(NAMES), "resize": "crop"}}))
    return export_model(ModelOptions(weights=str(run / "model.keras"), device="cpu"),
                        ExportFormat.litert, run / "named.tflite", progress=False).path


@pytest.mark.parametrize("name", ["litert", "int8"])
def test_standard_metadata_beside_our_card(exported, name: str) -> None:
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    from resnet_cli.labels import load_imagenet_labels

    path = exported[name]
    meta = _metadata(path)
    assert meta.minParserVersion == b"1.0.0" and b"resnet50" in meta.name
    (graph,) = meta.subgraphMetadata
    (image,) = graph.inputTensorMetadata
    assert image.content.contentPropertiesType == schema.ContentProperties.ImageProperties
    assert image.content.contentProperties.colorSpace == schema.ColorSpaceType.RGB
    assert (image.stats.min, image.stats.max) == ([0.0], [255.0])  # raw uint8 pixels
    (norm,) = image.processUnits
    assert (norm.options.mean, norm.options.std) == ([0.0], [1.0])  # identity
    (output,) = graph.outputTensorMetadata
    (labels,) = output.associatedFiles
    assert (labels.name, labels.type) == (b"labels.txt",
                                          schema.AssociatedFileType.TENSOR_AXIS_LABELS)
    with zipfile.ZipFile(path) as archive:  # the label file, appended after the model
        lines = archive.read("labels.txt").decode().split("\n")
    assert lines == [label.name for label in load_imagenet_labels()]
    loaded = load_model(ModelOptions(weights=str(path)))  # our card is still read
    assert loaded.card is not None and loaded.image_size == TINY
    assert loaded.labels == load_imagenet_labels()


def test_backbone_metadata_has_no_labels(exported) -> None:
    (graph,) = _metadata(exported["backbone"]).subgraphMetadata
    (output,) = graph.outputTensorMetadata
    assert output.name == b"features" and not output.associatedFiles
    assert not zipfile.is_zipfile(exported["backbone"])


@pytest.mark.parametrize("name", ["litert", "int8"])
def test_mediapipe_agrees_with_classify(runner: CliRunner, exported, sample_photos,
                                        tmp_path: Path, name: str) -> None:
    paths = _photos(sample_photos, tmp_path / "photos", (TINY, TINY))
    ours = _classify(runner, exported[name], paths, 1000, "--resize", "squash")
    theirs = _mediapipe(exported[name], paths, crop=False)
    _assert_agree(theirs, ours, 1e-4 if name == "litert" else 1 / 256 + 1e-6)


def test_mediapipe_shows_our_class_names_and_crops_like_classify(
        runner: CliRunner, named_export: Path, sample_photos, tmp_path: Path) -> None:
    meta = _metadata(named_export)
    assert b"centre square" in meta.subgraphMetadata[0].inputTensorMetadata[0].description
    with zipfile.ZipFile(named_export) as archive:
        assert archive.read("labels.txt").decode().split("\n") == list(NAMES)
    paths = _photos(sample_photos, tmp_path / "photos", (64, 80))  # portrait: box 56x56
    ours = _classify(runner, named_export, paths, len(NAMES), "--resize", "crop")
    theirs = _mediapipe(named_export, paths, crop=True)
    assert [theirs[0][i][0] for i in range(len(NAMES))] == list(NAMES)
    _assert_agree(theirs, ours, 1e-4)


def test_without_mediapipe_the_file_has_our_card_and_one_warning(
        export_source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from resnet_cli.export import ExportFormat, export_model, tflite_metadata
    from resnet_cli.runtimes.litert import read_metadata

    monkeypatch.setattr(tflite_metadata, "_mediapipe_metadata", lambda: None)
    weights, _ = export_source
    out = export_model(ModelOptions(weights=str(weights), image_size=TINY, device="cpu"),
                       ExportFormat.litert, tmp_path / "m.tflite", progress=False).path
    entries = read_metadata(out.read_bytes(), where=str(out))
    assert "resnet_cli_card" in entries and "TFLITE_METADATA" not in entries
    assert not zipfile.is_zipfile(out)
    assert load_model(ModelOptions(weights=str(out))).card.base_model == "resnet50"
    assert [r.message for r in caplog.records if "resnet-cli[mediapipe]" in r.message]
