"""The one inference path: paths -> decoded batches -> a predictor -> rows.

Every command that runs a model goes through `predict_paths` (or `iter_batches` with a
predictor of its own). A predictor is anything with the small `BatchPredictor` interface:
uint8 images `(n, size, size, 3)` in, float32 rows out, a fixed `batch_size`, and whether it
computes on the CPU (`shares_cpu`). `Predictor` is the Keras one; other runtimes plug in behind
`make_predictor` without touching the commands.

`iter_batches` keeps the next batches decoding in a thread pool (Pillow releases the GIL)
while the model works on the current one, and `Predictor` runs the model as one
`tf.function` with a fixed batch shape, so it is traced once and never retraced.

When the model runs on the CPU it keeps every core busy, and a decode thread that takes a
core in the middle of an operation stalls all of TensorFlow's threads until it lets go. So
there the decode threads run at the lowest priority (`yield_cpu`), on the cycles the model
leaves idle, and whatever of a batch is not decoded when the model wants it is decoded by
the calling thread itself, at normal priority, while the model waits anyway.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from resnet_cli.errors import ImageError
from resnet_cli.folding import fold_batch_norm
from resnet_cli.images import ResizeMode, load_image
from resnet_cli.loaded import BatchPredictor, FailureHandler, LoadedModel

if TYPE_CHECKING:
    import numpy as np

PREFETCH_BATCHES = 2


class BatchRunner(Protocol):
    """Something that runs a model over paths as `predict_paths` does (in input order, failures
    to `on_failure`): a local predictor, or a cluster (`cluster.ray_runner`)."""

    def __call__(self, paths: Sequence[str], *, batch_size: int,
                 resize: ResizeMode | None = ..., progress: bool = ...,
                 on_failure: FailureHandler | None = ..., desc: str = ...) -> Iterator[Batch]:
        """Batches of `paths`' rows, in input order."""
        ...


@dataclass(frozen=True)
class FeatureSpec:
    """What `extract` computes, resolved once before the local/Ray split
    (`extract.resolve_features`): `pooling` is avg, max or none (the (h, w, C) map); `layer`
    None means the last conv stage. For an exported backbone, the file's own pooling."""

    pooling: str
    layer: str | None = None


class RunnerFactory(Protocol):
    """Makes the `BatchRunner` for a model loaded here (whose input size and outputs it runs):
    its classifier's rows, or with `features` the rows `extract` writes."""

    def __call__(self, loaded: LoadedModel, *, features: FeatureSpec | None = None
                 ) -> BatchRunner:
        """The runner of `loaded` (or of its features)."""
        ...


def fitted_batch_size(batch_size: int, count: int) -> int:
    """The batch size for `count` inputs: no larger than needed, since batches are padded to
    full size (classifying 3 photos at batch 32 would compute 32 rows)."""
    return max(1, min(batch_size, count))


class CompiledPredictor:
    """A `BatchPredictor` over one compiled function (`_run`) of exactly `batch_size` rows, so
    that it is traced once: a short batch is padded with black images, whose rows are dropped.
    Subclasses set `batch_size`, `shares_cpu` and `_run`."""

    batch_size: int
    shares_cpu: bool
    _run: Any  # a tf.function over uint8 (batch_size, size, size, 3)

    @property
    def trace_count(self) -> int:
        """How many times the compiled function was traced (1 after the first call, ever)."""
        return int(self._run.experimental_get_tracing_count())

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Rows for up to `batch_size` images of shape (n, size, size, 3), uint8."""
        import numpy as np

        count = len(images)
        if count < self.batch_size:
            pad = np.zeros((self.batch_size - count, *images.shape[1:]), dtype=np.uint8)
            images = np.concatenate([images, pad]) if count else pad
        return np.asarray(self._run(images))[:count]


class Predictor(CompiledPredictor):
    """The model plus its preprocessing as one compiled function over uint8 batches.

    The function runs an inference copy of the model with its BatchNormalization layers folded
    into the convolutions (`folding.fold_batch_norm`): the same outputs, computed faster.

    Every call runs at exactly `batch_size` rows (a short batch is padded), so the function is
    traced once. The function is kept on `loaded`, so a second Predictor for the same model and
    batch size (a second command call in one process, a benchmark run) reuses it. Outputs are
    float32 whatever precision the model computes in. With a `tf.distribute` strategy of
    several replicas (the model built under its scope), each batch is split across them and
    `batch_size` is rounded up to a multiple of them.
    """

    def __init__(self, loaded: LoadedModel, batch_size: int, *, model: Any = None,
                 strategy: Any = None) -> None:
        replicas = strategy.num_replicas_in_sync if strategy is not None else 1
        self.batch_size = -(-batch_size // replicas) * replicas  # a multiple of the replicas
        self.image_size = loaded.image_size
        network = model if model is not None else loaded.model
        mode = loaded.preprocess_mode
        # The entry holds `network`, so its id stays unique while the entry exists.
        key = (id(network), self.batch_size, self.image_size, mode, id(strategy))
        entry = loaded.compiled.get(key)
        if entry is None:
            with strategy.scope() if strategy is not None else contextlib.nullcontext():
                folded = fold_batch_norm(network)
            entry = loaded.compiled[key] = (network, _compile(
                folded, self.batch_size, self.image_size, mode, strategy))
        self._run = entry[1]
        # The model computes on the CPU, where image decoding competes with it for cores.
        self.shares_cpu = "CPU" in loaded.device.upper() and strategy is None


def trace_count(predictor: BatchPredictor) -> int:
    """How often `predictor`'s compiled function was traced (0 for a runtime that traces
    nothing: an exported file's interpreter)."""
    return predictor.trace_count if isinstance(predictor, CompiledPredictor) else 0


def make_predictor(loaded: LoadedModel, batch_size: int, *, inputs: int | None = None,
                   model: Any = None, strategy: Any = None) -> BatchPredictor:
    """The predictor for `loaded` (or for `model`, another network over the same input),
    at `batch_size`, or fewer when there are only `inputs` images (batches are padded)."""
    if inputs is not None:
        batch_size = fitted_batch_size(batch_size, inputs)
    if loaded.exported is not None:  # a file from `resnet export`: its own runtime, as it is
        if model is not None:  # another network over its input: only Keras models have one
            loaded.keras_model("another output of the model")
        return loaded.exported.predictor(batch_size)
    return Predictor(loaded, batch_size, model=model, strategy=strategy)


def predict_paths(
    paths: Sequence[str],
    loaded: LoadedModel,
    *,
    batch_size: int,
    resize: ResizeMode | None = None,
    progress: bool = True,
    on_failure: FailureHandler | None = None,
    model: Any = None,
    strategy: Any = None,
    desc: str = "images",
) -> Iterator[Batch]:
    """Run `loaded` (or `model` on its input) over `paths`, batch by batch, in input order;
    images are resized as `resize` says, by default as the model was trained (its card)."""
    predictor = make_predictor(loaded, batch_size, inputs=len(paths), model=model,
                               strategy=strategy)
    return iter_batches(paths, predictor, image_size=loaded.image_size,
                        resize=loaded.resize_or_own(resize),
                        progress=progress, on_failure=on_failure, desc=desc)


def _compile(network: Any, batch_size: int, image_size: int, mode: str,
             strategy: Any = None) -> Any:
    import tensorflow as tf
    from keras.applications import imagenet_utils

    spec = tf.TensorSpec((batch_size, image_size, image_size, 3), tf.uint8)

    def forward(images: Any) -> Any:
        x = imagenet_utils.preprocess_input(tf.cast(images, tf.float32), mode=mode)
        return tf.cast(network(x, training=False), tf.float32)

    if strategy is None or strategy.num_replicas_in_sync == 1:
        return tf.function(forward, input_signature=[spec])

    # Several GPUs: each replica takes its slice of the batch; rows come back in order.
    per_replica = batch_size // strategy.num_replicas_in_sync

    def step(images: Any) -> Any:
        start = tf.distribute.get_replica_context().replica_id_in_sync_group * per_replica
        return forward(images[start:start + per_replica])

    @tf.function(input_signature=[spec])  # type: ignore[untyped-decorator]
    def run_split(images: Any) -> Any:
        return strategy.gather(strategy.run(step, args=(images,)), axis=0)

    return run_split


@dataclass
class Batch:
    """One batch of inputs. `outputs` row j belongs to `paths[ok[j]]`; failed inputs are in
    `errors`, keyed by their position in `paths`."""

    paths: list[str]
    ok: list[int]
    outputs: np.ndarray
    errors: dict[int, ImageError]


def iter_batches(
    paths: Sequence[str],
    predictor: BatchPredictor,
    *,
    image_size: int,
    resize: ResizeMode = ResizeMode.crop,
    progress: bool = True,
    on_failure: FailureHandler | None = None,
    workers: int | None = None,
    desc: str = "images",
) -> Iterator[Batch]:
    """Decode `paths` in batches of `predictor.batch_size` and run `predictor` on each, in
    input order; each input that cannot be read goes to `on_failure`, in order.

    When the predictor shares the CPU, the decode threads run at the lowest CPU priority (on
    Linux): see the module's docstring.
    """
    import numpy as np

    from resnet_cli.progress import progress_bar

    def decode(path: str) -> np.ndarray:
        return load_image(path, size=image_size, resize=resize)

    batch_size, yield_cpu = predictor.batch_size, predictor.shares_cpu
    chunks = [list(paths[i:i + batch_size]) for i in range(0, len(paths), batch_size)]
    workers = workers or min(4, os.cpu_count() or 1)
    pending: deque[tuple[list[str], list[Future[np.ndarray]]]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode",
                            initializer=lowest_priority if yield_cpu else None) as pool, \
            progress_bar(total=len(paths), desc=desc, enabled=progress and len(chunks) > 1,
                         unit="img") as bar:
        def submit(chunk: list[str]) -> None:
            pending.append((chunk, [pool.submit(decode, p) for p in chunk]))

        upcoming = iter(chunks)
        try:
            for chunk in upcoming:
                submit(chunk)
                if len(pending) >= PREFETCH_BATCHES:
                    break
            while pending:
                chunk, futures = pending.popleft()
                next_chunk = next(upcoming, None)
                if next_chunk is not None:
                    submit(next_chunk)
                arrays, ok, errors = _gather(chunk, futures, decode)
                if on_failure is not None:
                    for position in sorted(errors):
                        on_failure(errors[position])
                if arrays:
                    outputs = predictor(np.stack(arrays))
                else:
                    outputs = np.zeros((0,), dtype=np.float32)
                bar.update(len(chunk))
                yield Batch(paths=chunk, ok=ok, outputs=outputs, errors=errors)
        finally:
            for _, futures in pending:
                for future in futures:
                    future.cancel()


def _gather(chunk: list[str], futures: list[Future[np.ndarray]],
            decode: Callable[[str], np.ndarray]
            ) -> tuple[list[np.ndarray], list[int], dict[int, ImageError]]:
    """The decoded images of a batch that is due, as (arrays, their positions, errors).

    Images no worker has started yet are decoded here, from the back of the batch while the
    workers go on from the front (they take work in order), so every thread helps finish it.
    """
    results: dict[int, np.ndarray | ImageError] = {}
    for position in reversed(range(len(futures))):
        if not futures[position].cancel():
            break  # started: so are all before it
        try:
            results[position] = decode(chunk[position])
        except ImageError as exc:
            results[position] = exc
    arrays, ok, errors = [], [], {}
    for position, future in enumerate(futures):
        try:
            result = results[position] if position in results else future.result()
        except ImageError as exc:
            result = exc
        if isinstance(result, ImageError):
            errors[position] = result
        else:
            arrays.append(result)
            ok.append(position)
    return arrays, ok, errors


def lowest_priority() -> None:
    """Thread-pool initializer: give the calling thread the lowest CPU priority (nice 19).

    Linux keeps a nice value per thread; elsewhere the threads keep their priority.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
