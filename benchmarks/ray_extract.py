"""`resnet extract --ray local` against the local extract, in one run (target >= 0.75x).

    .venv/bin/python benchmarks/ray_extract.py [--images 96] [--batch-size 16] [--work DIR]

Synthesises 1920x1080 JPEGs and a random-weight ResNet50 backbone (saved once, so both runs
use the same weights), then writes avg-pooled features of every image twice through
`extract_features`: on this machine, and on a Ray cluster it starts here (`--ray local`:
decode tasks plus one model actor). Printed:

- the features' max abs difference (target <= 1e-5) and whether paths and order match;
- throughput ratios Ray / local: end to end (Ray's start-up, the actor importing TensorFlow
  and building the model included) and steady state (rows after the first batch over the
  time since it arrived), which is what a long job converges to;
- the machine's load average before and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _cli import work_folder
from PIL import Image

from resnet_cli.backbones import build_feature_model
from resnet_cli.cluster import ray_runner
from resnet_cli.extract import extract_features
from resnet_cli.inference import predict_paths
from resnet_cli.models import ModelOptions


def write_photos(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1080, 0:1920]
    paths = []
    for i in range(count):
        base = np.stack([(xx + 37 * i) % 256, (yy + 11 * i) % 256, (xx + yy) // 12 % 256], -1)
        noise = rng.normal(0, 12, (1080, 1920, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def timed(factory: Callable[..., Any], stamps: list[tuple[float, int]]) -> Callable[..., Any]:
    """A runner factory that records when each batch reaches the writer."""
    def bind(loaded: Any, *, features: Any = None) -> Any:
        run = factory(loaded, features=features)

        def wrapped(paths: list[str], **kwargs: Any) -> Iterator[Any]:
            for batch in run(paths, **kwargs):
                stamps.append((time.perf_counter(), len(batch.paths)))
                yield batch
        return wrapped
    return bind


def local_factory(loaded: Any, *, features: Any = None) -> Any:
    return functools.partial(predict_paths, loaded=loaded,
                             model=build_feature_model(loaded, pooling=features.pooling))


def one_run(paths: list[str], out: Path, options: ModelOptions, factory: Any, batch: int
            ) -> tuple[float, float, np.ndarray, list[str]]:
    stamps: list[tuple[float, int]] = []
    started = time.perf_counter()
    extract_features(paths, out, options=options, pooling="avg", batch_size=batch,
                     overwrite=True, progress=False, runner=timed(factory, stamps))
    total = time.perf_counter() - started
    steady = sum(n for _, n in stamps[1:]) / max(stamps[-1][0] - stamps[0][0], 1e-9)
    with np.load(out) as saved:
        return len(paths) / total, steady, saved["features"], saved["paths"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with work_folder(args.work, prefix="ray_extract_") as root:
        import keras

        keras.utils.set_random_seed(0)
        weights = root / "backbone.weights.h5"
        keras.applications.ResNet50(include_top=False, weights=None).save_weights(weights)
        paths = write_photos(root, args.images)
        options = ModelOptions(weights=str(weights), device="cpu")
        local = one_run(paths, root / "local.npz", options, local_factory, args.batch_size)
        ray = one_run(paths, root / "ray.npz", options,
                      ray_runner("local", "1", options),
                      args.batch_size)
    diff = float(np.abs(local[2] - ray[2]).max())
    same = local[3] == ray[3] == paths
    print(f"{args.images} JPEGs 1920x1080, resnet50 224 px, batch {args.batch_size}")
    print(f"  local: {local[0]:.2f} img/s end to end, {local[1]:.2f} img/s steady")
    print(f"  ray  : {ray[0]:.2f} img/s end to end, {ray[1]:.2f} img/s steady")
    print(f"  ratio end to end {ray[0] / local[0]:.2f}x, steady state {ray[1] / local[1]:.2f}x"
          f"   target >= 0.75x")
    print(f"  features max abs diff {diff:.2e} (target <= 1e-5), same paths in order: {same}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    sys.exit(0)


if __name__ == "__main__":
    main()
