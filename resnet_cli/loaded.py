"""What a loaded model is, as every layer above the loader sees it.

`LoadedModel` is what `models.load_model` returns: a Keras model, or a file from `resnet export`
running on its own runtime (`exported`), with its card and class labels. `BatchPredictor` is
the one interface the inference path runs (uint8 images in, float32 rows out), and
`FailureHandler` the one callback for inputs that cannot be read. They live here, below the
loader, the runtimes and the inference path, which all share them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from resnet_cli.card import ModelCard
from resnet_cli.errors import ImageError, UsageError
from resnet_cli.images import ResizeMode
from resnet_cli.labels import ClassLabel
from resnet_cli.registry import ModelSpec

if TYPE_CHECKING:
    import numpy as np

FailureHandler = Callable[[ImageError], None]
"""Called once for each input that cannot be read; the rest of the batch goes on."""


class BatchPredictor(Protocol):
    """What the inference path needs of a model: uint8 batches in, float32 rows out."""

    @property
    def batch_size(self) -> int:
        """Rows per call: callers never pass more (shorter batches are fine)."""

    @property
    def shares_cpu(self) -> bool:
        """Whether it computes on the CPU, where image decoding competes with it for cores."""

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Rows for up to `batch_size` images of shape (n, size, size, 3), uint8."""


class ExportedModel(Protocol):
    """A file written by `resnet export`, open in its runtime (see `runtimes`)."""

    path: Path
    card: ModelCard
    runtime: str  # "litert", "onnx": for messages

    def predictor(self, batch_size: int) -> BatchPredictor:
        """A predictor over the file at `batch_size` (reused for the same size)."""


@dataclass
class LoadedModel:
    """A model ready to run, and everything needed to feed it and read its output.

    Exactly one of `model` (a Keras model) and `exported` (a file on its own runtime) is set.
    """

    spec: ModelSpec
    card: ModelCard
    labels: tuple[ClassLabel, ...] | None  # None for a backbone without classifier
    source: str  # for messages: "resnet50 (ImageNet weights)", "runs/a/model.keras", ...
    model: Any = None  # keras.Model
    exported: ExportedModel | None = None
    device: str = "/CPU:0"
    policy: str = "float32"  # Keras dtype policy it computes in: float32, mixed_bfloat16, ...
    # Compiled inference functions by (model, batch size, ...): see inference.Predictor.
    compiled: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def image_size(self) -> int:
        """The square input size."""
        return self.card.image_size

    @property
    def preprocess_mode(self) -> str:
        """`imagenet_utils.preprocess_input` mode of the Keras model's input."""
        return self.card.preprocess_mode

    @property
    def runtime(self) -> str:
        """What runs it: "keras", or the exported file's runtime ("litert", "onnx")."""
        return "keras" if self.exported is None else self.exported.runtime

    def resize_or_own(self, resize: ResizeMode | None) -> ResizeMode:
        """`resize` when given, else the resize the model was trained with (its card's):
        the one rule for `--resize` in every command."""
        return resize if resize is not None else self.card.resize

    def keras_model(self, what: str) -> Any:
        """The Keras model, for `what` needs its layers.

        Raises:
            UsageError: an exported .tflite/.onnx file, which has no Keras layers.
        """
        if self.exported is not None:
            raise UsageError(f"{what} needs a Keras model; {self.source} is an exported "
                             f"{self.runtime} file. Use the model it was exported from.")
        return self.model
