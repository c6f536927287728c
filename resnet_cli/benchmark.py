"""`resnet benchmark`: throughput of the model alone, of the whole classify pipeline, and of
plain Keras, measured in the same run.

The three are timed in interleaved rounds (model, classify, Keras, model, classify, ...), and
every ratio is the median of the per-round ratios, so a load that comes and goes on a shared
machine slows all of them alike instead of skewing one. Speed does not depend on the values of
the weights, so random weights (`--weights none`) give the same figures as ImageNet weights.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_cli.errors import ImageError, UsageError
from resnet_cli.images import ResizeMode
from resnet_cli.models import LoadedModel, ModelOptions

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_PHOTO_SIZE = (1920, 1080)
PHOTO_QUALITY = 90
UNIQUE_PHOTOS = 8  # synthesised photos are this many distinct pictures, copied to the count
SYNTH_BATCHES = 4


@dataclass(frozen=True)
class BenchmarkOptions:
    """What to measure.

    Attributes:
        images: images per timed run; default: all `inputs`, or `SYNTH_BATCHES` batches of
            synthesised photos (enough that filling the pipeline at the start is amortised).
        inputs: image files to classify; None: synthesise photo-like JPEGs of `photo_size`.
        baseline: also time plain Keras (`load_img` + `preprocess_input` + `model.predict`).
    """

    model: ModelOptions = field(default_factory=lambda: ModelOptions(weights="none"))
    batch_size: int = 32
    images: int | None = None
    repeats: int = 3
    warmup: int = 1
    inputs: Sequence[str] | None = None
    photo_size: tuple[int, int] = DEFAULT_PHOTO_SIZE
    resize: ResizeMode = ResizeMode.crop
    baseline: bool = True


@dataclass(frozen=True)
class Timing:
    """Timed runs of one measurement. Each run processes `images` images."""

    name: str  # "model", "classify", "keras", "model_fp32"
    description: str
    images: int
    batch_size: int
    seconds: tuple[float, ...]
    cpu_seconds: tuple[float, ...] = ()  # CPU time of the process (all threads) per run

    @property
    def images_per_s(self) -> tuple[float, ...]:
        return tuple(self.images / s for s in self.seconds)

    @property
    def ms_per_batch(self) -> tuple[float, ...]:
        batches = math.ceil(self.images / self.batch_size)
        return tuple(1000.0 * s / batches for s in self.seconds)

    def stats(self) -> dict[str, Any]:
        """Median, minimum and maximum of images/s and ms/batch over the runs."""
        ips, ms = self.images_per_s, self.ms_per_batch
        return {"name": self.name, "description": self.description, "runs": len(self.seconds),
                "images_per_run": self.images,
                "images_per_s": {"median": statistics.median(ips), "min": min(ips),
                                 "max": max(ips)},
                "ms_per_batch": {"median": statistics.median(ms), "min": min(ms),
                                 "max": max(ms)},
                "seconds": list(self.seconds),
                "cpu_ms_per_image": statistics.median(1000.0 * c / self.images
                                                      for c in self.cpu_seconds)
                if self.cpu_seconds else None}


@dataclass(frozen=True)
class BenchmarkReport:
    """Everything one benchmark run measured."""

    model: str
    source: str
    precision: str  # as asked: fp32 or bf16
    policy: str  # what ran: float32, mixed_bfloat16, mixed_float16
    device: str
    batch_size: int
    image_size: int
    inputs: str  # where the images came from, in words
    input_count: int
    compile_s: float  # first call of the compiled model: fold + trace + compile + one batch
    precompiled: bool  # the model was already compiled at this batch size (no trace here)
    keras_first_s: float | None  # first model.predict call (Keras builds its predict function)
    trace_count: int  # traces of the compiled function over the whole run (1 = never retraced)
    timings: tuple[Timing, ...]
    ratios: dict[str, float]  # median of per-round throughput ratios
    errors: tuple[ImageError, ...] = ()
    cpu_count: int = 0
    # Cores that other processes kept busy, on average, during the timed rounds (Linux only):
    # above a few tenths, the figures are noisy, although the ratios hold up better.
    other_cpu: float | None = None

    def timing(self, name: str) -> Timing | None:
        return next((t for t in self.timings if t.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "model": self.model, "source": self.source, "precision": self.precision,
            "policy": self.policy, "device": self.device, "batch_size": self.batch_size,
            "image_size": self.image_size, "inputs": self.inputs,
            "input_count": self.input_count, "compile_s": self.compile_s,
            "precompiled": self.precompiled,
            "keras_first_s": self.keras_first_s, "trace_count": self.trace_count,
            "timings": [t.stats() for t in self.timings], "ratios": dict(self.ratios),
            "errors": [{"path": e.path, "error": e.reason} for e in self.errors],
            "cpu_count": self.cpu_count,
            "other_cpu": self.other_cpu,
        }


MEASUREMENTS: dict[str, tuple[str, str]] = {  # name: (label, description)
    "model": ("model alone", "the compiled model (Predictor) on a ready uint8 batch"),
    "classify": ("classify", "classify_images over the files: read, decode, resize, model, "
                             "top-5"),
    "keras": ("plain Keras", "keras.utils.load_img + preprocess_input + model.predict, fp32"),
    "model_fp32": ("model alone, fp32", "the same weights computing in float32"),
    "classify_fp32": ("classify, fp32", "classify_images with the same weights in float32"),
}
RATIOS: dict[str, tuple[str, str]] = {
    "classify/model": ("classify", "model"),
    "classify/keras": ("classify", "keras"),
    "model/keras": ("model", "keras"),
    "model/model_fp32": ("model", "model_fp32"),
    "classify/classify_fp32": ("classify", "classify_fp32"),
    "classify/model_fp32": ("classify", "model_fp32"),
}


def run_benchmark(options: BenchmarkOptions, *, progress: bool = True,
                  loaded: LoadedModel | None = None) -> BenchmarkReport:
    """Warm up, then time the model alone, classify and plain Keras in interleaved rounds.

    Args:
        loaded: an already loaded model to measure (default: load `options.model`).

    Raises:
        UsageError: bad counts, or no readable image among the inputs.
    """
    from resnet_cli.devices import import_tensorflow
    from resnet_cli.models import load_model

    _check_counts(options)
    import_tensorflow()
    if loaded is None:
        loaded = load_model(options.model, progress=progress)
    with _input_files(options, progress=progress) as (paths, described):
        return _measure(options, loaded, paths, described, progress=progress)


def _check_counts(options: BenchmarkOptions) -> None:
    for name, value, low in (("--batch-size", options.batch_size, 1),
                             ("--repeats", options.repeats, 1), ("--warmup", options.warmup, 0),
                             ("--images", options.images or 1, 1)):
        if value < low:
            raise UsageError(f"{name} must be at least {low}; got {value}.")
    width, height = options.photo_size
    if min(width, height) < 32 or width * height > 100_000_000:
        raise UsageError(f"--photo-size must be between 32x32 and 100 megapixels; got "
                         f"{width}x{height}.")


@contextmanager
def _input_files(options: BenchmarkOptions, *, progress: bool
                 ) -> Iterator[tuple[list[str], str]]:
    if options.inputs is not None:
        paths = list(options.inputs)
        if options.images is not None:
            paths = paths[:options.images]
        yield paths, f"{len(paths)} given files"
        return
    count = options.images or SYNTH_BATCHES * options.batch_size
    width, height = options.photo_size
    with tempfile.TemporaryDirectory(prefix="resnet-benchmark-") as folder:
        paths = [str(p) for p in synthesize_photos(Path(folder), count, size=options.photo_size,
                                                   progress=progress)]
        yield paths, f"{count} synthesised {width}x{height} JPEGs (quality {PHOTO_QUALITY})"


def _measure(options: BenchmarkOptions, loaded: LoadedModel, paths: list[str], described: str,
             *, progress: bool) -> BenchmarkReport:
    import numpy as np

    from resnet_cli.classify import classify_images
    from resnet_cli.images import load_image
    from resnet_cli.inference import Predictor, fitted_batch_size
    from resnet_cli.render import progress_bar

    size, batch_size = loaded.image_size, options.batch_size
    # Read every input once: drops unreadable files (reported) and warms the OS file cache,
    # so no measurement pays for the first read from disk.
    arrays, good, errors = [], [], []
    for path in paths:
        try:
            arrays.append(load_image(path, size=size, resize=options.resize))
            good.append(path)
        except ImageError as exc:
            errors.append(exc)
    if not good:
        raise UsageError(f"None of the {len(paths)} inputs is a readable image.")
    images = len(good)
    batch_size = fitted_batch_size(batch_size, images)  # as classify does: no padding rows
    ready = np.stack([arrays[i % images] for i in range(batch_size)])
    batches = math.ceil(images / batch_size)

    twin_needed = loaded.policy != "float32"
    rounds = options.warmup + options.repeats
    measured = 2 + 2 * int(twin_needed) + int(options.baseline)
    setup_steps = 1 + int(twin_needed) + int(options.baseline)
    with progress_bar(total=setup_steps + rounds * measured, desc="compiling", enabled=progress,
                      unit="step") as bar:
        start = time.perf_counter()
        predictor = Predictor(loaded, batch_size)  # folds BatchNorm, unless already compiled
        precompiled = predictor.trace_count > 0
        predictor(ready)
        compile_s = time.perf_counter() - start
        bar.update(1)

        def runs_of(model: LoadedModel, run: Predictor) -> tuple[Callable[[], None],
                                                                  Callable[[], None]]:
            """(model alone, classify) for one model: the two measurements every model gets."""
            def model_alone() -> None:
                for _ in range(batches):
                    run(ready)

            def classify() -> None:
                for result in classify_images(good, model, batch_size=batch_size,
                                              resize=options.resize, progress=False):
                    if not result.ok:  # a file changed under us: the figures would be wrong
                        raise UsageError(f"{result.path}: {result.error}")

            return model_alone, classify

        runs: dict[str, Callable[[], None]] = dict(zip(("model", "classify"),
                                                       runs_of(loaded, predictor), strict=True))
        fp32 = loaded
        if twin_needed:
            bar.set_description("building the fp32 reference")
            fp32 = _fp32_twin(loaded, options)
            reference = Predictor(fp32, batch_size)
            reference(ready)
            bar.update(1)
            runs["model_fp32"], runs["classify_fp32"] = runs_of(fp32, reference)
        keras_first_s = None
        if options.baseline:
            bar.set_description("warming up plain Keras")
            keras_run = _keras_baseline(fp32, batch_size, size)
            start = time.perf_counter()
            keras_run(good[:batch_size])
            keras_first_s = time.perf_counter() - start
            runs["keras"] = lambda: keras_run(good)
            bar.update(1)

        seconds: dict[str, list[float]] = {name: [] for name in runs}
        cpu_seconds: dict[str, list[float]] = {name: [] for name in runs}
        machine = _MachineLoad()
        for round_index in range(rounds):
            for name, run in runs.items():
                phase = "warm-up" if round_index < options.warmup else "timed"
                bar.set_description(f"{phase} round {round_index + 1}/{rounds}: {name}")
                start, cpu_start = time.perf_counter(), time.process_time()
                run()
                if round_index >= options.warmup:
                    seconds[name].append(time.perf_counter() - start)
                    cpu_seconds[name].append(time.process_time() - cpu_start)
                bar.update(1)
        other_cpu = machine.others()

    timings = tuple(Timing(name, MEASUREMENTS[name][1], images, batch_size,
                           tuple(seconds[name]), tuple(cpu_seconds[name])) for name in runs)
    return BenchmarkReport(
        model=loaded.spec.name, source=loaded.source, precision=options.model.precision,
        policy=loaded.policy, device=loaded.device, batch_size=batch_size, image_size=size,
        inputs=described, input_count=images, compile_s=compile_s, precompiled=precompiled,
        keras_first_s=keras_first_s,
        trace_count=predictor.trace_count, timings=timings, ratios=_ratios(seconds),
        errors=tuple(errors), cpu_count=os.cpu_count() or 0,
        other_cpu=other_cpu,
    )


def _ratios(seconds: dict[str, list[float]]) -> dict[str, float]:
    """Throughput ratios a/b as the median over rounds of time_b / time_a."""
    ratios = {}
    for label, (a, b) in RATIOS.items():
        if a in seconds and b in seconds:
            ratios[label] = statistics.median(tb / ta for ta, tb in zip(seconds[a], seconds[b],
                                                                       strict=True))
    return ratios


def _fp32_twin(loaded: LoadedModel, options: BenchmarkOptions) -> LoadedModel:
    """The same model with the same weights, computing in float32."""
    from resnet_cli.models import load_model

    twin = load_model(replace(options.model, precision="fp32"), progress=False)
    twin.model.set_weights(loaded.model.get_weights())
    return twin


def _keras_baseline(loaded: LoadedModel, batch_size: int, size: int
                    ) -> Callable[[Sequence[str]], None]:
    """What a plain Keras script does: load_img, preprocess_input, model.predict, top-5."""
    import keras
    import numpy as np
    from keras.applications import imagenet_utils

    model, mode = loaded.model, loaded.preprocess_mode

    def run(files: Sequence[str]) -> None:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            x = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(size,
                                                                                       size)))
                          for p in chunk])
            x = imagenet_utils.preprocess_input(x, mode=mode)
            probs = model.predict(x, batch_size=batch_size, verbose=0)
            if probs.ndim == 2:
                np.argsort(-probs, axis=1)[:, :5]

    return run


class _MachineLoad:
    """CPU used by *other* processes from now until `others()`, from /proc/stat (Linux).

    The load average would count this benchmark's own threads; this does not.
    """

    def __init__(self) -> None:
        self.busy, self.own, self.wall = _busy_seconds(), time.process_time(), time.monotonic()

    def others(self) -> float | None:
        busy = _busy_seconds()
        wall = time.monotonic() - self.wall
        if busy is None or self.busy is None or wall <= 0:
            return None
        own = time.process_time() - self.own
        return max(0.0, (busy - self.busy - own) / wall)


def _busy_seconds() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
        ticks = [int(x) for x in fields[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):  # not Linux
        return None


def synthesize_photos(folder: Path, count: int, *, size: tuple[int, int] = DEFAULT_PHOTO_SIZE,
                      seed: int = 0, quality: int = PHOTO_QUALITY, progress: bool = False
                      ) -> list[Path]:
    """Write `count` photo-like JPEGs (smooth colour fields, soft shapes, sensor-like noise).

    Their decode cost is close to real photographs of the same size, unlike flat or pure-noise
    pictures. `UNIQUE_PHOTOS` distinct pictures are drawn and copied up to `count` files.
    """
    from resnet_cli.render import progress_bar

    paths = [folder / f"photo_{i:04d}.jpg" for i in range(count)]
    unique = min(count, UNIQUE_PHOTOS)
    with progress_bar(total=count, desc="synthesising photos", enabled=progress,
                      unit="img") as bar:
        for i, path in enumerate(paths):
            if i < unique:
                photo_like(size, seed=seed + i).save(path, format="JPEG", quality=quality)
            else:
                shutil.copyfile(paths[i % unique], path)
            bar.update(1)
    return paths


def photo_like(size: tuple[int, int], *, seed: int = 0) -> Any:
    """One photo-like RGB Pillow image of `size` (width, height)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    width, height = size
    # Smooth lighting and colour: a coarse random grid, upsampled bicubically.
    grid = rng.uniform(20, 235, (3, 4, 3)).astype(np.uint8)
    img = Image.fromarray(grid, "RGB").resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    scale = min(width, height)
    for _ in range(int(rng.integers(8, 16))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.03, 0.25) * scale
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse((x - r, y - r * rng.uniform(0.4, 1), x + r, y + r), fill=colour)
        elif shape == 1:
            draw.rectangle((x - r, y - r / 2, x + r, y + r / 2), fill=colour)
        else:
            points = [(x + r * math.cos(a), y + r * math.sin(a))
                      for a in np.sort(rng.uniform(0, 2 * math.pi, 5))]
            draw.polygon(points, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(1.0, scale / 500)))
    # Texture and sensor noise: what makes a photograph's JPEG costly to decode.
    pixels = np.asarray(img, dtype=np.float32)
    fine = rng.standard_normal((height, width, 1), dtype=np.float32) * 5.0
    colour_noise = rng.standard_normal((height, width, 3), dtype=np.float32) * 2.0
    pixels = np.clip(pixels + fine + colour_noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def parse_photo_size(text: str) -> tuple[int, int]:
    """"1920x1080" -> (1920, 1080).

    Raises:
        UsageError: not WIDTHxHEIGHT.
    """
    width, sep, height = text.lower().replace(" ", "").partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise UsageError(f"--photo-size must be WIDTHxHEIGHT, e.g. 1920x1080; got '{text}'.")
    return int(width), int(height)


# ----- rendering --------------------------------------------------------------------------

RATIO_MEANING = {
    "classify/model": "1.0: decoding costs nothing",
    "classify/keras": "end to end vs plain Keras",
    "model/keras": "",
    "model/model_fp32": "speed-up of the precision, model alone",
    "classify/classify_fp32": "speed-up of the precision, end to end",
    "classify/model_fp32": "end to end vs the fp32 model alone",
}


def render_benchmark(report: BenchmarkReport, console: Console) -> None:
    """The report as Rich tables: set-up, timings (median and range), ratios."""
    from rich.table import Table

    setup = Table(show_header=False, title="benchmark", title_justify="left")
    setup.add_column(style="bold")
    setup.add_column()
    precision = report.precision
    if report.policy != "float32" or precision != "fp32":
        precision += f" (Keras policy {report.policy})"
    load = ""
    if report.other_cpu is not None:
        busy = report.other_cpu > 0.2 * max(report.cpu_count, 1)
        load = (f"; other processes used {report.other_cpu:.1f} cores meanwhile"
                + (": figures are noisy" if busy else ""))
    rows = [
        ("model", report.source
         + ("; as fast as trained weights" if "random" in report.source else "")),
        ("precision", precision),
        ("device", f"{report.device}, {report.cpu_count} CPU cores{load}"),
        ("batch", f"{report.batch_size} images of {report.image_size}x{report.image_size}"),
        ("inputs", f"{report.inputs}; {report.input_count} images per run"),
        ("first batch", f"{report.compile_s:.2f} s "
         + ("(already compiled)" if report.precompiled else "(fold + trace + compile + run)")
         + f"; traced {report.trace_count} time(s) in all"),
    ]
    if report.keras_first_s is not None:
        rows.append(("first model.predict", f"{report.keras_first_s:.2f} s (Keras baseline, "
                                            "one batch with its set-up)"))
    for key, value in rows:
        setup.add_row(key, value)
    console.print(setup)

    timings = Table(title=f"timed runs (median, min-max of {len(report.timings[0].seconds)})",
                    title_justify="left", caption_justify="left", caption="; ".join(
                        f"{MEASUREMENTS[t.name][0]}: {t.description}" for t in report.timings))
    for name, justify in (("measurement", "left"), ("images/s", "right"), ("range", "right"),
                          ("ms/batch", "right"), ("range ", "right"), ("CPU ms/img", "right")):
        timings.add_column(name, justify=justify)  # type: ignore[arg-type]
    for timing in report.timings:
        ips, ms = timing.images_per_s, timing.ms_per_batch
        cpu = timing.stats()["cpu_ms_per_image"]
        timings.add_row(MEASUREMENTS[timing.name][0], f"{statistics.median(ips):.1f}",
                        f"{min(ips):.1f}-{max(ips):.1f}", f"{statistics.median(ms):.0f}",
                        f"{min(ms):.0f}-{max(ms):.0f}", "" if cpu is None else f"{cpu:.0f}")
    console.print(timings)

    if report.ratios:
        ratios = Table(title="throughput ratios (median of per-round ratios)",
                       title_justify="left")
        ratios.add_column("ratio")
        ratios.add_column("value", justify="right")
        ratios.add_column("meaning")
        for label, ratio in report.ratios.items():
            ratios.add_row(label, f"{ratio:.2f}x", RATIO_MEANING.get(label, ""))
        console.print(ratios)


__all__ = ["BenchmarkOptions", "BenchmarkReport", "Timing", "parse_photo_size", "photo_like",
           "render_benchmark", "run_benchmark", "synthesize_photos"]
