"""`resnet classify`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_cli.cli.messages import FailureReporter, read_inputs, user_errors
from resnet_cli.cli.options import (
    RAY_TIMEOUT,
    BatchSizeOpt,
    DeviceOpt,
    ImageSizeOpt,
    InputsArg,
    ModelOpt,
    PrecisionOpt,
    QuietOpt,
    RayActorsOpt,
    RayOpt,
    RayTimeoutOpt,
    RecursiveOpt,
    ResizeOpt,
    WeightsOpt,
    ray_runner_for,
)
from resnet_cli.devices import Precision
from resnet_cli.registry import DEFAULT_MODEL
from resnet_cli.render.classify import OutputFormat


def _format_for(fmt: OutputFormat | None, output: Path | None) -> OutputFormat:
    if fmt is not None:
        if fmt is OutputFormat.table and output is not None:
            raise typer.BadParameter("a table goes to the terminal; use json, jsonl or csv "
                                     "with -o.", param_hint="--format")
        return fmt
    if output is None:
        return OutputFormat.table
    try:
        return OutputFormat(output.suffix.lstrip(".").lower())
    except ValueError:
        raise typer.BadParameter(f"cannot tell the format of '{output}' from its suffix; "
                                 "pass --format json|jsonl|csv.", param_hint="--format") from None


def classify(
    inputs: InputsArg = None,
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "imagenet",
    top_k: Annotated[int | None, typer.Option(
        "--top-k", "-k", min=1, metavar="K",
        help="Labels per image, up to the number of classes. [default: 5, or all classes "
             "of a model with fewer]")] = None,
    batch_size: BatchSizeOpt = 32,
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = None,
    fmt: Annotated[OutputFormat | None, typer.Option(
        "--format", "-f", case_sensitive=False,
        help="table (default on screen), json, jsonl or csv. "
                               "With -o, taken from the file suffix.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", dir_okay=False,
        help="Write results to FILE (atomically) instead of stdout.")] = None,
    recursive: RecursiveOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    ray: RayOpt = None,
    ray_actors: RayActorsOpt = "1",
    ray_timeout: RayTimeoutOpt = RAY_TIMEOUT,
    quiet: QuietOpt = False,
) -> None:
    """Top-k ImageNet (or your finetuned model's) labels for each image.

    Example: resnet classify sample_images/*.jpg --model resnet101 --top-k 3
    """
    from resnet_cli.classify import classify_images
    from resnet_cli.models import ModelOptions, load_model
    from resnet_cli.outputs import check_output_path
    from resnet_cli.render.classify import emit_classify

    out_format = _format_for(fmt, output)
    failures = FailureReporter()
    with user_errors():
        paths = read_inputs(inputs, recursive=recursive)
        if output is not None:
            check_output_path(output)
        options = ModelOptions(model=model, weights=weights, image_size=image_size,
                               device=device, precision=precision.value)
        loaded = load_model(options, progress=not quiet)
        results = classify_images(paths, loaded, top_k=top_k, batch_size=batch_size,
                                  resize=resize, progress=not quiet, on_failure=failures,
                                  runner=ray_runner_for(ray, ray_actors, ray_timeout,
                                                        options))
        emit_classify(results, out_format, output)
    raise typer.Exit(failures.exit_code)
