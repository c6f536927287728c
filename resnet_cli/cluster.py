"""`--ray`: the inference path of `classify` and `extract` on a Ray cluster (Ray Data).

Images are read and decoded by Ray tasks; the model runs in a pool of actors (`map_batches`
with a callable class), each of which loads it once through `models.load_model` and
`inference.make_predictor`, so Keras models and exported `.tflite`/`.onnx` files all work. The
model file travels through Ray's object store (no shared file system needed); the class index
ships with the package. Rows come back to the driver in input order (Ray Data's
`preserve_order`, checked against the index each row carries) as the same `inference.Batch`es
the local path yields, so the writers downstream are unchanged and stream as they do locally.

An actor that dies (a killed process, a node taken back) is restarted by Ray and its batches
are run again (Ray Data's defaults for actor pools: unlimited restarts and task retries, and
a bounded number of actors that fail while loading the model). A pool that the cluster can
never hold is refused up front, in one line: the actors and at least one reading task must
fit in the cluster's CPUs (and GPUs).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_cli.errors import ImageError, ResnetCliError, UsageError, first_line
from resnet_cli.extras import require_module
from resnet_cli.images import ResizeMode, load_image
from resnet_cli.inference import Batch, BatchRunner, RunnerFactory, fitted_batch_size
from resnet_cli.loaded import FailureHandler, LoadedModel
from resnet_cli.models import ModelOptions
from resnet_cli.remote import is_url

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.loaded import BatchPredictor

log = logging.getLogger(__name__)

READ_TASK_MEMORY = 64 * 1024 * 1024  # bytes a reading task needs besides its batch
READ_THREADS = 8  # per reading task, for remote (URL) inputs that wait on the network


class ClusterError(ResnetCliError):
    """The Ray cluster cannot be reached, cannot hold the job, or the job failed on it."""


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide to run: `address` is auto, local or ray://host:port."""

    address: str = "auto"
    min_actors: int = 1
    max_actors: int | None = None  # None: as many as the cluster holds


@dataclass(frozen=True)
class ModelRecipe:
    """What each actor builds: the model of `options`, or with `features` = (pooling, layer)
    the feature model `extract` cuts from it."""

    options: ModelOptions
    image_size: int
    features: tuple[str | None, str | None] | None = None


def parse_ray_actors(text: str) -> tuple[int, int | None]:
    """Parse `MIN` or `MIN:MAX` (actors in the pool; MAX defaults to what the cluster holds)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", text)
    low = int(match.group(1)) if match else 0
    high = int(match.group(2)) if match and match.group(2) else None
    if low < 1 or (high is not None and high < low):
        raise UsageError(f"Invalid --ray-actors '{text}': use MIN or MIN:MAX with "
                         "1 <= MIN <= MAX, e.g. 2 or 1:8.")
    return low, high


def ray_runner(address: str, actors: str, options: ModelOptions, *,
               features: tuple[str | None, str | None] | None = None) -> RunnerFactory:
    """What `classify_images` / `extract_features` take as `runner`: for the model they
    load from `options`, a `BatchRunner` (what `inference.predict_paths` is locally) that runs
    it on the Ray cluster at `address` with `actors` (MIN[:MAX]) actors, batches in input
    order. With `features` = (pooling, layer), the actors run extract's feature model."""
    low, high = parse_ray_actors(actors)
    settings = RaySettings(address=address, min_actors=low, max_actors=high)
    if features is not None:
        options = replace(options, include_top=False, pooling=None)

    def bind(loaded: LoadedModel) -> BatchRunner:
        return _runner(ModelRecipe(options, loaded.image_size, features), settings,
                       own_resize=loaded.card.resize)

    return bind


def _runner(recipe: ModelRecipe, settings: RaySettings, *, own_resize: ResizeMode
            ) -> BatchRunner:

    def run(paths: Sequence[str], *, batch_size: int, resize: ResizeMode | None = None,
            progress: bool = True, on_failure: FailureHandler | None = None,
            desc: str = "images") -> Iterator[Batch]:
        from resnet_cli.devices import native_stderr_to_log

        ray = require_module("ray", extra="ray", purpose="--ray")
        # Ray's notices (token auth, its C++ core's log lines) go to the debug log, not the
        # terminal; its errors reach the user as one ClusterError line.
        with native_stderr_to_log():
            started_here = _connect(ray, settings.address)
            try:
                yield from _run_on_cluster(
                    ray, recipe, settings, list(paths), batch_size=fitted_batch_size(
                        batch_size, len(paths)), resize=resize or own_resize,
                    progress=progress,
                    on_failure=on_failure, desc=desc)
            finally:
                if started_here:
                    ray.shutdown()

    return run


def _connect(ray: Any, address: str) -> bool:
    """Join (or start, for `local`) the cluster; True when this call started Ray here."""
    if ray.is_initialized():  # a program that set Ray up itself (a notebook, the tests)
        return False
    runtime_env = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = (" Start one with `ray start --head`, set RAY_ADDRESS, or use --ray local."
                if address == "auto" else "")
        raise ClusterError(f"cannot join the Ray cluster at {address}: "
                           f"{first_line(exc)}.{hint}") from None
    return True


def _run_on_cluster(ray: Any, recipe: ModelRecipe, settings: RaySettings, paths: list[str],
                    *, batch_size: int, resize: ResizeMode, progress: bool,
                    on_failure: FailureHandler | None, desc: str) -> Iterator[Batch]:
    import ray.data

    low, high, gpus = _pool_size(ray.cluster_resources(), settings, recipe.options.device)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the command's own bar counts rows on arrival
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    files = _ship_model_files(ray, recipe.options)
    dataset = ray.data.from_items(
        [{"index": i, "path": p} for i, p in enumerate(paths)],
        override_num_blocks=max(1, min(-(-len(paths) // batch_size), 10_000)))
    # Reading tasks reserve the memory of their decoded batch: besides being true, that keeps
    # Ray Data from fusing them into the actors, so decoding overlaps the model's work.
    batch_bytes = batch_size * recipe.image_size ** 2 * 3
    dataset = dataset.map_batches(
        _decode_batch, fn_kwargs={"size": recipe.image_size, "resize": resize.value},
        batch_size=batch_size, batch_format="numpy", num_cpus=1,
        memory=READ_TASK_MEMORY + 2 * batch_bytes)
    dataset = dataset.map_batches(
        _ModelActor, fn_constructor_kwargs={"recipe": recipe, "files": files,
                                            "batch_size": batch_size},
        batch_size=batch_size, batch_format="numpy", num_cpus=1, num_gpus=gpus,
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high))
    try:
        yield from _ordered_batches(dataset.iter_batches(batch_size=None, batch_format="numpy"),
                                    paths, progress=progress, on_failure=on_failure, desc=desc)
    except ray.exceptions.RayError as exc:
        raise ClusterError(f"the Ray job failed: {_root_cause(exc)}") from None


def _pool_size(resources: dict[str, float], settings: RaySettings, device: str
               ) -> tuple[int, int, int]:
    """(min actors, max actors, GPUs per actor) that the cluster can hold next to one
    reading task.

    Raises:
        ClusterError: even the minimum pool cannot fit, so the job would wait forever.
    """
    from resnet_cli.devices import parse_device

    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    kind = parse_device(device).kind
    use_gpus = kind == "gpu" or (kind == "auto" and gpus > 0)
    fits = cpus - 1  # one CPU stays free for reading and decoding
    if use_gpus:
        fits = min(fits, gpus)
    if settings.min_actors > fits:
        what = f"{gpus} GPU(s) and {cpus} CPU(s)" if use_gpus else f"{cpus} CPU(s)"
        raise ClusterError(
            f"--ray-actors {settings.min_actors} cannot run: the cluster has {what}, and each "
            f"actor takes 1 CPU{' and 1 GPU' if use_gpus else ''} besides 1 CPU for reading "
            f"images, so at most {max(fits, 0)} actor(s) fit. Use a smaller --ray-actors "
            "or a larger cluster.")
    high = fits if settings.max_actors is None else min(settings.max_actors, fits)
    return settings.min_actors, max(high, settings.min_actors), int(use_gpus)


def _ship_model_files(ray: Any, options: ModelOptions) -> list[tuple[str, Any]]:
    """The files the model is loaded from, put in the object store as (name, ref): the
    weights or model file first (ImageNet weights from this machine's cache), then a
    `.keras` model's card. Empty for random weights."""
    from resnet_cli.card import CONFIG_FILENAME
    from resnet_cli.registry import get_spec, imagenet_weights_file
    from resnet_cli.weights import load_imagenet_weights

    weights = options.weights.strip()
    if weights.lower() in ("none", ""):
        return []
    if weights.lower() == "imagenet":
        wanted = imagenet_weights_file(get_spec(options.model), include_top=options.include_top)
        paths = [load_imagenet_weights(wanted, progress=False)]
    else:
        paths = [Path(weights).expanduser()]
        card = paths[0].parent / CONFIG_FILENAME
        if paths[0].suffix.lower() == ".keras" and card.is_file():
            paths.append(card)
    return [(path.name, ray.put(path.read_bytes())) for path in paths]


def _decode_batch(batch: dict[str, np.ndarray], *, size: int, resize: str
                  ) -> dict[str, np.ndarray]:
    """A Ray task: decode a batch of paths into images; failed ones are black, with the
    reason in `error` ("" for the ones that were read)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    paths = [str(p) for p in batch["path"]]
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)

    def read(position: int) -> str:
        try:
            images[position] = load_image(paths[position], size=size, resize=ResizeMode(resize))
        except ImageError as exc:
            return exc.reason
        return ""

    threads = READ_THREADS if any(is_url(p) for p in paths) else 1
    with ThreadPoolExecutor(max_workers=threads) as pool:
        errors = list(pool.map(read, range(len(paths))))
    return {"index": batch["index"], "image": images, "error": np.array(errors, dtype=object)}


class _ModelActor:
    """A Ray actor: loads the model once from the shipped files, then runs batches."""

    def __init__(self, recipe: ModelRecipe, files: list[tuple[str, Any]],
                 batch_size: int) -> None:
        import numpy as np
        import ray

        self._folder = tempfile.TemporaryDirectory(prefix="resnet-ray-")
        options = recipe.options
        for position, (name, ref) in enumerate(files):
            target = Path(self._folder.name) / name
            target.write_bytes(ray.get(ref))
            if position == 0:
                options = replace(options, weights=str(target))
        self._predictor = _build_predictor(replace(recipe, options=options), batch_size)
        probe = np.zeros((1, recipe.image_size, recipe.image_size, 3), dtype=np.uint8)
        self._row_shape = tuple(self._predictor(probe).shape[1:])  # also compiles it

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        ok = np.array([not e for e in batch["error"]], dtype=bool)
        outputs = np.zeros((len(ok), *self._row_shape), dtype=np.float32)
        images, step = batch["image"][ok], self._predictor.batch_size
        if len(images):
            outputs[ok] = np.concatenate([self._predictor(images[i:i + step])
                                          for i in range(0, len(images), step)])
        return {"index": batch["index"], "output": outputs, "error": batch["error"]}


def _build_predictor(recipe: ModelRecipe, batch_size: int) -> BatchPredictor:
    """The predictor `classify` (no `features`) or `extract` runs locally, built the same way."""
    from resnet_cli.inference import make_predictor
    from resnet_cli.models import load_model

    loaded = load_model(recipe.options, progress=False)
    if recipe.features is None:
        return make_predictor(loaded, batch_size)
    pooling, layer = recipe.features
    if loaded.runtime != "keras":  # an exported backbone computes its own features
        from resnet_cli.runtimes import exported_features

        exported_features(loaded, pooling=pooling, layer=layer)
        return make_predictor(loaded, batch_size)
    from resnet_cli.backbones import build_feature_model

    model = build_feature_model(loaded, pooling=None if pooling in (None, "none") else pooling,
                                layer=layer)
    return make_predictor(loaded, batch_size, model=model)


def _ordered_batches(batches: Iterator[dict[str, np.ndarray]], paths: list[str], *,
                     progress: bool, on_failure: FailureHandler | None, desc: str
                     ) -> Iterator[Batch]:
    """The cluster's output blocks as `inference.Batch`es, checked to be in input order;
    failures go to `on_failure` in order."""
    from resnet_cli.progress import progress_bar

    expected = 0
    with progress_bar(total=len(paths), desc=desc, enabled=progress, unit="img") as bar:
        for block in batches:
            indices = [int(i) for i in block["index"]]
            if indices != list(range(expected, expected + len(indices))):
                raise ClusterError(f"rows came back out of order (expected input {expected}, "
                                   f"got {indices[:1]}); rerun without --ray.")
            chunk = [paths[i] for i in indices]
            errors = {position: ImageError(chunk[position], str(reason))
                      for position, reason in enumerate(block["error"]) if reason}
            ok = [position for position in range(len(chunk)) if position not in errors]
            if on_failure is not None:
                for position in sorted(errors):
                    on_failure(errors[position])
            expected += len(indices)
            bar.update(len(indices))
            yield Batch(paths=chunk, ok=ok, outputs=block["output"][ok], errors=errors)
    if expected != len(paths):
        raise ClusterError(f"the Ray job returned {expected} of {len(paths)} rows.")


def _root_cause(exc: BaseException) -> str:
    """The first line of the error that ended a Ray job, without Ray's wrapping."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return _root_cause(cause)
    return first_line(exc)
