"""Does MediaPipe's ImageClassifier agree with `resnet classify` on an exported int8 .tflite?

Trains a ResNet50 from scratch on scikit-learn's digits (as benchmarks/finetune_digits.py
writes them: 32x32 RGB PNGs, split 80/20) with `--resize crop` by default, so that both
pipelines really resample every image (the centre 28x28 box up to 32x32: the tool with
Pillow, MediaPipe with its own resampler; with `--resize squash`, pass an `--image-size` other
than 32 for the same reason).
Then `resnet export --format litert --int8 --calibrate train/`, `resnet classify` of the
held-out test/ images with the exported file, and MediaPipe Tasks' `ImageClassifier` on the
same files and the same file, given the region of interest that mirrors the tool's resize
(`region`). Prints the top-1 agreement, the agreement when MediaPipe is given the pixels as the
tool resizes them, both accuracies and whether MediaPipe shows the class names. Needs the
`bench` extra.

Example: python benchmarks/mediapipe_agreement.py --epochs 5
         python benchmarks/mediapipe_agreement.py --resize squash --workdir /tmp/mp
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _cli import resnet, work_folder
from finetune_digits import write_digits


def region(width: int, height: int, *, size: int, crop: bool) -> Any:
    """The region of interest that makes MediaPipe sample where the tool's resize does: the
    crop box (the centre square of 0.875 x the shorter side) or the whole image, moved by
    (box / size - 1) / 2 pixels, since MediaPipe maps the box's corners onto the corner output
    pixels' centres and Pillow maps edges to edges."""
    from mediapipe.tasks.python.components.containers.rect import RectF

    box_w, box_h = (0.875 * min(width, height),) * 2 if crop else (width, height)
    left = (width - box_w) / 2 + (box_w / size - 1) / 2
    top = (height - box_h) / 2 + (box_h / size - 1) / 2
    return RectF(left=left / width, top=top / height, right=(left + box_w) / width,
                 bottom=(top + box_h) / height)


def mediapipe_top1(model: Path, paths: list[str], *, size: int, crop: bool,
                   same_pixels: bool) -> list[str]:
    """MediaPipe's top category name for each image: resized by MediaPipe (in the region
    `region` gives), or with `same_pixels` given the image as the tool resizes it."""
    import mediapipe as mp
    import numpy as np
    from mediapipe.tasks.python import BaseOptions, vision

    from resnet_cli.images import ResizeMode, load_image

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(model)), max_results=1)
    names = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for path in paths:
            if same_pixels:
                pixels = load_image(path, size=size, resize=ResizeMode("crop" if crop
                                                                       else "squash"))
                image = mp.Image(image_format=mp.ImageFormat.SRGB,
                                 data=np.ascontiguousarray(pixels))
                processing = None
            else:
                image = mp.Image.create_from_file(path)
                processing = vision.ImageProcessingOptions(region_of_interest=region(
                    image.width, image.height, size=size, crop=crop))
            result = classifier.classify(image, processing)
            names.append(result.classifications[0].categories[0].category_name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs")
    parser.add_argument("--image-size", type=int, default=32, help="the model's input size")
    parser.add_argument("--resize", choices=["crop", "squash"], default="crop")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 80/20 split")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the dataset, run and file here (default: a temporary folder)")
    args = parser.parse_args()

    with work_folder(args.workdir, prefix="mediapipe-") as root:
        write_digits(root, test_fraction=0.2, seed=args.seed)
        run, model = root / "run", root / "digits_int8.tflite"
        started = time.perf_counter()
        resnet("finetune", str(root / "train"), "--classes", "10", "--weights", "none",
               "--image-size", str(args.image_size), "--resize", args.resize, "--no-flip",
               "--epochs", str(args.epochs), "-o", str(run), "--overwrite", "-q")
        trained = time.perf_counter()
        resnet("export", "--weights", str(run / "model.keras"), "--format", "litert", "--int8",
               "--calibrate", str(root / "train"), "-o", str(model), "--overwrite", "-q")
        paths = sorted(str(p) for p in (root / "test").glob("*/*.png"))
        rows = json.loads(resnet("classify", *paths, "--weights", str(model), "-k", "1",
                                 "--resize", args.resize, "-f", "json", "-q").stdout)
        ours = {row["path"]: row["predictions"][0]["label"] for row in rows}
        crop = args.resize == "crop"
        clock = time.perf_counter()
        theirs = dict(zip(paths, mediapipe_top1(model, paths, size=args.image_size, crop=crop,
                                                same_pixels=False), strict=True))
        mediapipe_seconds = time.perf_counter() - clock
        same = dict(zip(paths, mediapipe_top1(model, paths, size=args.image_size, crop=crop,
                                              same_pixels=True), strict=True))
        truth = {p: Path(p).parent.name for p in paths}
        agree = sum(ours[p] == theirs[p] for p in paths)
        print(json.dumps({
            "test_images": len(paths),
            "top1_agreement": round(agree / len(paths), 4),
            "disagreements": len(paths) - agree,
            "top1_agreement_given_the_tools_pixels": round(
                sum(ours[p] == same[p] for p in paths) / len(paths), 4),
            "class_names_shown": sorted(set(theirs.values())),
            "class_names_are_the_folders": set(theirs.values()) <= set(truth.values()),
            "accuracy_resnet_classify": round(sum(ours[p] == truth[p] for p in paths)
                                              / len(paths), 4),
            "accuracy_mediapipe": round(sum(theirs[p] == truth[p] for p in paths)
                                        / len(paths), 4),
            "epochs": args.epochs, "image_size": args.image_size, "resize": args.resize,
            "finetune_seconds": round(trained - started, 1),
            "mediapipe_seconds": round(mediapipe_seconds, 1),
            "cpus": os.cpu_count(),
        }, indent=2))
        if agree / len(paths) < 0.98:
            sys.exit("top-1 agreement below 98%")


if __name__ == "__main__":
    main()
