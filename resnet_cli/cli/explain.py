"""`resnet explain`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_cli.cli.messages import FailureReporter, read_inputs, user_errors
from resnet_cli.cli.options import (
    BatchSizeOpt,
    DeviceOpt,
    ImageSizeOpt,
    InputsArg,
    ModelOpt,
    OverwriteOpt,
    PrecisionOpt,
    QuietOpt,
    RecursiveOpt,
    ResizeOpt,
    WeightsOpt,
)
from resnet_cli.devices import Precision
from resnet_cli.registry import DEFAULT_MODEL
from resnet_cli.render import make_console


def explain(
    inputs: InputsArg = None,
    output: Annotated[Path, typer.Option(
        "--output", "-o", metavar="DIR", file_okay=False, show_default=False,
        help="Folder for <image stem>.png (a repeated stem gets -2, -3, ...) and "
             "heatmaps.npz; created when missing.")] = ...,  # type: ignore[assignment]
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "imagenet",
    target_class: Annotated[str | None, typer.Option(
        "--class", "-c", metavar="NAME|INDEX",
        help="Explain this class (a class name, a WordNet id or an index) instead of each "
             "image's top prediction.")] = None,
    top_k: Annotated[int, typer.Option(
        "--top-k", "-k", min=1, metavar="K",
        help="Explain each of the top K predictions: K panels in each picture.")] = 1,
    layer: Annotated[str | None, typer.Option(
        "--layer", metavar="NAME",
        help="Backbone layer to explain at (e.g. conv4_block6_out, finer and noisier). "
             "[default: the last conv stage: conv5_block3_out, or post_relu for V2]")] = None,
    alpha: Annotated[float, typer.Option(
        "--alpha", min=0.0, max=1.0, metavar="A",
        help="Opacity of the heatmap over the photo, 0 to 1.")] = 0.5,
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = None,
    batch_size: BatchSizeOpt = 32,
    overwrite: OverwriteOpt = False,
    recursive: RecursiveOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    quiet: QuietOpt = False,
) -> None:
    """Grad-CAM heatmaps: where in each image the model found its top prediction.

    Writes DIR/<image stem>.png (the photo with the heatmap blended over the part the model
    saw, a colour bar, the label and probability) and DIR/heatmaps.npz (the raw maps at the
    layer's resolution). Works with ImageNet weights and finetuned .keras models. Unreadable
    images are reported on stderr, left out, and make the exit code 1.

    Example: resnet explain sample_images/*.jpg -o heatmaps/ --top-k 3
    """
    from resnet_cli.explain import explain_images
    from resnet_cli.models import ModelOptions, load_model
    from resnet_cli.render.explain import (
        check_folder,
        explain_line,
        png_names,
        write_explanations,
    )

    failures = FailureReporter()
    with user_errors():
        paths = read_inputs(inputs, recursive=recursive)
        names = png_names(paths)
        check_folder(output, names, overwrite=overwrite)
        loaded = load_model(ModelOptions(model=model, weights=weights, image_size=image_size,
                                         device=device, precision=precision.value),
                            progress=not quiet)
        setup, explanations = explain_images(
            paths, loaded, target_class=target_class, top_k=top_k, layer=layer,
            batch_size=batch_size, resize=resize, progress=not quiet, on_failure=failures)
        summary = write_explanations(explanations, setup, output, names, alpha=alpha,
                                     on_failure=failures)
    if not quiet:
        make_console(stderr=True).print(explain_line(summary), markup=False, highlight=False)
    raise typer.Exit(failures.exit_code)
