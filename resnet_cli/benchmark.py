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
from resnet_cli.loaded import LoadedModel
from resnet_cli.models import ModelOptions
from resnet_cli.photos import DEFAULT_PHOTO_SIZE, PHOTO_QUALITY, synthesize_photos

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.loaded import BatchPredictor, FailureHandler

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
    resize: ResizeMode | None = None  # None: the model card's (set once the model is loaded)
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
                  loaded: LoadedModel | None = None,
                  on_failure: FailureHandler | None = None) -> BenchmarkReport:
    """Warm up, then time the model alone, classify and plain Keras in interleaved rounds.

    Args:
        loaded: an already loaded model to measure (default: load `options.model`).
        on_failure: called once for each input that cannot be read; it is left out of the
            measurements and listed in the report's `errors`.

    Raises:
        UsageError: bad counts, or no readable image among the inputs.
    """
    from resnet_cli.devices import import_tensorflow
    from resnet_cli.models import load_model

    _check_counts(options)
    import_tensorflow()
    if loaded is None:
        loaded = load_model(options.model, progress=progress)
    options = replace(options, resize=loaded.resize_or_own(options.resize))
    if loaded.exported is not None and options.baseline:  # an exported .tflite/.onnx file
        import logging

        logging.getLogger(__name__).warning(
            "%s is an exported file: there is no plain-Keras baseline to time; skipped.",
            loaded.source)
        options = replace(options, baseline=False)
    with _input_files(options, progress=progress) as (paths, described):
        inputs = _read_inputs(paths, options, loaded.image_size, on_failure)
        return _measure(options, loaded, inputs, described, progress=progress)


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


@dataclass(frozen=True)
class _Inputs:
    """The readable inputs (each read once) and one batch of them, decoded and ready."""

    paths: list[str]
    errors: tuple[ImageError, ...]
    ready: np.ndarray
    batch_size: int

    @property
    def batches(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)


@dataclass(frozen=True)
class _Setup:
    """The measurements, set up and warmed: name -> one run over every input."""

    runs: dict[str, Callable[[], None]]
    predictor: BatchPredictor
    compile_s: float
    precompiled: bool
    keras_first_s: float | None

    @property
    def trace_count(self) -> int:
        """Traces of the predictor's compiled function so far (0: nothing to trace)."""
        from resnet_cli.inference import trace_count

        return trace_count(self.predictor)


def _read_inputs(paths: list[str], options: BenchmarkOptions, size: int,
                 on_failure: FailureHandler | None) -> _Inputs:
    """Read every input once: drops unreadable files (reported) and warms the OS file cache,
    so no measurement pays for the first read from disk."""
    import numpy as np

    from resnet_cli.images import load_image
    from resnet_cli.inference import fitted_batch_size

    arrays, good, errors = [], [], []
    for path in paths:
        try:
            arrays.append(load_image(path, size=size, resize=options.resize or ResizeMode.crop))
            good.append(path)
        except ImageError as exc:
            errors.append(exc)
    if not good:
        raise UsageError(f"None of the {len(paths)} inputs is a readable image.")
    if on_failure is not None:
        for error in errors:
            on_failure(error)
    batch_size = fitted_batch_size(options.batch_size, len(good))  # as classify: no padding
    ready = np.stack([arrays[i % len(good)] for i in range(batch_size)])
    return _Inputs(paths=good, errors=tuple(errors), ready=ready, batch_size=batch_size)


def _measure(options: BenchmarkOptions, loaded: LoadedModel, inputs: _Inputs, described: str,
             *, progress: bool) -> BenchmarkReport:
    from resnet_cli.progress import progress_bar

    twin_needed = loaded.policy != "float32"
    rounds = options.warmup + options.repeats
    measured = 2 + 2 * int(twin_needed) + int(options.baseline)
    setup_steps = 1 + int(twin_needed) + int(options.baseline)
    with progress_bar(total=setup_steps + rounds * measured, desc="compiling", enabled=progress,
                      unit="step") as bar:
        setup = _set_up(options, loaded, inputs, bar, twin_needed=twin_needed)
        seconds, cpu_seconds, other_cpu = _time_rounds(setup.runs, options, bar)

    images, batch_size = len(inputs.paths), inputs.batch_size
    timings = tuple(Timing(name, MEASUREMENTS[name][1], images, batch_size,
                           tuple(seconds[name]), tuple(cpu_seconds[name])) for name in setup.runs)
    return BenchmarkReport(
        model=loaded.spec.name, source=loaded.source, precision=options.model.precision,
        policy=loaded.policy, device=loaded.device, batch_size=batch_size,
        image_size=loaded.image_size, inputs=described, input_count=images,
        compile_s=setup.compile_s, precompiled=setup.precompiled,
        keras_first_s=setup.keras_first_s, trace_count=setup.trace_count,
        timings=timings, ratios=_ratios(seconds), errors=inputs.errors,
        cpu_count=os.cpu_count() or 0, other_cpu=other_cpu,
    )


def _set_up(options: BenchmarkOptions, loaded: LoadedModel, inputs: _Inputs, bar: Any, *,
            twin_needed: bool) -> _Setup:
    """Compile the model (timed), then the fp32 twin and the Keras baseline when asked for."""
    from resnet_cli.inference import Predictor, make_predictor, trace_count

    start = time.perf_counter()
    predictor = make_predictor(loaded, inputs.batch_size)  # folds BatchNorm, unless compiled
    precompiled = trace_count(predictor) > 0
    predictor(inputs.ready)
    compile_s = time.perf_counter() - start
    bar.update(1)

    resize = options.resize or ResizeMode.crop  # resolved from the card in run_benchmark
    runs = dict(zip(("model", "classify"), _runs_of(loaded, predictor, inputs, resize),
                    strict=True))
    fp32 = loaded
    if twin_needed:
        bar.set_description("building the fp32 reference")
        fp32 = _fp32_twin(loaded, options)
        reference = Predictor(fp32, inputs.batch_size)
        reference(inputs.ready)
        bar.update(1)
        runs["model_fp32"], runs["classify_fp32"] = _runs_of(fp32, reference, inputs,
                                                             resize)
    keras_first_s = None
    if options.baseline:
        bar.set_description("warming up plain Keras")
        keras_run = _keras_baseline(fp32, inputs.batch_size, loaded.image_size)
        start = time.perf_counter()
        keras_run(inputs.paths[:inputs.batch_size])
        keras_first_s = time.perf_counter() - start
        runs["keras"] = lambda: keras_run(inputs.paths)
        bar.update(1)
    return _Setup(runs=runs, predictor=predictor, compile_s=compile_s, precompiled=precompiled,
                  keras_first_s=keras_first_s)


def _runs_of(model: LoadedModel, run: BatchPredictor, inputs: _Inputs, resize: ResizeMode
             ) -> tuple[Callable[[], None], Callable[[], None]]:
    """(model alone, classify) for one model: the two measurements every model gets."""
    from resnet_cli.classify import classify_images

    def model_alone() -> None:
        for _ in range(inputs.batches):
            run(inputs.ready)

    def classify() -> None:
        for result in classify_images(inputs.paths, model, batch_size=inputs.batch_size,
                                      resize=resize, progress=False):
            if not result.ok:  # a file changed under us: the figures would be wrong
                raise UsageError(f"{result.path}: {result.error}")

    return model_alone, classify


def _time_rounds(runs: dict[str, Callable[[], None]], options: BenchmarkOptions, bar: Any
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]], float | None]:
    """Every run once per round, warm-up rounds first: (seconds, CPU seconds) of the timed
    rounds per run, and the cores other processes kept busy meanwhile."""
    rounds = options.warmup + options.repeats
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
    return seconds, cpu_seconds, machine.others()


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


__all__ = ["BenchmarkOptions", "BenchmarkReport", "Timing", "run_benchmark"]
