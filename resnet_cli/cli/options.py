"""Options shared by the commands, declared once: `Annotated` aliases every command imports.

Values are checked here only where Typer must reject them before a command runs (exit 2);
everything else is validated once, in the library.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from resnet_cli.devices import Precision
from resnet_cli.errors import ResnetCliError
from resnet_cli.images import ResizeMode
from resnet_cli.models import Pooling
from resnet_cli.registry import MODEL_NAMES, get_spec

if TYPE_CHECKING:
    from resnet_cli.inference import RunnerFactory
    from resnet_cli.models import ModelOptions


def _check_model(value: str) -> str:
    try:
        return get_spec(value).name
    except ResnetCliError as exc:
        raise typer.BadParameter(str(exc)) from None


def _check_device(value: str) -> str:
    from resnet_cli.devices import parse_device

    try:
        return str(parse_device(value))
    except ResnetCliError as exc:
        raise typer.BadParameter(str(exc)) from None


def _check_weights(value: str) -> str:
    if value.lower() in ("imagenet", "none") or Path(value).expanduser().is_file():
        return value
    raise typer.BadParameter(f"'{value}' is not imagenet, none, or an existing file.")


InputsArg = Annotated[list[str] | None, typer.Argument(
    help="Image files, folders, glob patterns, or - to read paths from stdin. "
         "With none, paths are read from stdin when it is a pipe.",
    metavar="INPUTS...", show_default=False)]
ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", callback=_check_model, metavar="NAME",
    help=f"Model variant: {', '.join(MODEL_NAMES)}.")]
WeightsOpt = Annotated[str, typer.Option(
    "--weights", "-w", callback=_check_weights, metavar="imagenet|none|PATH",
    help="ImageNet weights (cached, downloaded once), none (random), a Keras weights file "
         "(.weights.h5/.h5) for the variant, or a whole .keras model from finetune.")]
ImageSizeOpt = Annotated[int | None, typer.Option(
    "--image-size", min=32, metavar="N",
    help="Input size in pixels (square). Default: the model's own (224).")]
IncludeTopOpt = Annotated[bool, typer.Option(
    "--include-top/--no-include-top",
    help="With the classifier (probabilities out), or the backbone alone (features out).")]
PoolingOpt = Annotated[Pooling | None, typer.Option(
    "--pooling", case_sensitive=False, show_default=False,
    help="Without the classifier: avg (default) or max, one vector per image (2048 wide for "
         "every ResNet), or none, the (h, w, C) feature map. An exported backbone computes "
         "its own.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", callback=_check_device, metavar="auto|cpu|gpu|gpu:N",
    help="Where to run: auto (GPUs if any), cpu, gpu, or one GPU by index. Exported "
         ".tflite/.onnx files run on the CPU.")]
BatchSizeOpt = Annotated[int, typer.Option(
    "--batch-size", "-b", min=1, max=4096, metavar="N", help="Images per batch.")]
ResizeOpt = Annotated[ResizeMode | None, typer.Option(
    "--resize", case_sensitive=False, show_default=False,
    help="crop: shorter side to size/0.875 then centre crop (ImageNet evaluation); squash: "
         "plain bilinear resize, like keras.utils.load_img. Default: the model card's (what "
         "a finetuned or exported model was trained with), else crop.")]
RecursiveOpt = Annotated[bool, typer.Option(
    "--recursive/--no-recursive", "-r", help="Descend into sub-folders of folder inputs.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
PrecisionOpt = Annotated[Precision, typer.Option(
    "--precision", case_sensitive=False,
    help="fp32, or bf16: Keras mixed precision (bfloat16 on CPUs with avx512_bf16/amx_bf16 "
         "and on Ampere+ GPUs, float16 on older GPUs; fp32 with a warning where the hardware "
         "has neither). About 1.5x faster where supported; outputs drift slightly.")]


FeaturesOutOpt = Annotated[Path, typer.Option(
    "--output", "-o", metavar="FILE", dir_okay=False, show_default=False,
    help="FILE.npy (rows; the row index goes to FILE.paths.txt beside it) or FILE.npz "
         "(arrays 'features' and 'paths'). Written atomically.")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an existing output.")]
FeaturesOverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an existing output (and its .paths.txt).")]


class ReportFormat(str, Enum):
    """Formats of one-shot reports (summary, benchmark)."""

    table = "table"
    json = "json"


ReportFormatOpt = Annotated[ReportFormat, typer.Option(
    "--format", "-f", case_sensitive=False, help="table (Rich tables) or json.")]


DataDirArg = Annotated[Path, typer.Argument(
    metavar="DATA_DIR", show_default=False,
    help="Folder with one sub-folder of images per class (data/cat/*.jpg, data/dog/*.jpg).")]




def _check_ray_address(value: str | None) -> str | None:
    import re

    if value is None or value in ("auto", "local") or re.fullmatch(
            r"(ray://)?[^\s/:]+:\d+", value):
        return value
    raise typer.BadParameter(f"'{value}' is not auto, local, HOST:PORT or ray://HOST:PORT.")


def _check_ray_actors(value: str) -> str:
    from resnet_cli.cluster.pool import parse_ray_actors

    try:
        parse_ray_actors(value)
    except ResnetCliError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


RayOpt = Annotated[str | None, typer.Option(
    "--ray", metavar="auto|local|HOST:PORT|ray://HOST:PORT", callback=_check_ray_address,
    help="Run on a Ray cluster: auto joins the one RAY_ADDRESS or `ray start` names, "
         "HOST:PORT the head `ray start --head` started there (ray://HOST:PORT through Ray "
         "Client), local starts one on this machine. Same outputs, in the same order. Needs "
         "resnet-cli[ray].")]
RayActorsOpt = Annotated[str, typer.Option(
    "--ray-actors", metavar="MIN[:MAX]", callback=_check_ray_actors,
    help="With --ray: model actors (each loads the model once; 1 CPU, or 1 GPU with a GPU "
         "device). MAX defaults to what the cluster holds, leaving a CPU for reading.")]
RayTimeoutOpt = Annotated[float, typer.Option(
    "--ray-timeout", min=0, metavar="SECONDS",
    help="With --ray: how long to wait for the cluster to offer the actors' resources (an "
         "autoscaling cluster adding workers, a busy one finishing) before failing.")]
RAY_TIMEOUT = 60.0  # --ray-timeout's default, written once


def ray_runner_for(address: str | None, actors: str, timeout: float, options: ModelOptions
                   ) -> RunnerFactory | None:
    """With --ray, what runs the model on the cluster (None: here)."""
    if address is None:
        return None
    from resnet_cli.cluster import ray_runner

    return ray_runner(address, actors, options, timeout=timeout)
