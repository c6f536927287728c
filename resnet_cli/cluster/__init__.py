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
a bounded number of actors that fail while loading the model). The pool is sized from the
cluster's AVAILABLE resources: the minimum pool and one reading task must fit in what is free
now, or the run waits up to `--ray-timeout` for it (an autoscaling cluster adding workers, a
busy one finishing), says on stderr what it waits for, and then fails in one line. Every
failure of Ray's is one `ClusterError` line; Ray Data's global settings (its `DataContext`)
are changed only on a copy, for the run. `pool` holds the settings and the pool's sizing.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_cli.cluster.pool import (
    DEFAULT_TIMEOUT,
    ClusterError,
    RaySettings,
    parse_ray_actors,
    wait_for_pool,
)
from resnet_cli.errors import ImageError, ResnetCliError, first_line
from resnet_cli.extras import require_module
from resnet_cli.images import ResizeMode, load_image
from resnet_cli.inference import (
    Batch,
    BatchRunner,
    FeatureSpec,
    RunnerFactory,
    fitted_batch_size,
)
from resnet_cli.loaded import FailureHandler, LoadedModel
from resnet_cli.models import ModelOptions
from resnet_cli.remote import is_url

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.loaded import BatchPredictor

log = logging.getLogger(__name__)

READ_TASK_MEMORY = 64 * 1024 * 1024  # bytes a reading task needs besides its batch
READ_THREADS = 8  # per reading task, for remote (URL) inputs that wait on the network
ACTOR_START_SECONDS = 600.0  # for an actor to import TensorFlow and load the model
CONNECT_SECONDS = 10.0  # to reach the head's port before Ray is asked to join it


@dataclass(frozen=True)
class ModelRecipe:
    """What each actor builds: the model of `options` (every default already resolved
    where the command loaded it), or with `features` the feature model `extract` cuts
    from it."""

    options: ModelOptions
    image_size: int
    features: FeatureSpec | None = None


def ray_runner(address: str, actors: str, options: ModelOptions, *,
               timeout: float = DEFAULT_TIMEOUT) -> RunnerFactory:
    """What `classify_images` / `extract_features` take as `runner`: for the model they
    load from `options`, a `BatchRunner` (what `inference.predict_paths` is locally) that runs
    it on the Ray cluster at `address` with `actors` (MIN[:MAX]) actors, batches in input
    order. With `features` (resolved by `extract`), the actors run extract's feature model.
    The actors get the defaults the command resolved (image size, the resize of the card,
    the precision this machine settled on), never the raw options."""
    low, high = parse_ray_actors(actors)
    settings = RaySettings(address=address, min_actors=low, max_actors=high, timeout=timeout)

    def bind(loaded: LoadedModel, *, features: FeatureSpec | None = None) -> BatchRunner:
        resolved = replace(options, image_size=loaded.image_size,
                           precision="fp32" if loaded.policy == "float32" else "bf16")
        if features is not None:
            resolved = replace(resolved, include_top=False, pooling=None)
        return _runner(ModelRecipe(resolved, loaded.image_size, features), settings,
                       resize_of=loaded.resize_or_own)

    return bind


def _runner(recipe: ModelRecipe, settings: RaySettings, *,
            resize_of: Callable[[ResizeMode | None], ResizeMode]) -> BatchRunner:

    def run(paths: Sequence[str], *, batch_size: int, resize: ResizeMode | None = None,
            progress: bool = True, on_failure: FailureHandler | None = None,
            desc: str = "images") -> Iterator[Batch]:
        from resnet_cli.devices import native_stderr_to_log

        ray = require_module("ray", extra="ray", purpose="--ray")
        started_here = False
        # Ray's notices (token auth, its C++ core's log lines) go to the debug log, not the
        # terminal; its errors reach the user as one ClusterError line. The wait for
        # resources is said outside that, on stderr.
        try:
            with native_stderr_to_log():
                started_here = _connect(ray, settings.address)
            pool = wait_for_pool(ray, settings, recipe.options.device)
            with native_stderr_to_log(), _ray_data_settings(ray, settings) as context:
                yield from _run_on_cluster(
                    ray, context, recipe, pool, list(paths), batch_size=fitted_batch_size(
                        batch_size, len(paths)), resize=resize_of(resize),
                    progress=progress, on_failure=on_failure, desc=desc)
        except (ResnetCliError, KeyboardInterrupt, GeneratorExit):
            raise
        except Exception as exc:  # Ray's own errors, of every kind: one line, no traceback
            raise ClusterError(f"the Ray job failed: {_root_cause(exc)}") from None
        finally:
            if started_here:
                with native_stderr_to_log():
                    ray.shutdown()

    return run


def _connect(ray: Any, address: str) -> bool:
    """Join (or start, for `local`) the cluster; True when this call started Ray here."""
    if ray.is_initialized():  # a program that set Ray up itself (a notebook, the tests)
        return False
    _check_reachable(address)
    runtime_env = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, runtime_env=runtime_env)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError, gRPC errors...
        hint = (" Start one with `ray start --head`, set RAY_ADDRESS, or use --ray local."
                if address == "auto" else "")
        if address not in ("auto", "local") and "RAY_AUTH_MODE" not in os.environ:
            # Ray's own reason (an unauthenticated call) goes to its C++ log, not the error
            hint += (" A cluster with token authentication also needs RAY_AUTH_MODE=token "
                     "here (and its token in ~/.ray/auth_token).")
        raise ClusterError(f"cannot join the Ray cluster at {address}: "
                           f"{first_line(exc).rstrip('.')}.{hint}") from None
    return True


def _check_reachable(address: str) -> None:
    """Fail in one line when nothing listens at HOST:PORT: `ray.init` would retry for
    minutes against a dead address without a word."""
    import socket

    match = re.fullmatch(r"(?:ray://)?\[?([^\]\s]+?)\]?:(\d+)", address)
    if match is None:  # auto, local: Ray finds (or starts) the cluster itself
        return
    try:
        with socket.create_connection((match.group(1), int(match.group(2))),
                                      timeout=CONNECT_SECONDS):
            pass
    except OSError as exc:
        raise ClusterError(f"cannot join the Ray cluster at {address}: nothing answers there "
                           f"({exc.strerror or first_line(exc)}). Check the head's address "
                           "(`ray start --head` prints it).") from None


@contextmanager
def _ray_data_settings(ray: Any, settings: RaySettings) -> Iterator[Any]:
    """This job's Ray Data settings, on a copy of the current DataContext: the caller's
    (a notebook's, the tests') are restored afterwards, as is Ray Data's log level."""
    import ray.data

    context = ray.data.DataContext.get_current().copy()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the command's own bar counts rows on arrival
    # A pool that never starts (its resources taken between our check and Ray's scheduling)
    # fails too; the bound includes the actors' loading of the model.
    context.wait_for_min_actors_s = int(settings.timeout + ACTOR_START_SECONDS)
    ray_log = logging.getLogger("ray.data")
    level = ray_log.level
    ray_log.setLevel(logging.ERROR)
    try:
        with ray.data.DataContext.current(context):
            yield context
    finally:
        ray_log.setLevel(level)


def _run_on_cluster(ray: Any, context: Any, recipe: ModelRecipe, pool: tuple[int, int, int],
                    paths: list[str], *, batch_size: int, resize: ResizeMode, progress: bool,
                    on_failure: FailureHandler | None, desc: str) -> Iterator[Batch]:
    import ray.data

    low, high, gpus = pool
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
    except ray.exceptions.GetTimeoutError:
        raise ClusterError(f"the Ray cluster did not start {low} model actor(s) within "
                           f"{context.wait_for_min_actors_s} s (--ray-timeout plus "
                           f"{ACTOR_START_SECONDS:g} s to load the model).") from None


def _ship_model_files(ray: Any, options: ModelOptions) -> list[tuple[str, Any]]:
    """The files the model is loaded from, put in the object store as (name, ref): the
    weights or model file first (ImageNet weights from this machine's cache), then a
    `.keras` model's card. Empty for random weights."""
    from resnet_cli.card import CONFIG_FILENAME
    from resnet_cli.registry import get_spec, imagenet_weights_file
    from resnet_cli.runtimes import exported_files
    from resnet_cli.weights import load_imagenet_weights

    weights = options.weights.strip()
    if weights.lower() in ("none", ""):
        return []
    if weights.lower() == "imagenet":
        wanted = imagenet_weights_file(get_spec(options.model), include_top=options.include_top)
        paths = [load_imagenet_weights(wanted, progress=False)]
    else:
        paths = exported_files(Path(weights).expanduser())  # an OpenVINO .xml: its .bin too
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
    """The predictor `classify` (no `features`) or `extract` runs locally, built the same way
    from the same resolved values."""
    from resnet_cli.inference import make_predictor
    from resnet_cli.models import load_model

    loaded = load_model(recipe.options, progress=False)
    spec = recipe.features
    if spec is None:
        return make_predictor(loaded, batch_size)
    if loaded.runtime != "keras":  # an exported backbone computes its own features
        from resnet_cli.runtimes import exported_features

        exported_features(loaded, pooling=spec.pooling, layer=spec.layer)
        return make_predictor(loaded, batch_size)
    from resnet_cli.backbones import build_feature_model

    model = build_feature_model(loaded, pooling=spec.pooling, layer=spec.layer)
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
