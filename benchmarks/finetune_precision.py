"""Seconds per epoch of `resnet finetune` from scratch in fp32 and in bf16, measured in one run.

The same command, `resnet finetune train/ --classes 2 --weights none --image-size 160
--resize squash --epochs E`, on the synthetic circles and squares of finetune_shapes.py (160x160
PNGs), runs with `--precision fp32` and `--precision bf16` in alternation, a few short runs
each (the order flips every round, so a change in the machine's load hits both alike). An
epoch's seconds are those of history.csv (training steps, the BatchNorm recomputation and
validation); the first epoch of each run also traces the train step, so it is left out. The
script prints the median seconds per epoch of each precision, their ratio (target: bf16 at
least 1.3x faster), the CPU seconds each run used, and the load average around each run.

bf16 is Keras' mixed_bfloat16 only where the hardware has bfloat16 (avx512_bf16/amx_bf16 CPUs,
Ampere+ GPUs); elsewhere the run warns and trains in fp32, and the script says so.

Example: python benchmarks/finetune_precision.py --rounds 2 --epochs 3 --per-class 100
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from _cli import resnet, work_folder
from finetune_shapes import SIZE, write_shapes

PRECISIONS = ("fp32", "bf16")


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(root: Path, precision: str, name: str, epochs: int, batch_size: int,
            extra: list[str]) -> dict[str, Any]:
    """One finetune run; its epochs' seconds, the policy it trained under and its cost."""
    run = root / name
    load_before = os.getloadavg()[0]
    cpu_before, started = child_cpu_seconds(), time.perf_counter()
    resnet("finetune", str(root / "train"), "--classes", "2", "-o", str(run), "--weights",
           "none", "--image-size", str(SIZE), "--epochs", str(epochs), "--patience", "0",
           "--batch-size", str(batch_size), "--resize", "squash", "--precision", precision,
           "--overwrite", "--quiet", *extra)
    wall, cpu = time.perf_counter() - started, child_cpu_seconds() - cpu_before
    with open(run / "history.csv", newline="", encoding="utf-8") as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    config = json.loads((run / "config.json").read_text())
    return {"precision": precision, "policy": config["training"]["policy"],
            "first_epoch_seconds": round(seconds[0], 1),
            "epoch_seconds": [round(s, 1) for s in seconds[1:]],
            "val_accuracy": json.loads((run / "metrics.json").read_text())["val_accuracy"],
            "run_wall_seconds": round(wall, 1), "run_cpu_seconds": round(cpu, 1),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs of each precision")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (>= 2)")
    parser.add_argument("--per-class", type=int, default=100, help="images per class")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the dataset and the runs here (default: a temporary folder)")
    parser.add_argument("extra", nargs="*", help="more `resnet finetune` options, after --")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch of a run is not timed")

    with work_folder(args.workdir, prefix="precision-") as root:
        if not (root / "train").is_dir():
            write_shapes(root, per_class=args.per_class, held_out=0, seed=0)
        runs: list[dict[str, Any]] = []
        for number in range(args.rounds):
            order = PRECISIONS if number % 2 == 0 else PRECISIONS[::-1]
            for precision in order:
                runs.append(one_run(root, precision, f"run-{precision}-{number}", args.epochs,
                                    args.batch_size, args.extra))
                print(json.dumps(runs[-1]), flush=True)
        median = {p: statistics.median(s for r in runs if r["precision"] == p
                                       for s in r["epoch_seconds"]) for p in PRECISIONS}
        cpu = {p: sum(r["run_cpu_seconds"] for r in runs if r["precision"] == p)
               for p in PRECISIONS}
        policies = sorted({str(r["policy"]) for r in runs if r["precision"] == "bf16"})
        result = {
            "image_size": SIZE, "train_images": int(args.per_class * 2 * 0.8),
            "epochs_per_run": args.epochs, "rounds": args.rounds, "bf16_policy": policies,
            "fp32_seconds_per_epoch": round(median["fp32"], 1),
            "bf16_seconds_per_epoch": round(median["bf16"], 1),
            "speedup_per_epoch": round(median["fp32"] / median["bf16"], 2),
            "speedup_cpu_seconds": round(cpu["fp32"] / cpu["bf16"], 2),
            "target": 1.3, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        }
        if policies != ["mixed_bfloat16"] and policies != ["mixed_float16"]:
            result["note"] = "bf16 did not run in half precision on this hardware"
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
