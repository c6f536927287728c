"""OpenVINO IR (.xml + .bin) files on OpenVINO's CPU plugin (`pip install 'resnet-cli[openvino]'`).

The batch axis stays dynamic (measured: no slower than a static batch, and nothing to pad).
How a batch runs is OpenVINO's performance hint, chosen by measurement
(`benchmarks/openvino_speed.py`): a batch of several images is split over the streams of the
THROUGHPUT hint, one inference request each, all in flight at once (1.56x the LATENCY hint's
one request for int8 at batch 32 on 2 cores); a batch too small to split runs as one LATENCY
request on every core this process may use (a single image: 39 against 56 ms). A pipeline
and serve's batching thread both run batches one after another, so both get this.
`--precision` is OpenVINO's inference precision: `fp32` forces f32 (OpenVINO would pick bf16
on its own on CPUs with AMX), `bf16` asks for bf16 where the CPU has it and warns and runs f32
elsewhere, as the Keras path does.
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

MIN_STREAM_IMAGES = 2  # a stream gets at least this many images of a batch, or none is split


@dataclass
class OpenVINOModel:
    """An OpenVINO IR read into OpenVINO, with its card (an `ExportedModel`)."""

    path: Path
    model: Any  # openvino.Model
    card: ModelCard
    precision: str  # OpenVINO's inference precision: "f32" or "bf16"
    runtime: str = "openvino"
    # Compiled models by performance hint: every predictor shares them.
    _compiled: dict[str, Any] = field(default_factory=dict, repr=False)

    def predictor(self, batch_size: int) -> OpenVINOPredictor:
        """A predictor over this model at `batch_size`."""
        return OpenVINOPredictor(self, batch_size)

    def compiled(self, hint: str) -> Any:
        """The model compiled for the CPU with the performance hint `hint` (LATENCY or
        THROUGHPUT), once."""
        if hint not in self._compiled:
            import openvino as ov

            from resnet_cli.devices import runtime_threads

            config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": self.precision,
                      "INFERENCE_NUM_THREADS": runtime_threads()}
            try:
                self._compiled[hint] = ov.Core().compile_model(self.model, "CPU", config)
            except RuntimeError as exc:
                raise ModelFileError(f"{self.path}: OpenVINO cannot compile it: "
                                     f"{first_line(exc)}") from exc
        return self._compiled[hint]


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
    port = model.inputs[0] if len(model.inputs) == 1 else None
    if port is None or port.get_element_type() != ov.Type.u8 or \
            _dims(port.get_partial_shape())[1:] != [card.image_size, card.image_size, 3]:
        raise ModelFileError(f"{path}: its input is not uint8 (batch, {card.image_size}, "
                             f"{card.image_size}, 3) as its card says.")
    return OpenVINOModel(path=path, model=model, card=card.replace(format="openvino"),
                         precision=inference_precision(precision))


def _dims(shape: Any) -> list[int | None]:
    """An OpenVINO PartialShape as a list (None for a dynamic axis; empty for dynamic rank)."""
    if shape.rank.is_dynamic:
        return []
    return [d.get_length() if d.is_static else None for d in shape]


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
    """An exported OpenVINO model as a `BatchPredictor`: a batch split over the THROUGHPUT
    hint's streams, or one LATENCY request when it is too small to split."""

    def __init__(self, model: OpenVINOModel, batch_size: int) -> None:
        self.batch_size = batch_size
        self.shares_cpu = True
        streams = 1
        if batch_size >= 2 * MIN_STREAM_IMAGES:
            compiled = model.compiled("THROUGHPUT")
            streams = min(int(compiled.get_property("NUM_STREAMS")),
                          batch_size // MIN_STREAM_IMAGES)
        if streams < 2:
            compiled = model.compiled("LATENCY")
            streams = 1
        self._requests = [compiled.create_infer_request() for _ in range(streams)]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Rows for up to `batch_size` uint8 images (n, size, size, 3)."""
        import numpy as np

        chunks = [chunk for chunk in np.array_split(images, len(self._requests)) if len(chunk)]
        requests = self._requests[:len(chunks)]
        for request, chunk in zip(requests, chunks, strict=True):
            request.start_async({0: np.ascontiguousarray(chunk)})
        for request in requests:
            request.wait()
        return np.concatenate([np.array(request.get_output_tensor(0).data, dtype=np.float32)
                               for request in requests])
