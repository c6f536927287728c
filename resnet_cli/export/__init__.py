"""`resnet export`: the model, with its preprocessing inside, as a file other runtimes load.

One module per format (`saved_model`, `litert`, `onnx`, `openvino`), what they share in
`common` (and the int8 formats' calibration images in `calibration`):
the served model takes uint8 RGB images `(batch, size, size, 3)` and returns float32
probabilities (or features for a backbone), and every file carries its card. Adding a format
is adding a module, a suffix in `SUFFIXES`, a name in `ExportSummary.describe` and a branch
in `_writer`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_cli.errors import UsageError

if TYPE_CHECKING:
    from resnet_cli.card import ModelCard
    from resnet_cli.loaded import FailureHandler
    from resnet_cli.models import ModelOptions

log = logging.getLogger(__name__)


class ExportFormat(str, Enum):
    """`resnet export --format`."""

    saved_model = "saved_model"
    litert = "litert"
    onnx = "onnx"
    openvino = "openvino"


SUFFIXES = {ExportFormat.saved_model: "", ExportFormat.litert: ".tflite",
            ExportFormat.onnx: ".onnx", ExportFormat.openvino: ".xml"}
INT8_FORMATS = (ExportFormat.litert, ExportFormat.openvino)


@dataclass(frozen=True)
class ExportSummary:
    """What `export_model` wrote."""

    path: Path
    format: ExportFormat
    card: ModelCard
    bytes: int
    seconds: float

    def describe(self) -> str:
        """One line for stderr: what went where."""
        kind = {ExportFormat.saved_model: "SavedModel", ExportFormat.litert: "LiteRT",
                ExportFormat.onnx: "ONNX", ExportFormat.openvino: "OpenVINO"}[self.format]
        out = "probabilities" if self.card.include_top else "features"
        shape = "x".join(str(d) for d in self.card.output_shape)
        return (f"{self.card.source} -> {self.path} ({kind} {self.card.precision}, uint8 "
                f"{self.card.image_size}x{self.card.image_size} RGB in, {shape} {out} out, "
                f"{self.bytes / 1e6:.1f} MB, {self.seconds:.1f} s)")


def check_export_request(fmt: ExportFormat, output: Path, *, int8: bool,
                         calibrate: Sequence[str] | None, overwrite: bool) -> None:
    """Everything that can be refused before any work: the output (exists, folder, suffix)
    and the int8 options.

    Raises:
        UsageError: --int8 outside LiteRT and OpenVINO, or without --calibrate; a wrong
            suffix.
        OutputError: the output exists (without `overwrite`) or cannot be written.
    """
    from resnet_cli.outputs import check_output_folder, check_output_path

    if int8 and fmt not in INT8_FORMATS:
        raise UsageError("--int8 is for --format litert and --format openvino only.")
    if int8 and not calibrate:
        raise UsageError("--int8 needs calibration images: add --calibrate with a few hundred "
                         "of your own images (files, folders or patterns).")
    if calibrate and not int8:
        raise UsageError("--calibrate only applies with --int8.")
    suffix = SUFFIXES[fmt]
    if suffix and output.suffix.lower() != suffix:
        raise UsageError(f"--format {fmt.value} writes a {suffix} file; name the output "
                         f"{output.with_suffix(suffix).name}.")
    if fmt is ExportFormat.saved_model:
        if output.exists() and not overwrite:
            from resnet_cli.errors import OutputError

            raise OutputError(f"Output {output} already exists; pass --overwrite to replace it.")
        if output.exists() and not output.is_dir():
            from resnet_cli.errors import OutputError

            raise OutputError(f"Output {output} is a file; a SavedModel is a directory.")
        check_output_folder(output)
    else:
        check_output_path(output, overwrite=overwrite)
    if fmt is ExportFormat.openvino:
        check_output_path(output.with_suffix(".bin"), overwrite=overwrite)


def export_model(
    options: ModelOptions,
    fmt: ExportFormat,
    output: Path,
    *,
    int8: bool = False,
    calibrate: Sequence[str] | None = None,
    calibration_images: int = 300,
    overwrite: bool = False,
    progress: bool = True,
    on_failure: FailureHandler | None = None,
) -> ExportSummary:
    """Load the model described by `options` and write it to `output` as `fmt`, atomically.

    Args:
        calibrate: image paths to calibrate `int8` on (a random sample of
            `calibration_images` of them is used).

    Raises:
        UsageError / OutputError: see `check_export_request`; bad model options.
        WeightsError / ModelFileError: from loading or converting the model.
    """
    from resnet_cli.export.common import (
        build_card,
        build_serving_model,
        check_reproduces,
        load_export_source,
    )
    from resnet_cli.models import resolve_pooling
    from resnet_cli.outputs import atomic_dir, atomic_path

    check_export_request(fmt, output, int8=int8, calibrate=calibrate, overwrite=overwrite)
    if int8 and calibration_images < 1:
        raise UsageError(f"--calibration-images must be at least 1; got {calibration_images}.")
    started = time.perf_counter()
    loaded, network = load_export_source(options, progress=progress)
    pooling = resolve_pooling(options.pooling, include_top=options.include_top)
    card = build_card(loaded, network, pooling=pooling, fmt=fmt.value,
                      precision="int8" if int8 else "float32")
    served = build_serving_model(network, image_size=loaded.image_size,
                                 mode=loaded.preprocess_mode)
    diff = check_reproduces(served, network, image_size=loaded.image_size,
                            mode=loaded.preprocess_mode)
    log.info("served graph vs Keras model: max |difference| %.3g", diff)
    writer = _writer(fmt, int8=int8, calibrate=list(calibrate or ()),
                     calibration_images=calibration_images, progress=progress,
                     on_failure=on_failure)
    if fmt is ExportFormat.saved_model:
        with atomic_dir(output, overwrite=overwrite) as tmp:
            writer(served, card, tmp)
        size = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    elif fmt is ExportFormat.openvino:
        size = _write_pair(writer, served, card, output, overwrite=overwrite)
    else:
        with atomic_path(output, overwrite=overwrite) as tmp:
            writer(served, card, tmp)
        size = output.stat().st_size
    return ExportSummary(path=output, format=fmt, card=card, bytes=size,
                         seconds=time.perf_counter() - started)


def _writer(fmt: ExportFormat, *, int8: bool, calibrate: list[str], calibration_images: int,
            progress: bool, on_failure: FailureHandler | None
            ) -> Callable[[Any, ModelCard, Path], None]:
    if fmt is ExportFormat.saved_model:
        from resnet_cli.export.saved_model import write_saved_model

        return write_saved_model
    if fmt is ExportFormat.onnx:
        from resnet_cli.export.onnx import write_onnx

        return write_onnx
    if fmt is ExportFormat.openvino:
        from resnet_cli.export.openvino import write_openvino as write_int8_capable
    else:
        from resnet_cli.export.litert import write_litert as write_int8_capable

    def write(served: Any, card: ModelCard, path: Path) -> None:
        write_int8_capable(served, card, path, int8=int8, calibration=calibrate,
                           calibration_images=calibration_images, progress=progress,
                           on_failure=on_failure)

    return write


def _write_pair(writer: Callable[[Any, ModelCard, Path], None], served: Any, card: ModelCard,
                output: Path, *, overwrite: bool) -> int:
    """Write an OpenVINO IR (`output`, its `.bin` beside it) atomically; returns its size.

    Both files are written under temporary names first; the `.bin` is renamed into place
    before the `.xml`, which is what readers open, so an interrupted export leaves either the
    old model or the new one readable (a new `.bin` beside an old `.xml` at worst for the
    instant between the two renames).
    """
    import contextlib
    import os

    from resnet_cli.outputs import atomic_path, output_errors

    weights = output.with_suffix(".bin")
    with atomic_path(output, overwrite=overwrite) as tmp:
        try:
            writer(served, card, tmp)
            with output_errors(weights):
                os.replace(tmp.with_suffix(".bin"), weights)
        finally:
            with contextlib.suppress(OSError):
                tmp.with_suffix(".bin").unlink(missing_ok=True)
    return output.stat().st_size + weights.stat().st_size


__all__ = ["ExportFormat", "ExportSummary", "check_export_request", "export_model"]
