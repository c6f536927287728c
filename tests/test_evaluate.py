"""`resnet evaluate`: scores checked against the model run directly on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_cli.cli import app
from resnet_cli.errors import DatasetError
from resnet_cli.evaluate import OTHER, compute_metrics, match_classes
from resnet_cli.images import ResizeMode, load_image
from resnet_cli.labels import build_labels, load_imagenet_labels

CLASSES = ("ant", "bee", "cow")


def write_images(folder: Path, count: int, seed: int, size: tuple[int, int] = (48, 40)) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for j in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / f"{j}.png")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> tuple[Path, Path, object]:
    """A finetune-style model (untrained: evaluate only needs a saved model and its card),
    and a 3-class dataset of 3 images each. Returns (model path, data dir, keras model)."""
    import keras

    from resnet_cli.card import ModelCard, card_entry
    from resnet_cli.images import ResizeMode
    from resnet_cli.registry import get_spec
    from resnet_cli.training import build_classifier

    root = tmp_path_factory.mktemp("evaluate")
    keras.utils.set_random_seed(5)
    model, _ = build_classifier(get_spec("resnet50"), len(CLASSES), 32, pretrained=False)
    model.save(root / "model.keras")
    card = ModelCard("resnet50", 32, "caffe", tuple(CLASSES), resize=ResizeMode.squash)
    (root / "config.json").write_text(json.dumps(card_entry(card)))
    for i, name in enumerate(CLASSES):
        write_images(root / "data" / name, 3, seed=i)
    return root / "model.keras", root / "data", model


def direct_probabilities(model, paths: list[str], size: int, mode: str,
                         resize: ResizeMode) -> np.ndarray:
    from keras.applications import imagenet_utils

    batch = np.stack([load_image(p, size=size, resize=resize) for p in paths]).astype("float32")
    return np.asarray(model(imagenet_utils.preprocess_input(batch, mode=mode), training=False))


def test_json_report_matches_the_model_run_directly(finetuned, runner):
    model_path, data, model = finetuned
    result = runner.invoke(app, ["evaluate", str(data), "--weights", str(model_path),
                                 "--format", "json", "--errors", "2", "--quiet"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)

    paths = [str(data / name / f"{j}.png") for name in CLASSES for j in range(3)]
    true = np.repeat(np.arange(3), 3)
    # The card says the model was trained on squashed images: evaluate uses that by default.
    probs = direct_probabilities(model, paths, 32, "caffe", ResizeMode.squash)
    predicted = probs.argmax(axis=1)
    assert report["images"] == 9
    assert report["top1_accuracy"] == pytest.approx(float((predicted == true).mean()))
    assert report["top5_accuracy"] is None  # 3 classes
    counts = np.zeros((3, 3), dtype=int)
    for t, p in zip(true, predicted, strict=True):
        counts[t, p] += 1
    assert report["confusion_matrix"] == {"rows": list(CLASSES), "columns": list(CLASSES),
                                          "counts": counts.tolist()}
    for i, row in enumerate(report["per_class"]):
        assert row["class"] == CLASSES[i] and row["support"] == 3
        assert row["recall"] == pytest.approx(counts[i, i] / 3)
        claimed = counts[:, i].sum()
        assert row["precision"] == pytest.approx(counts[i, i] / claimed if claimed else 0.0)
    wrong = int((predicted != true).sum())
    assert report["errors"]["count"] == wrong
    assert len(report["errors"]["shown"]) == min(2, wrong)
    shown = [e["probability"] for e in report["errors"]["shown"]]
    assert shown == sorted(shown, reverse=True)
    cropped = direct_probabilities(model, paths, 32, "caffe", ResizeMode.crop)
    for error in report["errors"]["shown"]:
        index = paths.index(error["path"])
        assert error["true"] == CLASSES[true[index]]
        assert error["predicted"] == CLASSES[predicted[index]] != error["true"]
        # The probabilities are those of squashed images, which crop would not give.
        assert error["probability"] == pytest.approx(probs[index, predicted[index]], abs=1e-5)
        assert abs(error["probability"] - cropped[index, predicted[index]]) > 1e-4


def test_table_report_and_unreadable_files(finetuned, runner, tmp_path):
    model_path, _, _ = finetuned
    copy = tmp_path / "data"
    for name in CLASSES:
        write_images(copy / name, 2, seed=10 + len(name))
    broken = copy / "bee" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    result = runner.invoke(app, ["evaluate", str(copy), "--weights", str(model_path),
                                 "--quiet"])
    assert result.exit_code == 1  # one file could not be read
    assert f"{broken}: " in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "6 images" in result.stdout and "top-1" in result.stdout
    assert "per class" in result.stdout and "confusion matrix" in result.stdout
    for name in CLASSES:
        assert name in result.stdout


def test_imagenet_model_on_wnid_folders(tiny_classifier_factory, runner, tmp_path):
    weights, model = tiny_classifier_factory("resnet50")
    labels = load_imagenet_labels()
    folders = [labels[1].wnid, labels[2].name]  # goldfish by wnid, great_white_shark by name
    for i, name in enumerate(folders):
        write_images(tmp_path / "data" / name, 2, seed=20 + i, size=(80, 70))
    result = runner.invoke(app, ["evaluate", str(tmp_path / "data"), "--weights", str(weights),
                                 "--image-size", "64", "--format", "json", "--quiet"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    paths = sorted(str(p) for p in (tmp_path / "data").rglob("*.png"))
    probs = direct_probabilities(model, paths, 64, "caffe", ResizeMode.crop)
    true = np.array([2, 2, 1, 1])  # ImageNet indices of great_white_shark/*, n01443537/*
    assert report["top1_accuracy"] == pytest.approx(float((probs.argmax(1) == true).mean()))
    top5 = np.argsort(-probs, axis=1)[:, :5]
    assert report["top5_accuracy"] == pytest.approx(float((top5 == true[:, None]).any(1).mean()))
    outside = int((~np.isin(probs.argmax(1), [1, 2])).sum())
    columns = report["confusion_matrix"]["columns"]
    assert columns[:2] == sorted(folders)
    assert (columns[-1] == OTHER) == (outside > 0)
    assert sum(map(sum, report["confusion_matrix"]["counts"])) == 4


def test_folders_that_name_no_class(finetuned, runner, tmp_path):
    model_path, _, _ = finetuned
    write_images(tmp_path / "data" / "ant", 1, seed=1)
    write_images(tmp_path / "data" / "yak", 1, seed=2)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "data"), "--weights",
                                 str(model_path), "--quiet"])
    assert result.exit_code == 1
    assert "yak" in result.stderr and "no class of" in result.stderr
    assert "ant, bee, cow" in result.stderr
    missing = runner.invoke(app, ["evaluate", str(tmp_path / "nowhere"), "--weights",
                                  str(model_path)])
    assert missing.exit_code == 1 and "does not exist" in missing.stderr


def test_compute_metrics_by_hand():
    probs = np.array([[0.7, 0.2, 0.1, 0.0, 0.0, 0.0],   # a -> a
                      [0.1, 0.6, 0.3, 0.0, 0.0, 0.0],   # a -> b
                      [0.2, 0.5, 0.3, 0.0, 0.0, 0.0],   # b -> b
                      [0.1, 0.1, 0.0, 0.0, 0.0, 0.8]])  # b -> f (not a dataset class)
    labels = build_labels(["a", "b", "c", "d", "e", "f"])
    result = compute_metrics([0, 0, 1, 1], probs, ["p0", "p1", "p2", "p3"],
                             class_names=["a", "b"], class_outputs=[0, 1], labels=labels,
                             max_mistakes=5)
    assert result["top1"] == 0.5
    assert result["top5"] == 1.0
    assert result["columns"] == ("a", "b", OTHER)
    assert result["confusion"] == ((1, 1, 0), (0, 1, 1))
    a, b = result["classes"]
    assert (a.precision, a.recall) == (1.0, 0.5)
    assert (b.precision, b.recall) == (0.5, 0.5)
    assert b.f1 == pytest.approx(0.5)
    assert [m.path for m in result["mistakes"]] == ["p3", "p1"]  # most confident first
    assert result["mistakes"][0].predicted_label == "f"


def test_match_classes_by_wnid_or_name():
    labels = load_imagenet_labels()
    assert match_classes(["n01440764", "goldfish", "Great_White_Shark"], labels,
                         source="m") == [0, 1, 2]
    with pytest.raises(DatasetError, match="match no class of m"):
        match_classes(["zzz", "yyy"], build_labels(["a"]), source="m")
