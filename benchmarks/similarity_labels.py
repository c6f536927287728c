"""Label errors found by `resnet audit` on scikit-learn's digits with 10% of labels moved.

The 1,797 8x8 digits are written as 32x32 RGB PNGs (as benchmarks/finetune_digits.py does)
and split 50/50, stratified: `pretrain/` trains a ResNet50 from scratch
(`resnet finetune --weights none --image-size 32 --no-flip`), and `audit/`, which that model
never saw, gets 10% of its images moved into a wrong class folder (chosen at random, the
wrong class uniformly among the other nine). `resnet audit audit/ --weights RUN/model.keras`
then ranks its label issues, and the script prints recall (moved images found), precision
(found images that were moved) and how often the suggested class is the true one. With
`--also-random` it runs the same audit on the features of a random-weight ResNet50 too.

Needs the data extra and scikit-learn: pip install -e '.[data]'.

Example: python benchmarks/similarity_labels.py
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from _cli import resnet, work_folder
from PIL import Image

SIZE = 32


def write_split(root: Path, *, noise: float, seed: int) -> dict[str, str]:
    """pretrain/<d>/*.png and audit/<label>/*.png; returns the moved files' true classes."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    pre, aud = train_test_split(np.arange(len(pixels)), test_size=0.5, stratify=digits.target,
                                random_state=seed)
    rng = np.random.default_rng(seed)
    moved = set(rng.choice(aud, size=round(noise * len(aud)), replace=False).tolist())
    truth: dict[str, str] = {}
    for split, indices in (("pretrain", pre), ("audit", aud)):
        for i in indices.tolist():
            label = int(digits.target[i])
            if i in moved:
                label = int(rng.choice([c for c in range(10) if c != label]))
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{i:04d}.png"
            image = Image.fromarray(pixels[i], "L").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
            image.convert("RGB").save(path)
            if i in moved:
                truth[path.name] = str(digits.target[i])
    return truth


def score(out: Path, truth: dict[str, str], audited: int, what: str) -> None:
    with open(out / "label_issues.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    found = {Path(r["path"]).name: r["suggested"] for r in rows}
    hits = [name for name in found if name in truth]
    right = sum(found[name] == truth[name] for name in hits)
    print(f"{what}: {audited} images, {len(truth)} moved; flagged {len(found)}: "
          f"recall {len(hits) / len(truth):.3f}, precision {len(hits) / max(len(found), 1):.3f}, "
          f"right class suggested {right}/{len(hits)} ({right / max(len(hits), 1):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--also-random", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with work_folder(args.workdir, prefix="similarity-labels-") as root:
        truth = write_split(root, noise=0.10, seed=args.seed)
        audited = sum(1 for _ in (root / "audit").rglob("*.png"))
        run = root / "run"
        started = time.perf_counter()
        if not (run / "model.keras").exists():
            resnet("finetune", str(root / "pretrain"), "--classes", "10", "--weights", "none",
                   "--image-size", "32", "--no-flip", "--epochs", str(args.epochs), "-q",
                   "-o", str(run))
        trained = time.perf_counter() - started
        started = time.perf_counter()
        done = resnet("audit", str(root / "audit"), "--weights", str(run / "model.keras"),
                      "-q", "-o", str(root / "out"))
        print(done.stdout, end="")
        print(f"finetune on pretrain/ {trained:.0f} s, audit {time.perf_counter() - started:.0f} s")
        score(root / "out", truth, audited, "features of the model finetuned on pretrain/")
        if args.also_random:
            resnet("audit", str(root / "audit"), "--weights", "none", "--image-size", "32",
                   "-q", "-o", str(root / "out-random"))
            score(root / "out-random", truth, audited, "features of a random-weight ResNet50")


if __name__ == "__main__":
    main()
