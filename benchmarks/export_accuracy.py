"""How much an int8 export (LiteRT, or OpenVINO) of a finetuned model loses, on a real small
dataset (#11, #24).

    python benchmarks/export_accuracy.py RUN_DIR TRAIN_DIR TEST_DIR [--format litert|openvino]

Uses the command line only: `resnet export --int8 --calibrate TRAIN_DIR` of RUN_DIR/model.keras
(classifier, and backbone with --no-include-top --pooling avg), then `resnet evaluate` and
`resnet classify` on TEST_DIR with the Keras model and with the int8 file, and `resnet extract`
with both backbones. Prints test accuracy of each, top-1 agreement, and the cosine between
int8 and fp32 feature vectors. With the digits run of benchmarks/finetune_digits.py:

    python benchmarks/finetune_digits.py --workdir /tmp/digits
    python benchmarks/export_accuracy.py /tmp/digits/run /tmp/digits/train /tmp/digits/test
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import tempfile
from pathlib import Path

import numpy as np
from _cli import resnet


def top1(weights: Path, test: Path) -> dict[str, str]:
    rows = csv.DictReader(io.StringIO(resnet("classify", str(test), "-r", "--weights",
                                             str(weights), "-k", "1", "-f", "csv", "-q").stdout))
    return {row["path"]: row["label"] for row in rows}


def accuracy(weights: Path, test: Path) -> float:
    report = json.loads(resnet("evaluate", str(test), "--weights", str(weights), "--format",
                               "json", "-q").stdout)
    return float(report["top1_accuracy"])


def features(weights: Path, test: Path, out: Path) -> np.ndarray:
    resnet("extract", str(test), "-r", "--weights", str(weights), "-o", str(out), "-q")
    with np.load(out, allow_pickle=False) as saved:
        return np.asarray(saved["features"], dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("train", type=Path)
    parser.add_argument("test", type=Path)
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--format", choices=("litert", "openvino"), default="litert")
    args = parser.parse_args()
    suffix = {"litert": ".tflite", "openvino": ".xml"}[args.format]

    model = args.run / "model.keras"
    folder = Path(tempfile.mkdtemp(prefix="export-accuracy-"))
    calibrate = ["--int8", "--calibrate", str(args.train), "--calibration-images",
                 str(args.calibration_images), "--format", args.format, "--weights", str(model)]
    int8 = folder / f"int8{suffix}"
    resnet("export", *calibrate, "-o", str(int8))
    int8_backbone = folder / f"int8_features{suffix}"
    resnet("export", *calibrate, "--no-include-top", "--pooling", "avg", "-o",
           str(int8_backbone))

    fp32_top1, int8_top1 = top1(model, args.test), top1(int8, args.test)
    agree = np.mean([fp32_top1[path] == int8_top1.get(path) for path in fp32_top1])
    a = features(model, args.test, folder / "fp32.npz")
    b = features(int8_backbone, args.test, folder / "int8.npz")
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    result = {
        "fp32_test_accuracy": round(accuracy(model, args.test), 4),
        "int8_test_accuracy": round(accuracy(int8, args.test), 4),
        "top1_agreement": round(float(agree), 4),
        "feature_cosine_min": round(float(cosine.min()), 4),
        "feature_cosine_mean": round(float(cosine.mean()), 4),
        "test_images": len(fp32_top1),
        "format": args.format,
        "int8_file_mb": round(sum(p.stat().st_size for p in folder.glob("int8.*")) / 1e6, 1),
        "fp32_model_mb": round(model.stat().st_size / 1e6, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
