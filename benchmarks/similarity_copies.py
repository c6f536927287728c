"""Copies found by `resnet duplicates --weights none` (perceptual hash only) among photos.

The "photos" are the real ones in sample_images/ plus, for variety, crops of them (the four
quadrants and the centre, each half the width and height): 6 per source. (Mirrored crops
were tried and dropped: the mirrored top-right quadrant of the rocket's sky, or of Grace
Hopper's dark jacket, is a near copy of the top-left one, so those "different photos" really
are copies of each other.) Every photo gets three copies: resized to half its size,
recompressed as JPEG quality 30, and cropped by 4% (2% off each side). The script runs the
real command line and prints the share of (photo, copy) pairs that land in one group, and
the groups that mix different photos.

Example: python benchmarks/similarity_copies.py
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from _cli import resnet, work_folder
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
KINDS = ("resized", "q30", "crop4")


def photos_of(path: Path) -> list[Image.Image]:
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    w, h = image.size
    boxes = [(0, 0, w, h), (0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2),
             (0, h // 2, w // 2, h), (w // 2, h // 2, w, h),
             (w // 4, h // 4, 3 * w // 4, 3 * h // 4)]
    return [image.crop(box) for box in boxes]


def write_set(folder: Path) -> dict[str, str]:
    """Photos and their copies; returns file name -> photo id."""
    owner: dict[str, str] = {}
    number = 0
    for source in sorted((REPO / "sample_images").glob("*.jpg")):
        for photo in photos_of(source):
            pid = f"p{number:03d}"
            number += 1
            w, h = photo.size
            dx, dy = round(w * 0.02), round(h * 0.02)
            half = photo.resize((w // 2, h // 2), Image.Resampling.LANCZOS)
            versions = {"orig": (photo, 95), "resized": (half, 90), "q30": (photo, 30),
                        "crop4": (photo.crop((dx, dy, w - dx, h - dy)), 90)}
            for kind, (image, quality) in versions.items():
                name = f"{pid}_{kind}.jpg"
                image.save(folder / name, quality=quality)
                owner[name] = pid
    return owner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with work_folder(args.workdir, prefix="similarity-copies-") as root:
        images = root / "photos"
        images.mkdir(exist_ok=True)
        owner = write_set(images)
        done = resnet("duplicates", str(images), "--weights", "none", "--format", "json",
                      "--html", str(root / "copies.html"))
        groups = json.loads(done.stdout)
        group_of = {Path(p).name: n for n, g in enumerate(groups) for p in g["paths"]}
        photos = sorted(set(owner.values()))
        pairs = [(f"{pid}_orig.jpg", f"{pid}_{kind}.jpg") for pid in photos for kind in KINDS]
        grouped = Counter(kind for pid in photos for kind in KINDS
                          if group_of.get(f"{pid}_orig.jpg") is not None
                          and group_of.get(f"{pid}_orig.jpg") == group_of.get(f"{pid}_{kind}.jpg"))
        mixed = [g for g in groups if len({owner[Path(p).name] for p in g["paths"]}) > 1]
        total = sum(grouped.values())
        print(f"photos: {len(photos)} ({len(owner)} files with their copies), groups: "
              f"{len(groups)}, kinds: {Counter(g['kind'] for g in groups)}")
        print(f"copy pairs grouped: {total}/{len(pairs)} ({total / len(pairs):.1%}); "
              + ", ".join(f"{k} {grouped[k]}/{len(photos)}" for k in KINDS))
        print(f"groups mixing different photos: {len(mixed)}")
        for g in mixed:
            print("  mixed:", [Path(p).name for p in g["paths"]], file=sys.stderr)


if __name__ == "__main__":
    main()
