"""The speed targets of OpenVINO export and runtime (#24), as ratios measured in one process.

    .venv/bin/python benchmarks/openvino_speed.py [--repeats 3] [--calibration 48] [--photos 64]

ResNet50 at 224 px with random weights (speed does not depend on weight values), batch 32,
each runtime through the tool's own predictor (`make_predictor`), in interleaved rounds:

1. model alone: Keras fp32 and bf16, LiteRT int8 (`export --int8`), OpenVINO fp32, bf16 and
   int8 (`export --format openvino [--int8]`); targets: OpenVINO bf16 >= 1.4x Keras bf16,
   OpenVINO int8 >= 1.3x LiteRT int8, OpenVINO fp32 >= Keras fp32;
2. the runtime's way of running a batch (split over the THROUGHPUT hint's streams, all in
   flight) vs one request of the LATENCY hint on every core, int8: the measurement behind
   `runtimes/openvino.py`'s choice;
3. `classify_images` over synthesised 1920x1080 JPEGs with the int8 `.xml` vs the ceiling
   that its model rate and the JPEG reader leave on this machine's cores,
   1 / (1/model + decode/cores), decode being one core's seconds per photo (target >= 0.85x).

bf16 runs where the CPU has native bfloat16 (avx512_bf16 or AMX); elsewhere both bf16 rows
run fp32 and the script says so. Ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 32


def _timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _latency_runner(xml: Path, ready: np.ndarray) -> Callable[[], None]:
    """OpenVINO's LATENCY hint: the whole batch as one request on every core."""
    import openvino as ov

    from resnet_cli.devices import runtime_threads

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": runtime_threads()})
    request = compiled.create_infer_request()

    def run() -> None:
        request.infer({0: ready})

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=48)
    parser.add_argument("--photos", type=int, default=64)
    args = parser.parse_args()

    import keras

    from resnet_cli.classify import classify_images
    from resnet_cli.devices import cpu_supports_bf16, runtime_threads
    from resnet_cli.export import ExportFormat, export_model
    from resnet_cli.images import load_image
    from resnet_cli.inference import make_predictor
    from resnet_cli.models import ModelOptions, load_model
    from resnet_cli.photos import synthesize_photos

    folder = Path(tempfile.mkdtemp(prefix="openvino-speed-"))
    keras.utils.set_random_seed(0)
    weights = folder / "resnet50.weights.h5"
    keras.applications.ResNet50(weights=None).save_weights(weights)
    (folder / "calib").mkdir()
    (folder / "photos").mkdir()
    calib = [str(p) for p in synthesize_photos(folder / "calib", args.calibration, seed=100)]
    photos = [str(p) for p in synthesize_photos(folder / "photos", args.photos)]
    source = ModelOptions(weights=str(weights), device="cpu")
    files = {}
    for name, fmt, filename, int8 in (("litert_int8", ExportFormat.litert, "int8.tflite", True),
                                      ("ov", ExportFormat.openvino, "fp32.xml", False),
                                      ("ov_int8", ExportFormat.openvino, "int8.xml", True)):
        summary = export_model(source, fmt, folder / filename, int8=int8,
                               calibrate=calib if int8 else None, progress=False)
        files[name] = summary.path
        print(f"export: {summary.describe()}")

    loaded: dict[str, Any] = {
        "keras_fp32": load_model(source),
        "keras_bf16": load_model(ModelOptions(weights=str(weights), device="cpu",
                                              precision="bf16")),
        "litert_int8": load_model(ModelOptions(weights=str(files["litert_int8"]))),
        "ov_fp32": load_model(ModelOptions(weights=str(files["ov"]))),
        "ov_bf16": load_model(ModelOptions(weights=str(files["ov"]), precision="bf16")),
        "ov_int8": load_model(ModelOptions(weights=str(files["ov_int8"]))),
    }
    ready = np.stack([load_image(p, size=224) for p in photos[:BATCH]])

    def model_alone(what: Any) -> Callable[[], None]:
        predictor = make_predictor(what, BATCH)

        def run() -> None:
            predictor(ready)

        return run

    def classify() -> None:
        for result in classify_images(photos, loaded["ov_int8"], batch_size=BATCH,
                                      progress=False):
            assert result.ok, result.error

    def decode() -> None:
        for path in photos[:16]:
            load_image(path, size=224)

    runs = {name: model_alone(what) for name, what in loaded.items()}
    runs["ov_int8_latency"] = _latency_runner(files["ov_int8"], ready)
    runs["classify_ov_int8"] = classify
    runs["decode_16"] = decode
    for run in runs.values():  # warm-up: compile, allocate, fill caches
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            seconds[name].append(_timed(run))

    def ratio(a: str, b: str) -> float:  # throughput of a over b, per round
        return statistics.median(tb / ta for ta, tb in zip(seconds[a], seconds[b],
                                                          strict=True))

    def rate(name: str, images: int = BATCH) -> float:
        return images / statistics.median(seconds[name])

    cores = runtime_threads()
    print(f"cores: {cores}, batch {BATCH}, {args.repeats} interleaved rounds, native bf16: "
          f"{cpu_supports_bf16()}")
    print("model alone (img/s): " + ", ".join(
        f"{name} {rate(name):.1f}" for name in [*loaded, "ov_int8_latency"]))
    decode_s = statistics.median(seconds["decode_16"]) / 16
    ceiling = 1 / (1 / rate("ov_int8") + decode_s / cores)
    classify_rate = rate("classify_ov_int8", len(photos))
    print(f"classify 1920x1080 JPEGs with int8 .xml: {classify_rate:.1f} img/s; decode "
          f"{1000 * decode_s:.1f} ms/photo on one core; ceiling {ceiling:.1f} img/s")
    checks = [("OpenVINO bf16 / Keras bf16", ratio("ov_bf16", "keras_bf16"), 1.4),
              ("OpenVINO int8 / LiteRT int8", ratio("ov_int8", "litert_int8"), 1.3),
              ("OpenVINO fp32 / Keras fp32", ratio("ov_fp32", "keras_fp32"), 1.0),
              ("classify int8 .xml / ceiling", classify_rate / ceiling, 0.85)]
    for label, value, target in checks:
        print(f"{label}: {value:.2f} (target >= {target:.2f}: "
              f"{'met' if value >= target else 'MISSED'})")
    print(f"OpenVINO int8, the runtime's batch split over THROUGHPUT streams / one LATENCY "
          f"request: {ratio('ov_int8', 'ov_int8_latency'):.2f}")


if __name__ == "__main__":
    main()
