"""`resnet extract` and `resnet merge`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_cli.cli.messages import FailureReporter, read_inputs, user_errors
from resnet_cli.cli.options import (
    RAY_TIMEOUT,
    BatchSizeOpt,
    DeviceOpt,
    FeaturesOutOpt,
    FeaturesOverwriteOpt,
    ImageSizeOpt,
    InputsArg,
    ModelOpt,
    PoolingOpt,
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
from resnet_cli.errors import ResnetCliError
from resnet_cli.extract import FeatureDType, Shard
from resnet_cli.registry import DEFAULT_MODEL
from resnet_cli.render import make_console


def _parse_shard(value: str) -> Shard:
    from resnet_cli.extract import parse_shard

    try:
        return parse_shard(value)
    except ResnetCliError as exc:
        raise typer.BadParameter(str(exc)) from None


def extract(
    inputs: InputsArg = None,
    output: FeaturesOutOpt = ...,  # type: ignore[assignment]
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "imagenet",
    pooling: PoolingOpt = None,
    layer: Annotated[str | None, typer.Option(
        "--layer", metavar="NAME",
        help="Take the output of this backbone layer (e.g. conv4_block6_out) instead of the "
             "last conv stage; pooled the same way.")] = None,
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = None,
    batch_size: BatchSizeOpt = 32,
    l2_normalize: Annotated[bool, typer.Option(
        "--l2-normalize", help="Scale each vector to unit length (with --pooling none, each "
                               "position's channel vector).")] = False,
    dtype: Annotated[FeatureDType, typer.Option(
        "--dtype", case_sensitive=False,
        help="Number type on disk; float16 halves the size.")] = FeatureDType.float32,
    shard: Annotated[Shard | None, typer.Option(
        "--shard", metavar="K/N", parser=_parse_shard,
        help="Process only slice K of N (0 <= K < N) of the SORTED inputs, e.g. "
             "--shard $SLURM_ARRAY_TASK_ID/8; join the outputs with resnet merge.")] = None,
    overwrite: FeaturesOverwriteOpt = False,
    recursive: RecursiveOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    ray: RayOpt = None,
    ray_actors: RayActorsOpt = "1",
    ray_timeout: RayTimeoutOpt = RAY_TIMEOUT,
    quiet: QuietOpt = False,
) -> None:
    """Feature vectors (or maps) of images from the ResNet backbone, streamed to .npy/.npz.

    One row per image that could be read, in input order (sorted order with --shard).
    Unreadable images are reported on stderr, left out, and make the exit code 1.
    With several GPUs visible, batches are spread over all of them.

    Example: find photos -name '*.jpg' | resnet extract --pooling avg -o feats.npy
    """
    from resnet_cli.extract import extract_features
    from resnet_cli.features import check_feature_output
    from resnet_cli.models import ModelOptions
    from resnet_cli.render.features import extract_line

    failures = FailureReporter()
    with user_errors():
        check_feature_output(output, overwrite=overwrite)  # before reading stdin
        paths = read_inputs(inputs, recursive=recursive)
        options = ModelOptions(model=model, weights=weights, image_size=image_size,
                               device=device, precision=precision.value)
        summary = extract_features(
            paths, output, options=options,
            pooling=pooling, layer=layer,
            batch_size=batch_size, resize=resize,
            l2_normalize=l2_normalize, dtype=dtype.value,
            shard=shard, overwrite=overwrite, progress=not quiet, on_failure=failures,
            runner=ray_runner_for(ray, ray_actors, ray_timeout, options))
    if not quiet:
        make_console(stderr=True).print(extract_line(summary), markup=False, highlight=False)
    raise typer.Exit(failures.exit_code)


def merge(
    files: Annotated[list[Path], typer.Argument(
        metavar="FILES...", show_default=False,
        help="Feature files from extract --shard runs, in order: .npy (with .paths.txt "
             "beside) or .npz.")],
    output: FeaturesOutOpt = ...,  # type: ignore[assignment]
    overwrite: FeaturesOverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Join feature files from `resnet extract --shard` runs into one, in the order given.

    Rows and paths are copied in chunks (memory stays flat) into a new .npy or .npz.
    All files must hold rows of the same shape and type.

    Example: resnet merge feats-0-of-4.npy feats-1-of-4.npy ... -o feats.npy
    """
    from resnet_cli.features import merge_features
    from resnet_cli.render.features import merge_line

    with user_errors():
        out = merge_features(files, output, overwrite=overwrite)
    if not quiet:
        make_console(stderr=True).print(merge_line(out, len(files)), markup=False,
                                        highlight=False)

