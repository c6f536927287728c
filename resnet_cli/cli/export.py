"""`resnet export`: the model as a SavedModel, LiteRT or ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_cli.cli.messages import FailureReporter, collect_named_inputs, user_errors
from resnet_cli.cli.options import (
    DeviceOpt,
    ImageSizeOpt,
    IncludeTopOpt,
    ModelOpt,
    OverwriteOpt,
    PoolingOpt,
    QuietOpt,
    RecursiveOpt,
    WeightsOpt,
)
from resnet_cli.export import ExportFormat
from resnet_cli.registry import DEFAULT_MODEL
from resnet_cli.render import make_console


def export(
    fmt: Annotated[ExportFormat, typer.Option(
        "--format", "-f", case_sensitive=False, show_default=False,
        help="saved_model (a directory for TF Serving), litert (.tflite) or onnx (.onnx; "
             "pip install 'resnet-cli[onnx]').")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", metavar="PATH", show_default=False,
        help="The file (.tflite, .onnx) or directory (saved_model) to write, atomically.")],
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "imagenet",
    image_size: ImageSizeOpt = None,
    include_top: IncludeTopOpt = True,
    pooling: PoolingOpt = None,
    int8: Annotated[bool, typer.Option(
        "--int8", help="LiteRT full-integer quantization (int8 weights and activations), "
                       "calibrated on --calibrate images.")] = False,
    calibrate: Annotated[list[str] | None, typer.Option(
        "--calibrate", metavar="INPUT",
        help="Calibration images for --int8: files, folders (with their sub-folders, so a "
             "finetune DATA_DIR works as it is) or glob patterns; repeat the option for more "
             "(a few hundred of your own images).")] = None,
    calibration_images: Annotated[int, typer.Option(
        "--calibration-images", min=1, metavar="N",
        help="Calibrate on a random sample of N of the --calibrate images.")] = 300,
    overwrite: OverwriteOpt = False,
    recursive: RecursiveOpt = True,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Write the model, with its preprocessing inside, for TF Serving, LiteRT or ONNX Runtime.

    The file takes uint8 RGB images (batch, size, size, 3) and returns float32 probabilities
    (features for a backbone). It carries its card (variant, classes, size, resize, precision),
    so classify, extract, evaluate and benchmark take it as --weights FILE.tflite/.onnx.

    Example: resnet export --format litert --int8 --calibrate photos/ -o resnet50_int8.tflite
    """
    from resnet_cli.export import check_export_request, export_model
    from resnet_cli.models import ModelOptions

    failures = FailureReporter()
    with user_errors():
        check_export_request(fmt, output, int8=int8, calibrate=calibrate, overwrite=overwrite)
        paths = collect_named_inputs(calibrate, recursive=recursive) if calibrate else None
        summary = export_model(
            ModelOptions(model=model, weights=weights, include_top=include_top,
                         pooling=pooling,
                         image_size=image_size, device=device),
            fmt, output, int8=int8, calibrate=paths, calibration_images=calibration_images,
            overwrite=overwrite, progress=not quiet, on_failure=failures)
    if not quiet:
        make_console(stderr=True).print(summary.describe(), markup=False, highlight=False)
    raise typer.Exit(failures.exit_code)  # 1 when a calibration image could not be read
