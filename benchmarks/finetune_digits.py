"""Train a ResNet50 from scratch on scikit-learn's handwritten digits, then evaluate it.

The 1,797 8x8 digits bundled with scikit-learn (no download) are written as 32x32 RGB PNGs in
one folder per class, split 80/20 (stratified, fixed seed) into train/ and test/. The script
runs the real command line with the tool's own defaults,
`resnet finetune train/ --classes 10 --weights none --image-size 32 --no-flip`, then
`resnet evaluate test/ --weights RUN/model.keras`, and prints the test accuracy and the time
spent. `--precision bf16` trains in mixed precision (the saved model is evaluated in fp32).
Needs the `bench` extra: pip install -e '.[bench]'.

Example: python benchmarks/finetune_digits.py
         python benchmarks/finetune_digits.py --precision bf16
         python benchmarks/finetune_digits.py --epochs 15 -- --val-split 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from _cli import resnet, work_folder
from PIL import Image

SIZE = 32


def write_digits(root: Path, *, test_fraction: float, seed: int) -> tuple[int, int]:
    """Write train/<digit>/*.png and test/<digit>/*.png; returns (train, test) counts."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    train_idx, test_idx = train_test_split(np.arange(len(pixels)), test_size=test_fraction,
                                           stratify=digits.target, random_state=seed)
    for split, indices in (("train", train_idx), ("test", test_idx)):
        for i in indices:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[i], "L").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
            image.convert("RGB").save(folder / f"{i:04d}.png")
    return len(train_idx), len(test_idx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default: finetune's own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 80/20 split")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="finetune's --precision")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the dataset and the run here (default: a temporary folder)")
    parser.add_argument("extra", nargs="*", help="more `resnet finetune` options, after --")
    args = parser.parse_args()

    with work_folder(args.workdir, prefix="digits-") as root:
        train, test = write_digits(root, test_fraction=0.2, seed=args.seed)
        print(f"dataset: {train} train / {test} test images in {root}", file=sys.stderr)
        run = root / "run"
        started = time.perf_counter()
        # Digits have a handedness: no horizontal flips. finetune holds out its own
        # validation split of train/; test/ is only seen by `resnet evaluate`.
        epochs = ["--epochs", str(args.epochs)] if args.epochs is not None else []
        resnet("finetune", str(root / "train"), "--classes", "10", "--weights", "none",
               "--image-size", str(SIZE), "--no-flip", "--precision", args.precision,
               *epochs, *args.extra,
               "-o", str(run), "--overwrite")
        wall = time.perf_counter() - started
        config = json.loads((run / "config.json").read_text())
        report = json.loads(resnet("evaluate", str(root / "test"), "--weights",
                                   str(run / "model.keras"), "--format", "json",
                                   "--quiet").stdout)
        result = {
            "test_accuracy": round(report["top1_accuracy"], 4),
            "test_images": report["images"],
            "macro_f1": round(report["macro_f1"], 4),
            "precision": args.precision,
            "policy": config["training"]["policy"],
            "epochs": config["options"]["epochs"],
            "epochs_run": len((run / "history.csv").read_text().splitlines()) - 1,
            "best_epoch": (config["training"].get("early_stopping") or {}).get("best_epoch"),
            "training_seconds": config["training_seconds"],
            "finetune_wall_seconds": round(wall, 1),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
