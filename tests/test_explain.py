"""`resnet explain`: Grad-CAM that localises, matches its definition, and the command's files.

A tiny classifier with the structure of a finetuned model (input -> nested backbone -> average
pooling -> dropout -> softmax Dense) is trained once per session on a synthetic localisation
task: a circle or a square at a random position on a smooth random texture. Its heatmaps must
peak on the shape. The same model, saved as a `.keras` file with its card, drives the command
line tests; one run uses a random-weight ResNet50 at 64 px for ImageNet class names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHAPES, TINY, make_image
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from resnet_cli.cli import app
from resnet_cli.errors import ImageError, UsageError
from resnet_cli.images import CROP_FRACTION, ResizeMode

CELL = 8  # pixels per feature-map cell of the tiny backbone (three stride-2 convolutions)


@pytest.fixture(scope="session")
def shapes_loaded(shapes_model: dict[str, object]):  # type: ignore[no-untyped-def]
    from resnet_cli.models import ModelOptions, load_model

    return load_model(ModelOptions(weights=str(shapes_model["path"])))


def _explain(loaded, paths, **kwargs):  # type: ignore[no-untyped-def]
    from resnet_cli.explain import explain_images

    setup, explanations = explain_images(paths, loaded, progress=False, **kwargs)
    return setup, list(explanations)


def _in_box(row: float, col: float, box: np.ndarray, margin: float) -> bool:
    x0, y0, x1, y1 = box
    return bool(x0 - margin <= col <= x1 + margin and y0 - margin <= row <= y1 + margin)


# ----- the heatmaps mean something ----------------------------------------------------------

def test_heatmap_peak_falls_on_the_shape(shapes_model, shapes_loaded) -> None:
    setup, explanations = _explain(shapes_loaded, shapes_model["paths"])
    assert setup.map_size == (TINY // CELL, TINY // CELL) and setup.score == "logit"
    assert setup.resize is ResizeMode.squash  # from the model card
    hits = correct = 0
    chance = []  # the share of cells a random map's peak could take that count as a hit
    centres = (np.arange(TINY // CELL) + 0.5) * CELL
    for explanation, truth, box in zip(explanations, shapes_model["truth"],
                                       shapes_model["boxes"], strict=True):
        heatmap = explanation.classes[0].heatmap
        row, col = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
        hits += _in_box(centres[row], centres[col], box, margin=CELL)
        correct += explanation.top_index == truth
        chance.append(np.mean([_in_box(r, c, box, CELL) for r in centres for c in centres]))
    count = len(explanations)
    assert correct / count >= 0.85, f"the tiny model did not learn: accuracy {correct / count}"
    random_rate = float(np.mean(chance))
    assert hits / count >= 0.8, (hits / count, random_rate)
    assert hits / count >= random_rate + 0.4, (hits / count, random_rate)


def test_heatmaps_are_class_activation_maps(shapes_model, shapes_loaded) -> None:
    """With average pooling and a Dense head, the logit's gradient is the class's Dense
    weights, so Grad-CAM is relu(features . W[:, c]) scaled to a peak of 1 (CAM)."""
    from resnet_cli.backbones import build_feature_model

    paths = shapes_model["paths"][:6]
    setup, explanations = _explain(shapes_loaded, paths, top_k=2, batch_size=4)
    features = np.asarray(build_feature_model(shapes_loaded, pooling=None)(
        np.stack([np.asarray(Image.open(p), np.float32) for p in paths]) / 127.5 - 1))
    kernel = np.asarray(shapes_loaded.model.get_layer("predictions").kernel)
    probs = np.asarray(shapes_loaded.model(
        np.stack([np.asarray(Image.open(p), np.float32) for p in paths]) / 127.5 - 1))
    for explanation, fmap, prob in zip(explanations, features, probs, strict=True):
        assert [c.rank for c in explanation.classes] == [1, 2]
        assert [c.index for c in explanation.classes] == list(np.argsort(-prob))
        assert explanation.top_index == explanation.classes[0].index
        for cls in explanation.classes:
            assert cls.label == SHAPES[cls.index]
            assert cls.probability == pytest.approx(prob[cls.index], abs=1e-5)
            cam = np.maximum(fmap @ kernel[:, cls.index], 0)
            expected = cam / cam.max() if cam.max() > 0 else cam
            assert cls.heatmap.dtype == np.float32 and cls.heatmap.shape == setup.map_size
            np.testing.assert_allclose(cls.heatmap, expected, atol=2e-4)


def test_plain_resnet_at_another_layer_matches_an_eager_reference(tiny_classifier_factory,
                                                                   tmp_path: Path) -> None:
    """A plain application model (no nesting), --layer inside it, against GradientTape run
    eagerly on the unfolded model, the way the Keras Grad-CAM example does it."""
    import keras
    import tensorflow as tf
    from keras.applications import imagenet_utils

    from resnet_cli.models import ModelOptions, load_model

    weights, model = tiny_classifier_factory("resnet50")
    loaded = load_model(ModelOptions(weights=str(weights), image_size=TINY))
    pixels = np.random.default_rng(3).integers(0, 256, (3, TINY, TINY, 3), dtype=np.uint8)
    paths = []
    for i, image in enumerate(pixels):
        paths.append(str(tmp_path / f"noise{i}.png"))
        Image.fromarray(image).save(paths[-1])
    setup, explanations = _explain(loaded, paths, layer="conv4_block6_out",
                                   resize=ResizeMode.squash, target_class="tabby")
    assert setup.layer == "conv4_block6_out" and setup.map_size == (4, 4)

    layer, pooled = model.get_layer("conv4_block6_out"), model.get_layer("avg_pool")
    reference = keras.Model(model.inputs[0], [layer.output, pooled.output])
    dense = model.get_layer("predictions")
    x = imagenet_utils.preprocess_input(pixels.astype(np.float32), mode="caffe")
    with tf.GradientTape() as tape:
        fmap, h = reference(x, training=False)
        logits = tf.matmul(h, dense.kernel) + dense.bias
        score = tf.reduce_sum(logits[:, 281])
    grads = tape.gradient(score, fmap)
    cam = tf.nn.relu(tf.reduce_sum(fmap * tf.reduce_mean(grads, axis=(1, 2), keepdims=True),
                                   axis=-1)).numpy()
    for explanation, expected, row in zip(explanations, cam, tf.nn.softmax(logits).numpy(),
                                          strict=True):
        (cls,) = explanation.classes
        assert (cls.index, cls.label) == (281, "tabby")
        assert cls.probability == pytest.approx(row[281], rel=1e-3, abs=1e-6)
        np.testing.assert_allclose(cls.heatmap, expected / max(expected.max(), 1e-30),
                                   atol=2e-3)


def test_usage_errors(shapes_loaded) -> None:
    with pytest.raises(UsageError, match="--top-k must be between 1 and 2"):
        _explain(shapes_loaded, ["x.png"], top_k=3)
    with pytest.raises(UsageError, match="give one of them"):
        _explain(shapes_loaded, ["x.png"], top_k=2, target_class="circle")
    with pytest.raises(UsageError, match="not a layer of tiny_backbone"):
        _explain(shapes_loaded, ["x.png"], layer="conv9")


# ----- the command ----------------------------------------------------------------------------

def test_cli_files_collisions_and_a_bad_file(runner: CliRunner, shapes_model,
                                             tmp_path: Path) -> None:
    shapes = shapes_model["paths"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = tmp_path / "one" / "a.png"
    second = tmp_path / "two" / "a.png"
    Image.open(shapes[0]).save(first)
    Image.open(shapes[1]).resize((96, 64)).save(second)  # another aspect ratio
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out" / "cam"  # created, parents too
    inputs = [str(first), str(bad), str(second), shapes[2]]
    result = runner.invoke(app, ["explain", *inputs, "--weights", str(shapes_model["path"]),
                                 "-o", str(out), "-b", "2", "--alpha", "0.4"])
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and str(bad) in lines[0] and lines[0].startswith("error:")
    assert "3 heatmaps (8x8" in lines[1] and "1 failed" in lines[1]
    assert sorted(p.name for p in out.iterdir()) == ["002.png", "a-2.png", "a.png",
                                                     "heatmaps.npz"]
    for name in ("a.png", "a-2.png"):
        with Image.open(out / name) as png:
            assert png.format == "PNG" and png.width > 300
    with Image.open(out / "a-2.png") as wide, Image.open(out / "a.png") as square:
        assert wide.width / wide.height > square.width / square.height  # the photo's aspect

    data = np.load(out / "heatmaps.npz", allow_pickle=False)
    assert set(data.files) == {"paths", "png", "rank", "class_index", "label", "probability",
                               "heatmaps"}
    assert list(data["paths"]) == [str(first), str(second), shapes[2]]
    assert list(data["png"]) == ["a.png", "a-2.png", "002.png"]
    assert data["heatmaps"].dtype == np.float32 and data["heatmaps"].shape == (3, 8, 8)
    assert data["heatmaps"].min() >= 0 and data["heatmaps"].max() <= 1
    assert data["probability"].dtype == np.float32
    assert ((data["probability"] >= 0) & (data["probability"] <= 1)).all()
    assert list(data["rank"]) == [1, 1, 1]
    assert [SHAPES[i] for i in data["class_index"]] == list(data["label"])

    again = runner.invoke(app, ["explain", str(first), "--weights", str(shapes_model["path"]),
                                "-o", str(out)])
    assert again.exit_code == 1
    assert again.stderr.count("\n") == 1 and "--overwrite" in again.stderr


@pytest.mark.parametrize("choice,index", [("square", 1), ("0", 0)])
def test_cli_class_by_name_and_index(runner: CliRunner, shapes_model, tmp_path: Path,
                                     choice: str, index: int) -> None:
    paths = shapes_model["paths"][:3]
    result = runner.invoke(app, ["explain", *paths, "--weights", str(shapes_model["path"]),
                                 "-o", str(tmp_path), "--class", choice, "-q"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # --quiet
    data = np.load(tmp_path / "heatmaps.npz", allow_pickle=False)
    assert list(data["class_index"]) == [index] * 3
    assert list(data["label"]) == [SHAPES[index]] * 3


def test_cli_top_k_gives_k_rows_per_image(runner: CliRunner, shapes_model,
                                          tmp_path: Path) -> None:
    paths = shapes_model["paths"][:2]
    result = runner.invoke(app, ["explain", *paths, "--weights", str(shapes_model["path"]),
                                 "-o", str(tmp_path), "-k", "2", "--resize", "crop"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    data = np.load(tmp_path / "heatmaps.npz", allow_pickle=False)
    assert list(data["rank"]) == [1, 2, 1, 2]
    assert list(data["png"]) == ["000.png", "000.png", "001.png", "001.png"]
    assert data["heatmaps"].shape == (4, 8, 8)
    assert sorted(data["class_index"][:2]) == [0, 1]


def test_cli_unknown_class_is_one_line_exit_2(runner: CliRunner, shapes_model,
                                              tmp_path: Path) -> None:
    result = runner.invoke(app, ["explain", shapes_model["paths"][0], "--weights",
                                 str(shapes_model["path"]), "-o", str(tmp_path / "out"),
                                 "--class", "sqare"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "did you mean square" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_imagenet_class_name_with_resnet50(runner: CliRunner, sample_photos,
                                                tmp_path: Path) -> None:
    result = runner.invoke(app, ["explain", str(sample_photos[1]), "--weights", "none",
                                 "--image-size", str(TINY), "-o", str(tmp_path),
                                 "--class", "tabby"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "conv5_block3_out" in result.stderr
    data = np.load(tmp_path / "heatmaps.npz", allow_pickle=False)
    assert list(data["class_index"]) == [281] and list(data["label"]) == ["tabby"]
    assert data["heatmaps"].shape == (1, 2, 2)
    assert (tmp_path / f"{sample_photos[1].stem}.png").is_file()


# ----- names and pictures ----------------------------------------------------------------------

def test_png_names_are_unique_and_in_input_order() -> None:
    from resnet_cli.render.explain import png_names

    paths = ["x/a.jpg", "y/a.png", "z/A.jpeg", "a-2.jpg", "b.jpg", "heatmaps.jpg"]
    assert png_names(paths) == ["a.png", "a-2.png", "A-3.png", "a-2-2.png", "b.png",
                                "heatmaps-2.png"]


@pytest.mark.parametrize("resize", [ResizeMode.crop, ResizeMode.squash])
def test_model_region_is_what_load_image_shows(tmp_path: Path, resize: ResizeMode) -> None:
    """A photo with a marker drawn where model_region says the input square's top-left cell
    is: the model's own input (load_image) shows the marker in that cell."""
    from resnet_cli.images import load_image
    from resnet_cli.render.explain import model_region

    width, height = 300, 200
    left, top, side_x, side_y = model_region(width, height, resize)
    if resize is ResizeMode.crop:
        assert side_x == side_y == height * CROP_FRACTION
    else:
        assert (left, top, side_x, side_y) == (0, 0, width, height)
    photo = Image.new("RGB", (width, height), "black")
    ImageDraw.Draw(photo).rectangle((left, top, left + side_x / 8, top + side_y / 8),
                                    fill="white")
    photo.save(tmp_path / "p.png")
    seen = load_image(str(tmp_path / "p.png"), size=TINY, resize=resize).mean(axis=-1)
    cell = TINY // 8
    assert seen[:cell - 1, :cell - 1].min() > 200
    assert seen[cell + 1:, :].max() < 60 and seen[:, cell + 1:].max() < 60


def test_render_overlay_draws_the_photo_at_its_aspect(tmp_path: Path) -> None:
    from resnet_cli.explain import ClassHeatmap, Explanation
    from resnet_cli.render.explain import render_overlay

    heatmap = np.zeros((7, 7), np.float32)
    heatmap[0, 0] = 1.0
    tall = make_image(tmp_path / "tall.jpg", (120, 300), seed=5)
    explanation = Explanation(path=str(tall), top_index=3, top_label="tabby",
                              top_probability=0.5, classes=(
                                  ClassHeatmap(1, 7, "a_very_long_class_name " * 4, 0.0004,
                                               heatmap),
                                  ClassHeatmap(2, 8, "other", 0.2, heatmap * 0)))
    out = tmp_path / "tall.png"
    render_overlay(explanation, out, layer="post_relu", resize=ResizeMode.crop, alpha=0.5)
    with Image.open(out) as png:
        assert png.mode == "RGB" and png.height > png.width / 2 * 1.5  # two tall panels
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    tall.unlink()
    with pytest.raises(ImageError, match="no such file"):
        render_overlay(explanation, out, layer="post_relu")
