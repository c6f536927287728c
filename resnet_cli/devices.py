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
from enum import Enum
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
def native_stderr_to_log() -> Iterator[None]:
    """Send what C++ code writes to fd 2 into the debug log instead of the user's terminal.

    TensorFlow's absl logging prints oneDNN and CUDA notices before TF_CPP_MIN_LOG_LEVEL is
    read, the LiteRT converter prints its settings and the interpreter announces its XNNPACK
    delegate; they are noise for a command-line user, but stay visible with -vv. Python's own
    writes to stderr (progress bars, error lines) still reach the terminal meanwhile.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    swapped = _is_fd(python_stderr, 2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        if swapped:
            sys.stderr = open(saved, "w", buffering=1, closefd=False,  # noqa: SIM115
                              encoding=getattr(python_stderr, "encoding", None) or "utf-8",
                              errors="replace")
        try:
            yield
        finally:
            if swapped:
                sys.stderr.flush()
                sys.stderr.close()
                sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                log.debug("tensorflow: %s", line)


def _is_fd(stream: Any, fd: int) -> bool:
    try:
        return bool(stream.fileno() == fd)
    except (AttributeError, OSError, ValueError):
        return False


def import_tensorflow() -> Any:
    """Import TensorFlow (once) with its start-up chatter routed to the debug log."""
    # TensorFlow's Python warnings (retracing notices, deprecations) are for library authors,
    # not for someone running a command; real failures still raise.
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    configure_runtime()
    with native_stderr_to_log():
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


def multi_gpu_strategy() -> Any:
    """A `tf.distribute.MirroredStrategy` over the visible GPUs when there are several, else
    None (one GPU or CPU: nothing changes)."""
    tf = import_tensorflow()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) < 2:
        return None
    log.info("spreading batches over %d GPUs", len(gpus))
    return tf.distribute.MirroredStrategy([device.name for device in gpus])


# ----- numeric precision ------------------------------------------------------------------

_CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


class Precision(str, Enum):
    """`--precision`: fp32, or bf16 (Keras mixed precision where the hardware runs it fast)."""

    fp32 = "fp32"
    bf16 = "bf16"


PRECISIONS = tuple(p.value for p in Precision)


def parse_precision(text: str) -> str:
    """Validate `--precision` (fp32 or bf16, any case) without importing TensorFlow.

    Raises:
        UsageError: anything else.
    """
    value = getattr(text, "value", text)  # a Precision member or a plain string
    value = str(value).strip().lower()
    if value not in PRECISIONS:
        raise UsageError(f"Invalid precision '{value}': use fp32 or bf16.")
    return value


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has native bfloat16 arithmetic (x86 avx512_bf16 or amx_bf16).

    Without it, TensorFlow emulates bfloat16 on CPU and runs several times *slower* than fp32.

    Args:
        cpuinfo: text of /proc/cpuinfo (read from the system when None; no file: False).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and _CPU_BF16_FLAGS & set(value.split()):
            return True
    return False


def _gpu_compute_capability(tf: Any) -> tuple[int, int] | None:
    gpus = tf.config.get_visible_devices("GPU")
    if not gpus:
        return None
    try:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
    except Exception:  # details are best effort (no CUDA details on some builds)
        return None
    return (int(capability[0]), int(capability[1])) if capability else None


def precision_policy(precision: str, device: str, *, cpu_bf16: bool | None = None) -> str:
    """The Keras dtype policy that runs `precision` on `device` ("/CPU:0", "/GPU:0").

    bf16 means mixed_bfloat16 on CPUs with native bf16 and on GPUs of compute capability 8.0+
    (Ampere), mixed_float16 on older GPUs (7.x), and float32 with a logged warning where the
    hardware has neither (emulated half precision would be slower than fp32).

    Args:
        cpu_bf16: override the CPU check (tests); None reads /proc/cpuinfo.

    Raises:
        UsageError: `precision` is not fp32 or bf16.
    """
    if parse_precision(precision) == "fp32":
        return "float32"
    if device.upper().startswith("/GPU"):
        capability = _gpu_compute_capability(import_tensorflow())
        if capability is not None and capability >= (8, 0):
            return "mixed_bfloat16"
        if capability is None:
            return "mixed_float16"  # every CUDA GPU TensorFlow supports runs float16
        if capability >= (7, 0):
            log.warning("this GPU (compute capability %d.%d) has no fast bfloat16: using float16 "
                        "mixed precision for --precision bf16", *capability)
            return "mixed_float16"
        log.warning("this GPU (compute capability %d.%d) has no fast half precision: "
                    "running in fp32", *capability)
        return "float32"
    supported = cpu_supports_bf16() if cpu_bf16 is None else cpu_bf16
    if not supported:
        log.warning("this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 flag): "
                    "running in fp32 instead of bf16")
        return "float32"
    return "mixed_bfloat16"


def runtime_threads() -> int:
    """Threads a runtime computes with: every core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
