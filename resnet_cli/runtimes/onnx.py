"""ONNX (.onnx) files on onnxruntime's CPU provider (`pip install 'resnet-cli[onnx]'`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_cli.card import ModelCard, find_card
from resnet_cli.errors import ModelFileError, first_line
from resnet_cli.extras import require_module

if TYPE_CHECKING:
    import numpy as np


@dataclass
class OnnxModel:
    """An onnxruntime session over an .onnx file, with the file's card (an `ExportedModel`)."""

    path: Path
    session: Any  # onnxruntime.InferenceSession
    card: ModelCard
    runtime: str = "onnx"

    def predictor(self, batch_size: int) -> OnnxPredictor:
        """A predictor over this session at `batch_size`."""
        return OnnxPredictor(self, batch_size)


def load_onnx(path: Path) -> OnnxModel:
    """Open the .onnx file at `path` in onnxruntime and read its card.

    Raises:
        UsageError: onnxruntime is not installed.
        ModelFileError: not an ONNX model onnxruntime loads, or no resnet card.
    """
    ort = require_module("onnxruntime", extra="onnx", purpose=f"Running {path.name}")
    from resnet_cli.devices import runtime_threads

    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime_threads()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ModelFileError(f"{path}: onnxruntime cannot load it: {first_line(exc)}") from exc
    card = find_card(session.get_modelmeta().custom_metadata_map, where=str(path))
    if card is None:
        raise ModelFileError(f"{path} has no resnet card: export it with `resnet export`.")
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or \
            list(inputs[0].shape[1:]) != [card.image_size, card.image_size, 3]:
        raise ModelFileError(f"{path}: its input is not uint8 (batch, {card.image_size}, "
                             f"{card.image_size}, 3) as its card says.")
    return OnnxModel(path=path, session=session, card=card.replace(format="onnx"))


class OnnxPredictor:
    """An exported .onnx model as a `BatchPredictor` (the batch axis is dynamic: no padding)."""

    def __init__(self, model: OnnxModel, batch_size: int) -> None:
        self.batch_size = batch_size
        self.shares_cpu = True
        self._session = model.session
        self._input = model.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Rows for up to `batch_size` uint8 images (n, size, size, 3)."""
        import numpy as np

        rows = self._session.run(None, {self._input: np.ascontiguousarray(images)})[0]
        return np.asarray(rows, dtype=np.float32)
