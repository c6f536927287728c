"""How far `--precision bf16` outputs drift from fp32, with a model whose weights are trained.

    .venv/bin/python benchmarks/precision_drift.py [--epochs 6] [--size 64]

No ImageNet weights are available offline, so this trains a ResNet50 from scratch for a few
minutes on a 4-class synthetic task (a reddish ellipse, a greenish rectangle, a bluish triangle
or yellowish stripes drawn on photo-like backgrounds), saves it as a finetuned `.keras`
model with its model card, and loads it twice through `models.load_model`: once in fp32 and
once with precision="bf16". Both run through `inference.Predictor` on

* held-out synthetic images of the four classes,
* the real photographs in sample_images/ and photo-like synthetic pictures (outside the
  classes, so many predictions sit near a decision boundary: a harder test of agreement),

and the script prints top-1 agreement, the largest and mean absolute probability difference
and the held-out accuracy of both. Trained weights with real batch-norm statistics matter
here: random weights give degenerate activations whose drift says little.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from resnet_cli.card import ModelCard, card_entry
from resnet_cli.devices import cpu_supports_bf16
from resnet_cli.images import load_image
from resnet_cli.inference import Predictor
from resnet_cli.models import ModelOptions, load_model
from resnet_cli.photos import photo_like

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["ellipse", "rectangle", "triangle", "stripes"]
FAMILIES = [(200, 60, 60), (60, 190, 70), (60, 80, 210), (220, 200, 40)]  # colour per class


def draw_example(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A photo-like background with one shape of class `label` on it."""
    img = photo_like((size, size), seed=int(rng.integers(1 << 31)))
    draw = ImageDraw.Draw(img)
    colour = np.clip(np.array(FAMILIES[label]) + rng.integers(-50, 51, 3), 0, 255)
    colour = tuple(int(c) for c in colour)
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    r = rng.uniform(0.2, 0.35) * size
    if label == 0:
        draw.ellipse((cx - r, cy - r * rng.uniform(0.6, 1), cx + r, cy + r), fill=colour)
    elif label == 1:
        draw.rectangle((cx - r, cy - r * rng.uniform(0.5, 1), cx + r, cy + r), fill=colour)
    elif label == 2:
        turn = rng.uniform(0, 2 * math.pi)
        draw.polygon([(cx + r * math.cos(turn + k * 2 * math.pi / 3),
                       cy + r * math.sin(turn + k * 2 * math.pi / 3)) for k in range(3)],
                     fill=colour)
    else:
        width = max(2, int(rng.uniform(0.04, 0.08) * size))
        for x in range(int(cx - r), int(cx + r), 2 * width):
            draw.rectangle((x, cy - r, x + width - 1, cy + r), fill=colour)
    noise = rng.normal(0, 4, (size, size, 3))
    return np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)


def dataset(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), count)
    return np.stack([draw_example(int(y), size, rng) for y in labels]), labels


def train(size: int, epochs: int, count: int) -> tuple[object, float]:
    """ResNet50 from scratch on the synthetic classes."""
    import keras
    from keras.applications import imagenet_utils

    keras.utils.set_random_seed(0)
    x, y = dataset(count, size, seed=1)
    x = imagenet_utils.preprocess_input(x.astype(np.float32), mode="caffe")
    model = keras.applications.ResNet50(weights=None, classes=len(CLASSES),
                                        input_shape=(size, size, 3))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9  # moving statistics settle within a short run
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        print(f"  epoch {epoch}: loss {history.history['loss'][-1]:.3f}, train accuracy "
              f"{history.history['accuracy'][-1]:.2f} ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return model, time.perf_counter() - started


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    diff = np.abs(a - b)
    return {"images": len(a), "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "max_abs_prob_diff": float(diff.max()), "mean_abs_prob_diff": float(diff.mean()),
            "max_top1_prob_diff": float(np.abs(a.max(1) - b.max(1)).max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image size for training and tests")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=800)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    size = args.size
    print(f"CPU bf16: {cpu_supports_bf16()}; training ResNet50 at {size} px, "
          f"{args.train_images} images, {args.epochs} epochs", flush=True)
    model, trained_s = train(size, args.epochs, args.train_images)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        (path.parent / "config.json").write_text(json.dumps(card_entry(ModelCard(
            base_model="resnet50", image_size=size, preprocess_mode="caffe",
            class_names=tuple(CLASSES)))))
        fp32 = load_model(ModelOptions(weights=str(path), device="cpu"))
        bf16 = load_model(ModelOptions(weights=str(path), device="cpu", precision="bf16"))
    print(f"policies: {fp32.policy} vs {bf16.policy}")

    test_x, test_y = dataset(256, size, seed=2)
    photos = [load_image(str(p), size=size) for p in sorted((REPO / "sample_images")
                                                            .glob("*.jpg"))]
    photos += [np.asarray(photo_like((640, 480), seed=100 + i).resize((size, size),
                                                                      Image.Resampling.BILINEAR))
               for i in range(59)]
    other = np.stack(photos)
    results = {}
    for name, batch in (("held-out synthetic, 4 trained classes", test_x),
                        ("real photos + photo-like pictures, outside the classes", other)):
        full = np.concatenate([Predictor(fp32, 32)(batch[i:i + 32])
                               for i in range(0, len(batch), 32)])
        half = np.concatenate([Predictor(bf16, 32)(batch[i:i + 32])
                               for i in range(0, len(batch), 32)])
        figures = compare(full, half)
        if batch is test_x:
            figures["accuracy_fp32"] = float((full.argmax(1) == test_y).mean())
            figures["accuracy_bf16"] = float((half.argmax(1) == test_y).mean())
        results[name] = figures
        print(f"\n{name} ({figures['images']} images)")
        for key, value in figures.items():
            if key != "images":
                print(f"  {key:<22} {value:.4f}")
    print(f"\n(trained for {trained_s:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
