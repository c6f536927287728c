"""LiteRT (.tflite) files on the `ai-edge-litert` interpreter (XNNPACK on the CPU).

The interpreter's input is resized once to the predictor's batch size and it computes with
one thread per core; short batches are padded, as the Keras predictor does, so the tensors are
never reallocated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_cli.card import ModelCard, find_card
from resnet_cli.errors import ModelFileError, first_line

if TYPE_CHECKING:
    import numpy as np


@dataclass
class LiteRTModel:
    """A .tflite file read into memory, with its card (an `ExportedModel`)."""

    path: Path
    content: bytes
    card: ModelCard
    runtime: str = "litert"
    # Interpreters with tensors allocated, by batch size: a second predictor reuses one.
    _interpreters: dict[int, Any] = field(default_factory=dict, repr=False)

    def predictor(self, batch_size: int) -> LiteRTPredictor:
        """A predictor over this file at `batch_size`."""
        return LiteRTPredictor(self, batch_size)


def load_litert(path: Path) -> LiteRTModel:
    """Read the .tflite file at `path` and its card, and check that the interpreter takes it.

    Raises:
        ModelFileError: not a LiteRT model, no resnet card, or an input that is not
            uint8 (batch, size, size, 3).
    """
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    card = find_card(read_metadata(content, where=str(path)), where=str(path))
    if card is None:
        raise ModelFileError(f"{path} has no resnet card: export it with `resnet export`.")
    interpreter = _interpreter(content, path)
    details = interpreter.get_input_details()
    shape = tuple(int(d) for d in details[0]["shape"][1:]) if len(details) == 1 else ()
    if shape != (card.image_size, card.image_size, 3) or details[0]["dtype"].__name__ != "uint8":
        raise ModelFileError(f"{path}: its input is not uint8 (batch, {card.image_size}, "
                             f"{card.image_size}, 3) as its card says.")
    return LiteRTModel(path=path, content=content, card=card.replace(format="litert"))


def read_metadata(data: bytes, *, where: str) -> dict[str, bytes]:
    """The metadata entries of the .tflite flatbuffer `data`, by name.

    Raises:
        ModelFileError: `data` is not a LiteRT model.
    """
    from ai_edge_litert import schema_py_generated as schema

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFileError(f"{where} is not a LiteRT (.tflite) model.")
    entries: dict[str, bytes] = {}
    try:
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry is None or entry.Name() is None:
                continue
            buffer = model.Buffers(entry.Buffer())
            if buffer.Offset():  # stored after the flatbuffer (models over 2 GB)
                value = bytes(data[buffer.Offset():buffer.Offset() + buffer.Size()])
            else:
                value = bytes(buffer.DataAsNumpy().tobytes())
            entries[entry.Name().decode()] = value
    except Exception as exc:  # a damaged flatbuffer: IndexError, struct.error, ...
        raise ModelFileError(f"{where} is not a readable LiteRT model: {exc}") from exc
    return entries


def _interpreter(content: bytes, path: Path, threads: int | None = None) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    from resnet_cli.devices import native_stderr_to_log

    try:
        with native_stderr_to_log():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
            return Interpreter(model_content=content, num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: LiteRT cannot load it: {first_line(exc)}") from exc


class LiteRTPredictor:
    """An exported .tflite model as a `BatchPredictor`, at a fixed batch size."""

    def __init__(self, model: LiteRTModel, batch_size: int) -> None:
        from resnet_cli.devices import native_stderr_to_log, runtime_threads

        self.batch_size = batch_size
        self.shares_cpu = True
        interpreter = model._interpreters.get(batch_size)
        if interpreter is None:
            interpreter = _interpreter(model.content, model.path, runtime_threads())
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, (batch_size, model.card.image_size,
                                                    model.card.image_size, 3), strict=True)
            with native_stderr_to_log():
                interpreter.allocate_tensors()
            model._interpreters[batch_size] = interpreter
        self._interpreter = interpreter
        self._input = interpreter.get_input_details()[0]["index"]
        self._output = interpreter.get_output_details()[0]["index"]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Rows for up to `batch_size` uint8 images (n, size, size, 3)."""
        import numpy as np

        count = len(images)
        if count < self.batch_size:
            pad = np.zeros((self.batch_size - count, *images.shape[1:]), dtype=np.uint8)
            images = np.concatenate([images, pad]) if count else pad
        self._interpreter.set_tensor(self._input, images)
        self._interpreter.invoke()
        rows: np.ndarray = self._interpreter.get_tensor(self._output)[:count]
        return rows.astype(np.float32, copy=True)
