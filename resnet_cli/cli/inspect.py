"""`resnet summary` and `resnet benchmark`: look at a model, and time it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_cli.cli.messages import FailureReporter, read_inputs, user_errors
from resnet_cli.cli.options import (
    BatchSizeOpt,
    DeviceOpt,
    ImageSizeOpt,
    IncludeTopOpt,
    ModelOpt,
    PoolingOpt,
    PrecisionOpt,
    QuietOpt,
    ReportFormat,
    ReportFormatOpt,
    ResizeOpt,
    WeightsOpt,
)
from resnet_cli.devices import Precision
from resnet_cli.registry import DEFAULT_MODEL


def summary(
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "none",
    include_top: IncludeTopOpt = True,
    pooling: PoolingOpt = None,
    image_size: ImageSizeOpt = None,
    layers: Annotated[bool, typer.Option(
        "--layers", help="Also list every layer: name, type, output shape, parameters (the "
                         "names extract --layer takes).")] = False,
    fmt: ReportFormatOpt = ReportFormat.table,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Stages, parameters, multiply-accumulates and input/output of a model, without running it.

    Works offline: the architecture needs no weights (--weights none is the default). With a
    finetuned .keras model, also shows its classes and the backbone it came from. Accuracy
    figures are the published ImageNet ones from Keras' documentation, not measured.

    Example: resnet summary --model resnet101 --no-include-top --pooling avg --layers
    """
    from resnet_cli.models import ModelOptions
    from resnet_cli.render import emit
    from resnet_cli.render.summary import render_summary
    from resnet_cli.summary import summarize

    with user_errors():
        result = summarize(ModelOptions(model=model, weights=weights, include_top=include_top,
                                        pooling=pooling,
                         image_size=image_size, device=device),
                           layers=layers, progress=not quiet)
    emit(result, render_summary, as_json=fmt is ReportFormat.json)


def benchmark(
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "none",
    batch_size: BatchSizeOpt = 32,
    image_size: ImageSizeOpt = None,
    precision: PrecisionOpt = Precision.fp32,
    inputs: Annotated[Path | None, typer.Option(
        "--inputs", metavar="DIR", exists=True, file_okay=False,
        help="Classify the images in DIR. Default: photo-like JPEGs synthesised in a temporary "
             "folder (see --photo-size).")] = None,
    images: Annotated[int | None, typer.Option(
        "--images", min=1, metavar="N",
        help="Images per timed run. Default: all of --inputs, or 4 batches of synthesised "
             "photos.")] = None,
    photo_size: Annotated[str, typer.Option(
        "--photo-size", metavar="WxH",
        help="Size of the synthesised photos, e.g. 4000x3000 for 12 megapixels.")] = "1920x1080",
    repeats: Annotated[int, typer.Option(
        "--repeats", min=1, metavar="N", help="Timed rounds.")] = 3,
    warmup: Annotated[int, typer.Option(
        "--warmup", min=0, metavar="N",
        help="Untimed rounds first (after the first, compiling, batch).")] = 1,
    baseline: Annotated[bool, typer.Option(
        "--baseline/--no-baseline",
        help="Also time plain Keras (load_img + preprocess_input + model.predict).")] = True,
    resize: ResizeOpt = None,
    fmt: ReportFormatOpt = ReportFormat.table,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Images/s of the model alone, of the whole classify pipeline, and of plain Keras.

    All three are timed in the same run, in interleaved rounds after a warm-up, and compared
    as ratios (median over rounds). Random weights (the default) run exactly as fast as
    ImageNet weights. Progress goes to stderr, the report to stdout.

    Example: resnet benchmark --precision bf16 --repeats 3
    """
    from resnet_cli.benchmark import BenchmarkOptions, run_benchmark
    from resnet_cli.models import ModelOptions
    from resnet_cli.photos import parse_photo_size
    from resnet_cli.render import emit
    from resnet_cli.render.benchmark import render_benchmark

    failures = FailureReporter()
    with user_errors():
        paths = read_inputs([str(inputs)], recursive=False) if inputs is not None else None
        options = BenchmarkOptions(
            model=ModelOptions(model=model, weights=weights, image_size=image_size,
                               device=device, precision=precision.value),
            batch_size=batch_size, images=images, repeats=repeats, warmup=warmup,
            inputs=paths, photo_size=parse_photo_size(photo_size), baseline=baseline,
            resize=resize)
        report = run_benchmark(options, progress=not quiet, on_failure=failures)
    emit(report, render_benchmark, as_json=fmt is ReportFormat.json)
    raise typer.Exit(failures.exit_code)
