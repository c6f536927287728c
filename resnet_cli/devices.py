"""Device selection (`--device auto|cpu|gpu|gpu:N`) and TensorFlow runtime settings.

TensorFlow fixes the visible devices the first time it touches one, so `apply_device` must run
before any model is built. `parse_device` validates the option without importing TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from resnet_cli.errors import DeviceError, UsageError

log = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(auto|cpu|gpu)(?::(\d+))?$")


@dataclass(frozen=True)
class DeviceRequest:
    """A parsed `--device` value. `index` is only set for `gpu:N`."""

    kind: str  # "auto" | "cpu" | "gpu"
    index: int | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_device(text: str) -> DeviceRequest:
    """Parse `auto`, `cpu`, `gpu` or `gpu:N`."""
    match = _DEVICE_RE.match(text.strip().lower())
    if not match or (match.group(2) is not None and match.group(1) != "gpu"):
        raise UsageError(f"Invalid device '{text}': use auto, cpu, gpu or gpu:N (e.g. gpu:0).")
    index = match.group(2)
    return DeviceRequest(match.group(1), int(index) if index is not None else None)


def configure_runtime() -> None:
    """Quiet TensorFlow's C++ start-up logging. Only effective before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _native_stderr_to_log() -> Iterator[None]:
    """Send what C++ code writes to fd 2 into the debug log instead of the user's terminal.

    TensorFlow's absl logging prints oneDNN and CUDA notices before TF_CPP_MIN_LOG_LEVEL is
    read; they are noise for a command-line user, but stay visible with -vv.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                log.debug("tensorflow: %s", line)


def import_tensorflow() -> Any:
    """Import TensorFlow (once) with its start-up chatter routed to the debug log."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    configure_runtime()
    with _native_stderr_to_log():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # CUDA probing logs here, once
    return tf


def apply_device(request: DeviceRequest) -> str:
    """Make only the requested device visible to TensorFlow and return its name (e.g. "/GPU:0").

    GPU memory growth is switched on so one process does not reserve the whole card.

    Raises:
        DeviceError: a GPU was asked for and is not there.
    """
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if request.kind == "cpu":
        chosen = []
    elif request.kind == "auto":
        chosen = gpus
    else:
        if not gpus:
            built = "with" if tf.test.is_built_with_cuda() else "without"
            raise DeviceError(
                f"--device {request} asked for a GPU, but TensorFlow {tf.__version__} (built "
                f"{built} CUDA) sees none. Use --device cpu or auto."
            )
        index = request.index or 0
        if index >= len(gpus):
            raise DeviceError(
                f"--device {request}: only {len(gpus)} GPU(s) visible (gpu:0..gpu:{len(gpus) - 1})."
            )
        chosen = [gpus[index]] if request.index is not None else gpus
    try:
        tf.config.set_visible_devices(chosen, "GPU")
        for gpu in chosen:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        # Already initialised in this process (a second model in the same run, or tests):
        # keep the devices TensorFlow settled on, unless they contradict the request.
        visible = tf.config.get_visible_devices("GPU")
        if request.kind != "auto" and len(visible) != len(chosen):
            raise DeviceError(
                f"--device {request} cannot be applied: TensorFlow already initialised "
                f"{len(visible)} GPU(s) in this process."
            ) from None
    name = "/GPU:0" if chosen else "/CPU:0"
    log.info("device: %s", name if not chosen else f"{len(chosen)} GPU(s)")
    return name
