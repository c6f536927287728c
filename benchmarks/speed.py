"""The speed targets of resnet-cli, as ratios measured in one process.

    .venv/bin/python benchmarks/speed.py [--repeats 3] [--skip-12mp] [--skip-bf16] [--json FILE]

Runs `resnet benchmark`'s library function three times, on ResNet50 at batch 32 with random
weights (speed does not depend on weight values):

1. fp32 on synthesised 1920x1080 JPEGs: classify end to end vs the model alone (target
   >= 0.92x) and vs the plain-Keras baseline (target >= 1.3x);
2. fp32 on synthesised 12-megapixel (4000x3000) JPEGs: classify vs the model alone (>= 0.80x);
3. bf16 (mixed_bfloat16, only where the CPU has avx512_bf16/amx_bf16): the model alone and
   classify vs fp32 with the same weights (target >= 1.4x).

Every figure is a ratio between measurements interleaved in the same rounds, so a machine
that is busy with other work slows both sides; how many cores other processes kept busy
meanwhile (from /proc/stat) is printed with each result all the same. Targets are printed
as met or missed; the script never fails on them (timings are not tests). Each section also
prints a CPU-time estimate of its ratio (CPU-ms per image of one side over the other), which
is what the throughput ratio tends to when both sides keep every core busy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

from resnet_cli.benchmark import BenchmarkOptions, BenchmarkReport, run_benchmark
from resnet_cli.devices import cpu_supports_bf16, import_tensorflow
from resnet_cli.models import ModelOptions, load_model

BATCH = 32


def line(name: str, value: float, target: float) -> str:
    verdict = "met" if value >= target else "MISSED"
    return f"  {name:<44} {value:5.2f}x   target >= {target:.2f}x  {verdict}"


def describe(report: BenchmarkReport) -> str:
    parts = []
    for timing in report.timings:
        stats = timing.stats()["images_per_s"]
        cpu = timing.stats()["cpu_ms_per_image"]
        parts.append(f"{timing.name} {stats['median']:.1f} img/s "
                     f"({stats['min']:.1f}-{stats['max']:.1f}, {cpu:.0f} CPU-ms/img)")
    text = "  " + "\n  ".join(parts)
    text += f"\n  first batch {report.compile_s:.1f} s, traced {report.trace_count}x"
    if report.other_cpu is not None:
        text += f"; other processes used {report.other_cpu:.2f} cores meanwhile"
    return text


def cpu_ratio(report: BenchmarkReport, fast: str, slow: str) -> str:
    """CPU-ms per image of `slow` over `fast`: what the throughput ratio fast/slow tends to on
    a machine where both saturate every core, whatever else runs there."""
    a, b = report.timing(fast), report.timing(slow)
    if a is None or b is None:
        return ""
    ratio = b.stats()["cpu_ms_per_image"] / a.stats()["cpu_ms_per_image"]
    return f"  {'(CPU-time estimate of ' + fast + ' / ' + slow + ')':<44} {ratio:5.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=4 * BATCH, help="images per run")
    parser.add_argument("--skip-12mp", action="store_true")
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument("--json", metavar="FILE", help="also write every report as JSON")
    args = parser.parse_args()

    import_tensorflow()
    import tensorflow as tf

    print(f"resnet-cli speed check: {args.model}, batch {BATCH}, {args.images} images per "
          f"run, {args.repeats} timed rounds; {os.cpu_count()} CPU cores, TensorFlow "
          f"{tf.__version__}, CPU bf16: {cpu_supports_bf16()}; load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    started = time.perf_counter()
    base = BenchmarkOptions(model=ModelOptions(model=args.model, weights="none"),
                            batch_size=BATCH, images=args.images, repeats=args.repeats)
    reports: dict[str, BenchmarkReport] = {}
    fp32 = load_model(base.model, progress=False)

    print("\n[1] fp32, 1920x1080 JPEGs", flush=True)
    report = reports["fp32_1080p"] = run_benchmark(base, loaded=fp32, progress=False)
    print(describe(report))
    print(line("classify / model alone", report.ratios["classify/model"], 0.92))
    print(cpu_ratio(report, "classify", "model"))
    print(line("classify / plain Keras", report.ratios["classify/keras"], 1.30))

    if not args.skip_12mp:
        print("\n[2] fp32, 4000x3000 (12 MP) JPEGs", flush=True)
        options = replace(base, photo_size=(4000, 3000), baseline=False)
        report = reports["fp32_12mp"] = run_benchmark(options, loaded=fp32, progress=False)
        print(describe(report))
        print(line("classify / model alone", report.ratios["classify/model"], 0.80))
        print(cpu_ratio(report, "classify", "model"))

    if not args.skip_bf16:
        print("\n[3] bf16 vs fp32, 1920x1080 JPEGs", flush=True)
        options = replace(base, model=replace(base.model, precision="bf16"), baseline=False)
        report = reports["bf16_1080p"] = run_benchmark(options, progress=False)
        print(describe(report))
        if report.policy == "float32":
            print("  this machine has no fast bf16: it ran in fp32 (see the warning above)")
        else:
            speedup = report.ratios["model/model_fp32"]
            print(line("bf16 model alone / fp32 model alone", speedup, 1.40))
            print(cpu_ratio(report, "model", "model_fp32"))
            print(line("bf16 classify / fp32 classify", report.ratios["classify/classify_fp32"],
                       1.40))
            print(cpu_ratio(report, "classify", "classify_fp32"))
            ratios = report.ratios
            print(f"  (bf16 classify / fp32 model alone: {ratios['classify/model_fp32']:.2f}x; "
                  f"bf16 classify / bf16 model alone: {ratios['classify/model']:.2f}x)")

    print(f"\ndone in {time.perf_counter() - started:.0f} s; load average now "
          f"{os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({k: r.to_dict() for k, r in reports.items()}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
