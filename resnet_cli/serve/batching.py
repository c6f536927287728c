"""Dynamic batching: one queue of decoded images, one thread that runs the model on them.

Every endpoint puts its images into one `Batcher`. Its thread takes up to the largest batch
size as soon as that many are queued, or whatever is queued `timeout` after the first of them
arrived, and runs the predictor of the smallest compiled batch size that holds them (the
batch is padded to it). The compiled sizes are few (powers of two up to the maximum, as TF
Serving's `allowed_batch_sizes`), every one is warmed up before the server says it is ready,
so nothing is traced while serving and a lone image runs at batch 1.

Admission is counted in images: `admit` refuses (`QueueFullError`) when the images already
accepted and not yet answered would exceed `max_queue`, so overload is refused at the door
instead of queueing without end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.loaded import BatchPredictor

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue holds `max_queue` images already: try again later."""


def batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """The compiled batch sizes: powers of two below `max_batch_size`, and itself."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


@dataclass
class _Group:
    """The images of one request: its rows are filled in as their batches finish."""

    count: int
    future: Future[np.ndarray] = field(default_factory=Future)
    rows: np.ndarray | None = None
    filled: int = 0


@dataclass
class _Item:
    image: np.ndarray  # (size, size, 3) uint8
    group: _Group
    position: int
    queued: float


class Batcher:
    """A queue of images and the thread that runs them through `predictors` in batches.

    Args:
        predictors: batch size -> predictor compiled for that size (see `batch_sizes`).
        timeout: seconds a batch may wait for company after its first image was queued.
        max_queue: images accepted and not yet answered, at most.
        compute_lock: held while the model runs; share it between batchers of one model so
            that only one computes at a time.
        on_batch: called with (images, padded size) after each batch.
    """

    def __init__(self, predictors: Mapping[int, BatchPredictor], *, timeout: float,
                 max_queue: int, compute_lock: threading.Lock | None = None,
                 on_batch: Callable[[int, int], None] | None = None,
                 name: str = "batcher") -> None:
        self.sizes = tuple(sorted(predictors))
        self.max_batch_size = self.sizes[-1]
        self.max_queue = max_queue
        self._predictors = dict(predictors)
        self._timeout = timeout
        self._lock = compute_lock or threading.Lock()
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._admitted = 0
        self._hurry = False  # shutting down: run what is queued without waiting for company
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Images accepted and not yet answered (decoding, queued, or in the model)."""
        return self._admitted

    @contextmanager
    def admit(self, count: int) -> Iterator[None]:
        """Hold `count` places in the queue for a request's images while it is served.

        Raises:
            QueueFullError: the queue has no room for `count` more images.
        """
        with self._cond:
            if self._admitted + count > self.max_queue:
                raise QueueFullError(f"{self._admitted} images are waiting already")
            self._admitted += count
        try:
            yield
        finally:
            with self._cond:
                self._admitted -= count

    def submit(self, images: np.ndarray) -> Future[np.ndarray]:
        """Queue `images` (n, size, size, 3) uint8; the future gets their n output rows, or
        the exception the model raised."""
        group = _Group(count=len(images))
        if not len(images):
            raise ValueError("submit needs at least one image")
        now = time.monotonic()
        with self._cond:
            if self._stopped:
                raise RuntimeError("the batcher is stopped")
            self._queue.extend(_Item(image, group, i, now) for i, image in enumerate(images))
            self._cond.notify()
        return group.future

    def hurry(self) -> None:
        """From now on, run queued images at once (the server is shutting down)."""
        with self._cond:
            self._hurry = True
            self._cond.notify()

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        with self._cond:
            self._hurry = self._stopped = True
            self._cond.notify()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            items = self._next_batch()
            if items is None:
                return
            self._run(items)

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue:
                if self._stopped:
                    return None
                self._cond.wait()
            deadline = self._queue[0].queued + self._timeout
            while len(self._queue) < self.max_batch_size and not self._hurry:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            count = min(len(self._queue), self.max_batch_size)
            return [self._queue.popleft() for _ in range(count)]

    def _run(self, items: list[_Item]) -> None:
        import numpy as np

        size = next(s for s in self.sizes if s >= len(items))
        try:
            with self._lock:
                outputs = self._predictors[size](np.stack([item.image for item in items]))
        except Exception as exc:  # the model failed: every request in the batch learns it
            log.exception("the model failed on a batch of %d", len(items))
            for group in {id(item.group): item.group for item in items}.values():
                if not group.future.done():
                    group.future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(len(items), size)
        for item, row in zip(items, outputs, strict=True):
            group = item.group
            if group.future.done():
                continue
            if group.rows is None:
                group.rows = np.empty((group.count, *row.shape), dtype=row.dtype)
            group.rows[item.position] = row
            group.filled += 1
            if group.filled == group.count:
                group.future.set_result(group.rows)
