"""Train a ResNet50 from scratch on synthetic shapes, then judge the saved model (issue #13).

Each image is a circle or a square at a random position and size on a smooth random texture
(160x160 PNGs; 300 per class for training, 100 per class held out). The script runs the real
command line, `resnet finetune train/ --classes 2 --weights none --image-size 160 --epochs 12
--resize squash`, then `resnet evaluate` of the saved model on its own training images and on
the held-out ones, and prints the last epoch's training accuracy beside both.

A saved model whose BatchNorm statistics do not match its weights scores far below its last
epoch's training accuracy here: that is what the precise-BN step fixes.

Example: python benchmarks/finetune_shapes.py --workdir /tmp/shapes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np
from _cli import resnet, work_folder
from PIL import Image, ImageDraw

SIZE = 160


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour texture: low-resolution noise, upsampled bicubically."""
    coarse = rng.uniform(40, 215, (6, 6, 3)).astype(np.uint8)
    smooth = Image.fromarray(coarse, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    noisy = np.asarray(smooth, dtype=np.float32) + rng.normal(0, 6, (size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def draw_shape(rng: np.random.Generator, kind: str, size: int) -> tuple[Image.Image,
                                                                         tuple[int, ...]]:
    """One image with a `kind` ("circle" or "square") on a texture, and its bounding box."""
    image = Image.fromarray(texture(rng, size), "RGB")
    extent = int(rng.integers(size // 6, size // 3))
    x0 = int(rng.integers(0, size - extent))
    y0 = int(rng.integers(0, size - extent))
    box = (x0, y0, x0 + extent, y0 + extent)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    pen = ImageDraw.Draw(image)
    if kind == "circle":
        pen.ellipse(box, fill=colour, outline=(0, 0, 0), width=2)
    else:
        pen.rectangle(box, fill=colour, outline=(0, 0, 0), width=2)
    return image, box


def write_shapes(root: Path, *, per_class: int, held_out: int, seed: int) -> None:
    """Write train/<shape>/*.png and test/<shape>/*.png."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", held_out)):
        for kind in ("circle", "square"):
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw_shape(rng, kind, SIZE)[0].save(folder / f"{i:04d}.png")


def evaluate(folder: Path, model: Path) -> float:
    report = json.loads(resnet("evaluate", str(folder), "--weights", str(model), "--format",
                               "json", "--quiet").stdout)
    return float(report["top1_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--held-out", type=int, default=100, help="test images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the dataset and the run here (default: a temporary folder)")
    parser.add_argument("extra", nargs="*", help="more `resnet finetune` options, after --")
    args = parser.parse_args()

    with work_folder(args.workdir, prefix="shapes-") as root:
        if not (root / "train").is_dir():
            write_shapes(root, per_class=args.per_class, held_out=args.held_out,
                         seed=args.seed)
        run = root / "run"
        started = time.perf_counter()
        resnet("finetune", str(root / "train"), "--classes", "2", "-o", str(run), "--weights",
               "none", "--image-size", str(SIZE), "--epochs", str(args.epochs), "--resize",
               "squash", "--overwrite", *args.extra)
        wall = time.perf_counter() - started
        with open(run / "history.csv", newline="", encoding="utf-8") as handle:
            history = list(csv.DictReader(handle))
        model = run / "model.keras"
        result = {
            "last_epoch_train_accuracy": round(float(history[-1]["accuracy"]), 4),
            "last_epoch_val_accuracy": round(float(history[-1]["val_accuracy"] or "nan"), 4),
            "saved_model_on_train": round(evaluate(root / "train", model), 4),
            "saved_model_on_held_out": round(evaluate(root / "test", model), 4),
            "epochs_run": len(history),
            "finetune_wall_seconds": round(wall, 1),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
