"""Shared fixtures: tiny real images written with Pillow, and tiny real Keras models.

Models are built with random weights at 64 px and saved in Keras' own formats, once per
session, so the suite stays offline and fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_IMAGES = REPO / "sample_images"
TINY = 64  # pixels: small enough to be fast, large enough for every ResNet stage


@pytest.fixture(autouse=True)
def _offline_keras_home(tmp_path_factory: pytest.TempPathFactory,
                        monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test sees an empty Keras cache, never the developer's ~/.keras."""
    home = tmp_path_factory.mktemp("keras_home")
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def sample_photos() -> list[Path]:
    """The real photographs shipped in sample_images/ (see SOURCES.md)."""
    photos = sorted(SAMPLE_IMAGES.glob("*.jpg"))
    assert len(photos) >= 4
    return photos


def make_image(path: Path, size: tuple[int, int] = (80, 60), mode: str = "RGB",
               seed: int = 0, fmt: str | None = None) -> Path:
    """Write a real, non-uniform image file (smooth gradients plus noise) and return its path."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1),
                    (xx + yy) * 127 / max(w + h - 2, 1)], axis=-1)
    rgb = np.clip(rgb + rng.normal(0, 20, rgb.shape), 0, 255).astype(np.uint8)
    Image.fromarray(rgb, "RGB").convert(mode).save(path, format=fmt)
    return path


@pytest.fixture
def image_files(tmp_path: Path) -> list[Path]:
    """Three small RGB images of different sizes and formats."""
    return [
        make_image(tmp_path / "a.jpg", (96, 64), seed=1),
        make_image(tmp_path / "b.png", (50, 70), seed=2),
        make_image(tmp_path / "c.webp", (64, 64), seed=3),
    ]


@pytest.fixture(scope="session")
def tiny_classifier_factory(tmp_path_factory: pytest.TempPathFactory
                            ) -> Callable[[str], tuple[Path, object]]:
    """Build (once per variant) a random-weight classifier at 64 px and save its weights.

    Returns (path of the .weights.h5 file, the Keras model).
    """
    cache: dict[str, tuple[Path, object]] = {}

    def build(variant: str) -> tuple[Path, object]:
        if variant not in cache:
            import keras

            from resnet_cli.registry import get_spec

            keras.utils.set_random_seed(len(cache) + 7)
            spec = get_spec(variant)
            model = getattr(keras.applications, spec.constructor)(
                weights=None, input_shape=(TINY, TINY, 3))
            path = tmp_path_factory.mktemp("weights") / f"{variant}.weights.h5"
            model.save_weights(path)
            cache[variant] = (path, model)
        return cache[variant]

    return build


# ----- shared by the extract, feature-file, folding and inference tests ----------------------

@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Per variant (built once per session): the notop weights file, the plain Keras model,
    and the same model loaded through the CLI's model layer, at 64 px."""
    cache: dict[str, tuple[Path, object, object]] = {}

    def get(variant: str) -> tuple[Path, object, object]:
        if variant not in cache:
            import keras

            from resnet_cli.models import ModelOptions, load_model
            from resnet_cli.registry import get_spec

            keras.utils.set_random_seed(11 + len(cache))
            reference = getattr(keras.applications, get_spec(variant).constructor)(
                include_top=False, weights=None, input_shape=(TINY, TINY, 3))
            path = tmp_path_factory.mktemp("notop") / f"{variant}_notop.weights.h5"
            reference.save_weights(path)
            loaded = load_model(ModelOptions(model=variant, weights=str(path),
                                             include_top=False, image_size=TINY))
            cache[variant] = (path, reference, loaded)
        return cache[variant]

    return get


def all_layers(model: object) -> list[object]:
    """Every layer of a Keras model, those of nested models included."""
    import keras

    layers = []
    for layer in model.layers:  # type: ignore[attr-defined]
        layers.append(layer)
        if isinstance(layer, keras.Model):
            layers.extend(all_layers(layer))
    return layers


def randomise_batch_norm(model: object, seed: int = 0) -> None:
    """Give every BatchNormalization statistics far from Keras' identity initial values."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.3, channels),
                               rng.normal(0, 0.3, channels), rng.uniform(0.3, 3.0, channels)])


# ----- shared by the datasets and training tests -----------------------------------------------

CLASS_COLORS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}


def write_class_dataset(root: Path, per_class: int = 4) -> Path:
    """One folder per class of noisy, differently coloured real PNGs (40x36)."""
    for i, (name, color) in enumerate(CLASS_COLORS.items()):
        folder = root / name
        folder.mkdir(parents=True)
        for j in range(per_class):
            noise = np.random.default_rng(10 * i + j).normal(0, 25, (36, 40, 3))
            pixels = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"{j}.png")
    return root


# ----- exported models (test_export, test_runtimes): exported once per session ---------------

@pytest.fixture(scope="session")
def export_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A tiny resnet50 classifier's weights (BatchNorm statistics randomised, so folding
    matters) and a few calibration photos."""
    import keras

    keras.utils.set_random_seed(5)
    model = keras.applications.ResNet50(weights=None, input_shape=(TINY, TINY, 3))
    randomise_batch_norm(model, seed=3)
    folder = tmp_path_factory.mktemp("export_source")
    weights = folder / "tiny.weights.h5"
    model.save_weights(weights)
    photos = [make_image(folder / f"p{i}.jpg", (90, 70), seed=40 + i) for i in range(8)]
    return weights, photos


@pytest.fixture(scope="session")
def exported(export_source, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model exported once per session: name -> path."""
    weights, photos = export_source
    folder = tmp_path_factory.mktemp("exported")
    from resnet_cli.export import ExportFormat, export_model
    from resnet_cli.models import ModelOptions

    options = ModelOptions(weights=str(weights), image_size=TINY, device="cpu")
    backbone = ModelOptions(weights=str(weights), image_size=TINY, device="cpu",
                            include_top=False, pooling="avg")
    jobs = {
        "saved_model": (options, ExportFormat.saved_model, "sm", {}),
        "litert": (options, ExportFormat.litert, "m.tflite", {}),
        "onnx": (options, ExportFormat.onnx, "m.onnx", {}),
        "openvino": (options, ExportFormat.openvino, "m.xml", {}),
        "int8": (options, ExportFormat.litert, "m_int8.tflite",
                 {"int8": True, "calibrate": [str(p) for p in photos]}),
        "backbone": (backbone, ExportFormat.litert, "features.tflite", {}),
    }
    paths = {}
    for name, (opts, fmt, filename, extra) in jobs.items():
        paths[name] = export_model(opts, fmt, folder / filename, progress=False,
                                   **extra).path  # type: ignore[arg-type]
    return paths


@pytest.fixture(scope="session")
def keras_loaded(export_source):  # type: ignore[no-untyped-def]
    from resnet_cli.models import ModelOptions, load_model

    return load_model(ModelOptions(weights=str(export_source[0]), image_size=TINY))


# ----- a small trained classifier (explain, int8 export): trained once per session ----------

SHAPES = ("circle", "square")


def _shape_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` TINY x TINY images: a circle or square (alternating) of random size, colour and
    position on a smooth random texture; returns (images uint8, classes, boxes x0 y0 x1 y1)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, TINY, TINY, 3), np.uint8)
    boxes = np.zeros((count, 4))
    for i in range(count):
        coarse = rng.uniform(40, 200, (4, 4, 3)).astype(np.uint8)
        texture = np.asarray(Image.fromarray(coarse).resize((TINY, TINY),
                                                            Image.Resampling.BICUBIC), np.float32)
        texture += rng.normal(0, 12, texture.shape)
        img = Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8))
        r = int(rng.integers(7, 11))
        cx, cy = (int(v) for v in rng.integers(r + 1, TINY - r - 1, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (cx - r, cy - r, cx + r, cy + r)
        draw = ImageDraw.Draw(img)
        shape = draw.ellipse if i % 2 == 0 else draw.rectangle
        shape(box, fill=colour, outline=tuple(255 - c for c in colour), width=2)
        images[i], boxes[i] = np.asarray(img), box
    return images, np.arange(count) % 2, boxes


@pytest.fixture(scope="session")
def shapes_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The trained tiny classifier, saved as run/model.keras with its card, and held-out
    shape images written as PNG files with their classes and boxes."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((TINY, TINY, 3))
    x = inputs
    for filters, stride in ((16, 2), (32, 2), (64, 2), (64, 1)):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
    backbone = keras.Model(inputs, x, name="tiny_backbone")
    image = keras.Input((TINY, TINY, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone(image))
    x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    model = keras.Model(image, outputs, name="shapes_finetuned")
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    train, classes, _ = _shape_images(800, seed=0)
    model.fit(train.astype(np.float32) / 127.5 - 1, classes, epochs=16, batch_size=32,
              verbose=0)  # "tf" preprocessing, as the card says

    run = tmp_path_factory.mktemp("run")
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"resnet_cli_model": {
        "base_model": "resnet50v2", "image_size": TINY, "preprocess_mode": "tf",
        "class_names": list(SHAPES), "resize": "squash"}}))
    held_out, truth, boxes = _shape_images(120, seed=1)
    folder = tmp_path_factory.mktemp("shapes")
    paths = []
    for i, pixels in enumerate(held_out):
        paths.append(str(folder / f"{i:03d}.png"))
        Image.fromarray(pixels).save(paths[-1])
    return {"path": run / "model.keras", "model": model, "paths": paths, "truth": truth,
            "boxes": boxes}


# ----- index, search, duplicates, audit (test_index, test_search, test_audit) ---------------

SIM_SIZE = 32  # pixels: the smallest input every ResNet stage takes


@pytest.fixture(scope="session")
def sim_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight ResNet50 backbone at 32 px saved as a weights file: features that a
    later run reproduces exactly (unlike --weights none)."""
    import keras

    keras.utils.set_random_seed(5)
    model = keras.applications.ResNet50(include_top=False, weights=None,
                                        input_shape=(SIM_SIZE, SIM_SIZE, 3))
    path = tmp_path_factory.mktemp("sim") / "r50_32.weights.h5"
    model.save_weights(path)
    return path
