"""The speed targets of `resnet export` (#11), as ratios measured in one process.

    .venv/bin/python benchmarks/export_speed.py [--repeats 3] [--calibration 48] [--photos 64]

ResNet50 at 224 px with random weights (speed does not depend on weight values), exported as
a full-integer int8 LiteRT file calibrated on synthesised 1920x1080 photos, then, in
interleaved rounds:

1. the int8 file through the tool (`make_predictor`, batch 32) vs a bare `ai_edge_litert`
   interpreter loop on the same file and batch (target >= 0.95x);
2. `classify_images` over synthesised 1920x1080 JPEGs with the int8 file vs with the fp32
   Keras model of the same weights (target >= 2.5x);
3. batch-1 latency of the int8 file vs the fp32 Keras model, both through the tool
   (target <= 1/3).

Ratios are medians of per-round ratios; targets are printed as met or missed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BATCH = 32


def _timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=48)
    parser.add_argument("--photos", type=int, default=64)
    args = parser.parse_args()

    import keras
    from ai_edge_litert.interpreter import Interpreter

    from resnet_cli.classify import classify_images
    from resnet_cli.devices import runtime_threads
    from resnet_cli.export import ExportFormat, export_model
    from resnet_cli.images import load_image
    from resnet_cli.inference import make_predictor
    from resnet_cli.models import ModelOptions, load_model
    from resnet_cli.photos import synthesize_photos

    folder = Path(tempfile.mkdtemp(prefix="export-speed-"))
    keras.utils.set_random_seed(0)
    weights = folder / "resnet50.weights.h5"
    keras.applications.ResNet50(weights=None).save_weights(weights)
    (folder / "calib").mkdir()
    (folder / "photos").mkdir()
    calib = [str(p) for p in synthesize_photos(folder / "calib", args.calibration, seed=100)]
    photos = [str(p) for p in synthesize_photos(folder / "photos", args.photos)]

    start = time.perf_counter()
    summary = export_model(ModelOptions(weights=str(weights), device="cpu"),
                           ExportFormat.litert, folder / "int8.tflite", int8=True,
                           calibrate=calib, progress=False)
    print(f"export: {summary.describe()}")
    print(f"        (int8 conversion with calibration on {len(calib)} photos: "
          f"{time.perf_counter() - start:.0f} s)")
    int8 = load_model(ModelOptions(weights=str(summary.path)))
    fp32 = load_model(ModelOptions(weights=str(weights), device="cpu"))

    ready = np.stack([load_image(p, size=224) for p in photos[:BATCH]])
    batches = max(1, args.photos // BATCH)
    tool = make_predictor(int8, BATCH)
    bare = Interpreter(model_path=str(summary.path), num_threads=runtime_threads())
    index = bare.get_input_details()[0]["index"]
    output = bare.get_output_details()[0]["index"]
    bare.resize_tensor_input(index, (BATCH, 224, 224, 3), strict=True)
    bare.allocate_tensors()
    one_int8, one_fp32 = make_predictor(int8, 1), make_predictor(fp32, 1)

    def bare_loop() -> None:
        for _ in range(batches):
            bare.set_tensor(index, ready)
            bare.invoke()
            bare.get_tensor(output)

    def tool_loop() -> None:
        for _ in range(batches):
            tool(ready)

    def classify(loaded: object) -> Callable[[], None]:
        def run() -> None:
            for result in classify_images(photos, loaded, batch_size=BATCH,  # type: ignore[arg-type]
                                          progress=False):
                assert result.ok, result.error
        return run

    def latency(predictor: Callable[[np.ndarray], np.ndarray]) -> Callable[[], None]:
        def run() -> None:
            for i in range(10):
                predictor(ready[i:i + 1])
        return run

    runs = {"bare": bare_loop, "tool": tool_loop, "classify_int8": classify(int8),
            "classify_fp32": classify(fp32), "b1_int8": latency(one_int8),
            "b1_fp32": latency(one_fp32)}
    for run in runs.values():  # warm-up: compile, allocate, fill caches
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            seconds[name].append(_timed(run))

    def ratio(a: str, b: str) -> float:  # throughput of a over b
        return statistics.median(tb / ta for ta, tb in zip(seconds[a], seconds[b],
                                                          strict=True))

    def rate(name: str, images: int) -> float:
        return images / statistics.median(seconds[name])

    print(f"cores: {runtime_threads()}, batch {BATCH}, {args.repeats} interleaved rounds")
    print(f"int8 model alone: tool {rate('tool', batches * BATCH):.0f} img/s, bare interpreter "
          f"{rate('bare', batches * BATCH):.0f} img/s")
    print(f"classify 1920x1080 JPEGs: int8 {rate('classify_int8', len(photos)):.0f} img/s, "
          f"fp32 Keras {rate('classify_fp32', len(photos)):.0f} img/s")
    ms_int8 = 1000 * statistics.median(seconds["b1_int8"]) / 10
    ms_fp32 = 1000 * statistics.median(seconds["b1_fp32"]) / 10
    print(f"batch-1 latency: int8 {ms_int8:.1f} ms, fp32 Keras {ms_fp32:.1f} ms")
    checks = [("tool / bare interpreter", ratio("tool", "bare"), 0.95, ">="),
              ("classify int8 / classify fp32", ratio("classify_int8", "classify_fp32"), 2.5,
               ">="),
              ("batch-1 latency int8 / fp32", 1 / ratio("b1_int8", "b1_fp32"), 1 / 3, "<=")]
    for label, value, target, sense in checks:
        met = value >= target if sense == ">=" else value <= target
        print(f"{label}: {value:.2f} (target {sense} {target:.2f}: "
              f"{'met' if met else 'MISSED'})")


if __name__ == "__main__":
    main()
