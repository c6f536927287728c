"""LiteRT (.tflite) files on the `ai-edge-litert` interpreter (XNNPACK on the CPU).

The interpreter's input is resized once to the predictor's batch size and it computes with
one thread per core; short batches are padded, as the Keras predictor does, so the tensors are
never reallocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_cli.errors import ModelFileError, first_line
from resnet_cli.export.common import CARD_KEY, ExportCard

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.models import LoadedModel


@dataclass
class LiteRTModel:
    """A .tflite file read into memory, with its card."""

    path: Path
    content: bytes
    card: ExportCard


def load_litert(path: Path) -> LiteRTModel:
    """Read the .tflite file at `path` and its card, and check that the interpreter takes it.

    Raises:
        ModelFileError: not a LiteRT model, no resnet card, or an input that is not
            uint8 (batch, size, size, 3).
    """
    from resnet_cli.export.litert import read_metadata

    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    data = read_metadata(content, CARD_KEY, where=str(path))
    if data is None:
        raise ModelFileError(f"{path} has no resnet card: export it with `resnet export`.")
    card = ExportCard.from_json(data, where=str(path))
    interpreter = _interpreter(content, path)
    details = interpreter.get_input_details()
    shape = tuple(int(d) for d in details[0]["shape"][1:]) if len(details) == 1 else ()
    if shape != (card.image_size, card.image_size, 3) or details[0]["dtype"].__name__ != "uint8":
        raise ModelFileError(f"{path}: its input is not uint8 (batch, {card.image_size}, "
                             f"{card.image_size}, 3) as its card says.")
    return LiteRTModel(path=path, content=content, card=card)


def _interpreter(content: bytes, path: Path, threads: int | None = None) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    from resnet_cli.devices import native_stderr_to_log

    try:
        with native_stderr_to_log():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
            return Interpreter(model_content=content, num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: LiteRT cannot load it: {first_line(exc)}") from exc


class LiteRTPredictor:
    """An exported .tflite model as a `BatchPredictor`, at a fixed batch size.

    The interpreter (with tensors allocated for `batch_size`) is kept on `loaded`, so a second
    predictor for the same file and batch size reuses it.
    """

    def __init__(self, loaded: LoadedModel, batch_size: int) -> None:
        from resnet_cli.devices import native_stderr_to_log
        from resnet_cli.runtimes import runtime_threads

        self.batch_size = batch_size
        self.shares_cpu = True
        model: LiteRTModel = loaded.model
        key = ("litert", batch_size)
        entry = loaded.compiled.get(key)
        # As the Keras predictor counts traces: 1 once the interpreter has run (it is reused).
        self.trace_count = int(entry is not None)
        if entry is None:
            interpreter = _interpreter(model.content, model.path, runtime_threads())
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, (batch_size, model.card.image_size,
                                                    model.card.image_size, 3), strict=True)
            with native_stderr_to_log():
                interpreter.allocate_tensors()
            entry = loaded.compiled[key] = (
                interpreter, index, interpreter.get_output_details()[0]["index"])
        self._interpreter, self._input, self._output = entry

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Rows for up to `batch_size` uint8 images (n, size, size, 3)."""
        import numpy as np

        count = len(images)
        if count < self.batch_size:
            pad = np.zeros((self.batch_size - count, *images.shape[1:]), dtype=np.uint8)
            images = np.concatenate([images, pad]) if count else pad
        self._interpreter.set_tensor(self._input, images)
        self._interpreter.invoke()
        self.trace_count = 1
        rows: np.ndarray = self._interpreter.get_tensor(self._output)[:count]
        return rows.astype(np.float32, copy=True)
