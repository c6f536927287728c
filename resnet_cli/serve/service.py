"""The served model, without HTTP: decoding on worker threads, the batcher, warm-up, and
answers as plain data.

`ModelService.warm_up` compiles the model for every batch size of `batching.batch_sizes` (and
the Grad-CAM step of `resnet explain` at batch 1, for a Keras classifier) and runs each once,
so nothing is traced while serving. Uploaded bytes are decoded by `images.decode_image`, the
reader of every command, on a thread pool, never on the event loop: at the lowest CPU priority
when the model computes on the CPU (as in `inference.iter_batches`), unless the request is alone
in the server, with no model run to yield to.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from resnet_cli.card import public_source
from resnet_cli.classify import DEFAULT_TOP_K, top_predictions
from resnet_cli.errors import ImageError, UsageError
from resnet_cli.images import decode_image
from resnet_cli.inference import lowest_priority, make_predictor
from resnet_cli.loaded import BatchPredictor
from resnet_cli.results import ClassifyResult
from resnet_cli.serve.batching import Batcher, batch_sizes
from resnet_cli.serve.options import ServeOptions

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.explain import GradCamPredictor
    from resnet_cli.loaded import LoadedModel
    from resnet_cli.models import ModelOptions
    from resnet_cli.serve.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
EXPLAIN_QUEUE = 8  # Grad-CAM requests waiting at most (the page asks for one at a time)


@dataclass(frozen=True)
class Upload:
    """One uploaded image: the name it is answered under, and its bytes (a view of the
    request body for a form's file, so that the body is held once)."""

    name: str
    data: bytes | memoryview


@dataclass(frozen=True)
class Heatmap:
    """The Grad-CAM heatmap of an image's top class: `rows` (h lists of w values in [0, 1])
    over the model's input square."""

    name: str
    index: int
    label: str
    probability: float
    rows: list[list[float]]


def load_served(options: ModelOptions, *, progress: bool = True) -> tuple[LoadedModel, Any]:
    """The model to serve, as (loaded, network): an exported file as it is (network None), or
    `backbones.load_network`'s classifier or pooled backbone, the `--pooling` rule of every
    command.

    Raises:
        UsageError / WeightsError / ModelFileError: from loading the model.
    """
    from resnet_cli.backbones import load_network
    from resnet_cli.models import load_model
    from resnet_cli.runtimes import exported_runtime

    if exported_runtime(options.weights) is not None:
        return load_model(options, progress=progress), None
    return load_network(options, progress=progress)


class ModelService:
    """One loaded model behind a batching queue; `warm_up` before use, `close` after.

    `network` is what runs for a Keras model (its classifier or pooled backbone, from
    `load_served`); by default `loaded`'s own model."""

    def __init__(self, loaded: LoadedModel, options: ServeOptions, metrics: Metrics,
                 network: Any = None) -> None:
        self.loaded = loaded
        self.network = network
        self.options = options
        self.metrics = metrics
        self.name = options.name or loaded.spec.name
        self.resize = loaded.resize_or_own(options.resize)
        self.sizes = batch_sizes(options.max_batch_size)
        self.output_shape: tuple[int, ...] = ()
        self.ready = threading.Event()
        self.batcher: Batcher | None = None
        self.explainer: Batcher | None = None
        self._predictors: list[Any] = []
        self._gradcam: GradCamPredictor | None = None
        self._decoder: ThreadPoolExecutor | None = None
        self._alone: ThreadPoolExecutor | None = None
        # Request parsing and answer encoding: off the event loop, and not behind decoding.
        self._protocol = ThreadPoolExecutor(max_workers=2, thread_name_prefix="protocol")
        self.on_death: Callable[[BaseException], None] | None = None

    @property
    def labels(self) -> tuple[Any, ...] | None:
        return self.loaded.labels

    @property
    def can_explain(self) -> bool:
        """Whether the heatmap switch works: a Keras classifier, with `explain` on."""
        return (self.options.explain and self.loaded.runtime == "keras"
                and self.loaded.labels is not None)

    def warm_up(self) -> float:
        """Compile the model for every batch size (and Grad-CAM), run each once, start the
        batchers; returns the seconds it took. Sets `ready` at the end."""
        import numpy as np

        started = time.perf_counter()
        predictors = self._build_predictors()
        size = self.loaded.image_size
        for predictor in predictors.values():
            rows = predictor(np.zeros((1, size, size, 3), dtype=np.uint8))
            self.output_shape = tuple(rows.shape[1:])
        self._predictors = list(predictors.values())
        shares_cpu = any(p.shares_cpu for p in self._predictors)
        workers = min(4, os.cpu_count() or 1)
        self._decoder = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="decode",
            initializer=lowest_priority if shares_cpu else None)
        # A request alone in the server has no model to yield to: it decodes at normal priority.
        self._alone = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode-alone")
        lock = threading.Lock()
        self.batcher = Batcher(predictors, timeout=self.options.batch_timeout_ms / 1000,
                               max_queue=self.options.max_queue, compute_lock=lock,
                               on_batch=self.metrics.batch_done, on_death=self._died,
                               name="batcher")
        if self.can_explain:
            from resnet_cli.explain import grad_cam_predictor

            self._gradcam = grad_cam_predictor(self.loaded, resize=self.resize, batch_size=1)
            self._gradcam(np.zeros((1, size, size, 3), dtype=np.uint8))
            self._predictors.append(self._gradcam)
            self.explainer = Batcher({1: self._gradcam}, timeout=0.0, max_queue=EXPLAIN_QUEUE,
                                     compute_lock=lock, on_death=self._died, name="explainer")
        self.metrics.watch(queue_depth=lambda: float(self.pending),
                           traces=lambda: float(self.trace_count))
        self.ready.set()
        self.metrics.ready.set(1)
        return time.perf_counter() - started

    def _build_predictors(self) -> dict[int, BatchPredictor]:
        model = None
        if self.loaded.exported is None:
            from resnet_cli.folding import fold_batch_norm

            # One folded copy shared by every batch size (each Predictor would fold its own).
            model = fold_batch_norm(self.network if self.network is not None
                                    else self.loaded.model)
        return {size: make_predictor(self.loaded, size, model=model) for size in self.sizes}

    @property
    def alive(self) -> bool:
        """False once a model thread has died (the health endpoints then answer 503)."""
        return all(b.alive for b in (self.batcher, self.explainer) if b is not None)

    def _died(self, exc: BaseException) -> None:
        self.metrics.ready.set(0)
        if self.on_death is not None:
            self.on_death(exc)

    async def offload(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` on the protocol threads (parsing, encoding): never on the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._protocol, function, *args)

    @property
    def pending(self) -> int:
        """Images accepted and not yet answered."""
        return sum(b.pending for b in (self.batcher, self.explainer) if b is not None)

    @property
    def trace_count(self) -> int:
        """Traces of every compiled function: one each once warmed up, and no more."""
        return sum(int(getattr(p, "trace_count", 1)) for p in self._predictors)

    def hurry(self) -> None:
        """Shutting down: run what is queued without waiting for company."""
        for batcher in (self.batcher, self.explainer):
            if batcher is not None:
                batcher.hurry()

    def close(self, timeout: float | None = None) -> None:
        """Answer what is queued (waiting at most `timeout` s), then stop the threads."""
        for batcher in (self.batcher, self.explainer):
            if batcher is not None:
                batcher.stop(timeout)
        for pool in (self._decoder, self._alone, self._protocol):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    @contextmanager
    def admit(self, count: int, *, explain: bool = False) -> Iterator[None]:
        """Hold `count` places in the queue (raises batching.QueueFullError when full)."""
        batcher = self.explainer if explain else self.batcher
        if batcher is None:
            raise RuntimeError("warm_up has not run")
        with batcher.admit(count):
            yield

    async def decode(self, uploads: Sequence[Upload]) -> list[np.ndarray | ImageError]:
        """Each upload decoded and resized on the worker threads, or why it cannot be."""
        loop = asyncio.get_running_loop()
        size = self.loaded.image_size

        def read(upload: Upload) -> np.ndarray | ImageError:
            try:
                return decode_image(upload.data, name=upload.name, size=size,
                                    resize=self.resize, max_pixels=self.options.max_pixels)
            except ImageError as exc:
                self.metrics.decode_failures.inc()
                return exc

        pool = self._alone if self.pending <= len(uploads) else self._decoder
        return list(await asyncio.gather(*(loop.run_in_executor(pool, read, upload)
                                           for upload in uploads)))

    async def predict(self, images: np.ndarray) -> np.ndarray:
        """Output rows for uint8 images (n, size, size, 3), through the batching queue (the
        caller has admitted them)."""
        if self.batcher is None:
            raise RuntimeError("warm_up has not run")
        return await asyncio.wrap_future(self.batcher.submit(images))

    async def classify(self, uploads: Sequence[Upload], top_k: int | None
                       ) -> list[ClassifyResult]:
        """`resnet classify`'s results for the uploads, in order (the caller has admitted
        them); an unreadable one gets its reason."""
        import numpy as np

        labels = self.labels
        if labels is None:
            raise UsageError("this model has no classifier: ask /v2/models/NAME/infer for "
                             "its features.")
        k = check_top_k(top_k, len(labels))
        decoded = await self.decode(uploads)
        good = [image for image in decoded if not isinstance(image, ImageError)]
        rows = iter(await self.predict(np.stack(good)) if good else ())
        return [ClassifyResult(path=upload.name, error=image.reason)
                if isinstance(image, ImageError) else
                ClassifyResult(path=upload.name, predictions=top_predictions(next(rows),
                                                                             labels, k))
                for upload, image in zip(uploads, decoded, strict=True)]

    async def explain(self, upload: Upload) -> Heatmap:
        """The Grad-CAM heatmap of the upload's top class (the caller has admitted it).

        Raises:
            ImageError: the upload cannot be read.
        """
        if self.explainer is None or self._gradcam is None or self.labels is None:
            raise UsageError("heatmaps need a Keras classifier served with --explain.")
        (image,) = await self.decode([upload])
        if isinstance(image, ImageError):
            raise image
        row = (await asyncio.wrap_future(self.explainer.submit(image[None])))[0]
        index, probability, classes = self._gradcam.unpack(row)
        heatmap = classes[0][2]
        return Heatmap(name=upload.name, index=index, label=self.labels[index].name,
                       probability=probability,
                       rows=[[round(float(v), 3) for v in line] for line in heatmap])


def check_top_k(top_k: int | None, classes: int) -> int:
    """`top_k`, or the default (5, or all classes of a model with fewer).

    Raises:
        UsageError: out of 1..classes.
    """
    if top_k is None:
        return min(DEFAULT_TOP_K, classes)
    if not 1 <= top_k <= classes:
        raise UsageError(f"top_k must be between 1 and {classes}; got {top_k}.")
    return top_k


def model_facts(service: ModelService) -> dict[str, Any]:
    """What the page and the v2 metadata say about the model (its card, as served)."""
    loaded = service.loaded
    return {
        "name": service.name, "base_model": loaded.spec.name,
        "source": public_source(loaded.source),
        "runtime": loaded.runtime, "image_size": loaded.image_size,
        "preprocess_mode": loaded.preprocess_mode, "resize": service.resize.value,
        "classes": len(loaded.labels) if loaded.labels is not None else None,
        "output_shape": list(service.output_shape), "batch_sizes": list(service.sizes),
        "precision": loaded.policy, "device": loaded.device, "explain": service.can_explain,
    }


