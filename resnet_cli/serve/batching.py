"""Dynamic batching: one queue of decoded images, one thread that runs the model on them.

Every endpoint puts its images into one `Batcher`. Its thread takes up to the largest batch
size as soon as that many are queued, or whatever is queued `timeout` after the first of them
arrived, and runs the largest compiled batch size that they fill; the rest stay first in the
queue and go with the next batch, at once. Nothing is padded: 9 images run as 8, then 1 with
whatever came meanwhile, never as 16 of which 7 are black (which would cost the CPU 7 images
of work). The compiled sizes are few (powers of two up to the maximum, as TF Serving's
`allowed_batch_sizes`), every one is warmed up before the server says it is ready, so nothing
is traced while serving and a lone image runs at batch 1.

The thread is supervised: if its loop dies (anything but a model error on one batch, which
goes to that batch's requests), every waiting request gets `ModelThreadError` at once, so does
every later one, `alive` turns False and `on_death` is called (the server then stops and
exits non-zero). Tests make it die with the environment variable `RESNET_SERVE_FAULT_AFTER`
(`FAULT_ENV`): after that many batches, the loop raises.

Admission is counted in images: `admit` refuses (`QueueFullError`) when the images already
accepted and not yet answered would exceed `max_queue`, so overload is refused at the door
instead of queueing without end.
"""

from __future__ import annotations

import logging
import os
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


FAULT_ENV = "RESNET_SERVE_FAULT_AFTER"  # test-only fault injection: die after N batches


class QueueFullError(Exception):
    """The queue holds `max_queue` images already: try again later."""


class ModelThreadError(RuntimeError):
    """The thread that runs the model has stopped: nothing queued will be answered."""


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
        on_batch: called with (images, batch size run) after each batch.
        on_death: called (from the dying thread) with the error that ended the loop.
    """

    def __init__(self, predictors: Mapping[int, BatchPredictor], *, timeout: float,
                 max_queue: int, compute_lock: threading.Lock | None = None,
                 on_batch: Callable[[int, int], None] | None = None,
                 on_death: Callable[[BaseException], None] | None = None,
                 name: str = "batcher") -> None:
        self.sizes = tuple(sorted(predictors))
        self.max_batch_size = self.sizes[-1]
        self.max_queue = max_queue
        self._predictors = dict(predictors)
        self._timeout = timeout
        self._lock = compute_lock or threading.Lock()
        self._on_batch = on_batch
        self._on_death = on_death
        fault = os.environ.get(FAULT_ENV)
        self._fault_after = int(fault) if fault else None
        self._batches = 0
        self.death: BaseException | None = None
        self._running: list[_Item] = []
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._admitted = 0
        self._hurry = False  # shutting down: run what is queued without waiting for company
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """False once the model thread has died."""
        return self.death is None

    @property
    def pending(self) -> int:
        """Images accepted and not yet answered (decoding, queued, or in the model)."""
        return self._admitted

    @contextmanager
    def admit(self, count: int) -> Iterator[None]:
        """Hold `count` places in the queue for a request's images while it is served.

        Raises:
            QueueFullError: the queue has no room for `count` more images.
            ModelThreadError: the model thread has died.
        """
        with self._cond:
            self._check_alive()
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
            self._check_alive()
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

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the thread (waiting at most `timeout` s)."""
        with self._cond:
            self._hurry = self._stopped = True
            self._cond.notify()
        self._thread.join(timeout)

    def _check_alive(self) -> None:
        if self.death is not None:
            raise ModelThreadError(f"the model thread has stopped: {self.death!r}")

    def _loop(self) -> None:
        try:
            while True:
                items = self._next_batch()
                if items is None:
                    return
                self._running = items
                if self._fault_after is not None and self._batches >= self._fault_after:
                    raise RuntimeError(f"fault injected by {FAULT_ENV}={self._fault_after}")
                self._run(items)
                self._running = []
                self._batches += 1
        except BaseException as exc:
            self._die(exc)

    def _die(self, exc: BaseException) -> None:
        log.error("the model thread died: %r", exc)
        with self._cond:
            self.death = exc
            items = [*self._running, *self._queue]
            self._queue.clear()
            self._running = []
        error = ModelThreadError(f"the model thread has stopped: {exc!r}")
        for group in {id(item.group): item.group for item in items}.values():
            if not group.future.done():
                group.future.set_exception(error)
        if self._on_death is not None:
            self._on_death(exc)

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
            # The largest compiled size the queue fills: no padding (see the module docstring).
            waiting = min(len(self._queue), self.max_batch_size)
            count = max((s for s in self.sizes if s <= waiting), default=waiting)
            return [self._queue.popleft() for _ in range(count)]

    def _run(self, items: list[_Item]) -> None:
        import numpy as np

        size = next(s for s in self.sizes if s >= len(items))  # len(items) but for odd sizes
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
