"""OpenVINO IR (.xml + .bin) files on OpenVINO's CPU plugin (`pip install 'resnet[openvino]'`).

The model is compiled once per predictor batch size with a static batch (short batches are
padded, as the other predictors do) and the LATENCY hint: one inference request over every
core this process may use. That is what a batch pipeline and serve's batching thread both run,
one batch after another; the THROUGHPUT hint's streams only pay with several requests in
flight (`benchmarks/openvino_speed.py` measures both). `--precision` is OpenVINO's inference
precision: `fp32` forces f32 (OpenVINO would pick bf16 on its own on CPUs with AMX), `bf16`
asks for bf16 where the CPU has it and warns and runs f32 elsewhere, as the Keras path does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_cli.card import CARD_KEY, ModelCard, find_card
from resnet_cli.errors import ModelFileError, first_line
from resnet_cli.extras import require_module

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


@dataclass
class OpenVINOModel:
    """An OpenVINO IR read into OpenVINO, with its card (an `ExportedModel`)."""

    path: Path
    model: Any  # openvino.Model
    card: ModelCard
    precision: str  # OpenVINO's inference precision: "f32" or "bf16"
    runtime: str = "openvino"
    # Compiled models by batch size: a second predictor reuses one.
    _compiled: dict[int, Any] = field(default_factory=dict, repr=False)

    def predictor(self, batch_size: int) -> OpenVINOPredictor:
        """A predictor over this model at `batch_size`."""
        return OpenVINOPredictor(self, batch_size)

    def compiled(self, batch_size: int) -> Any:
        """The model compiled for the CPU at a static `batch_size`."""
        if batch_size not in self._compiled:
            import openvino as ov

            from resnet_cli.devices import runtime_threads

            model = self.model.clone()
            size = self.card.image_size
            model.reshape({model.inputs[0]: ov.PartialShape([batch_size, size, size, 3])})
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": self.precision,
                      "INFERENCE_NUM_THREADS": runtime_threads()}
            try:
                self._compiled[batch_size] = ov.Core().compile_model(model, "CPU", config)
            except RuntimeError as exc:
                raise ModelFileError(f"{self.path}: OpenVINO cannot compile it: "
                                     f"{first_line(exc)}") from exc
        return self._compiled[batch_size]


def load_openvino(path: Path, *, precision: str = "fp32") -> OpenVINOModel:
    """Read the OpenVINO IR at `path` (the `.xml`; its `.bin` beside it) and its card.

    Args:
        precision: `--precision` (fp32 or bf16).

    Raises:
        UsageError: openvino is not installed.
        ModelFileError: no readable IR (a damaged .xml, a missing .bin), no resnet card, or
            an input that is not uint8 (batch, size, size, 3).
    """
    ov = require_module("openvino", extra="openvino", purpose=f"Running {path.name}")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise ModelFileError(f"{path}: its weights file {weights.name} is missing (an OpenVINO "
                             "model is the .xml and the .bin beside it).")
    try:
        model = ov.Core().read_model(str(path), str(weights))
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: OpenVINO cannot read it: {first_line(exc)}") from exc
    card = None
    if model.has_rt_info([CARD_KEY]):
        card = find_card({CARD_KEY: model.get_rt_info([CARD_KEY]).astype(str)}, where=str(path))
    if card is None:
        raise ModelFileError(f"{path} has no resnet card: export it with `resnet export`.")
    inputs = model.inputs
    shape = inputs[0].get_partial_shape() if len(inputs) == 1 else None
    if shape is None or inputs[0].get_element_type() != ov.Type.u8 or shape.rank.get_length() != 4 \
            or [d.get_length() if d.is_static else None for d in shape][1:] != \
            [card.image_size, card.image_size, 3]:
        raise ModelFileError(f"{path}: its input is not uint8 (batch, {card.image_size}, "
                             f"{card.image_size}, 3) as its card says.")
    return OpenVINOModel(path=path, model=model, card=card.replace(format="openvino"),
                         precision=inference_precision(precision))


def inference_precision(precision: str) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT for `--precision`: f32, or bf16 where this CPU
    has native bfloat16 (a logged warning and f32 elsewhere)."""
    from resnet_cli.devices import cpu_supports_bf16, parse_precision

    if parse_precision(precision) == "fp32":
        return "f32"
    if not cpu_supports_bf16():
        log.warning("this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 flag): "
                    "running in fp32 instead of bf16")
        return "f32"
    return "bf16"


class OpenVINOPredictor:
    """An exported OpenVINO model as a `BatchPredictor`, at a fixed batch size."""

    def __init__(self, model: OpenVINOModel, batch_size: int) -> None:
        self.batch_size = batch_size
        self.shares_cpu = True
        self._size = model.card.image_size
        self._request = model.compiled(batch_size).create_infer_request()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Rows for up to `batch_size` uint8 images (n, size, size, 3)."""
        import numpy as np

        count = len(images)
        if count < self.batch_size:  # the compiled shape is static: pad
            padded = np.zeros((self.batch_size, self._size, self._size, 3), dtype=np.uint8)
            padded[:count] = images
            images = padded
        self._request.infer({0: np.ascontiguousarray(images)})
        rows = self._request.get_output_tensor(0).data
        return np.array(rows[:count], dtype=np.float32)
