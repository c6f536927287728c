"""The `resnet` command line: parse options, call one library function, render the result.

This is the only module that knows about Typer, and the one place where library errors become
one-line messages and exit codes. TensorFlow is never imported here: `resnet --help` is instant.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from resnet_cli import __version__
from resnet_cli.devices import Precision
from resnet_cli.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, NoInputsError, ResnetCliError
from resnet_cli.extract import FeatureDType, Pooling
from resnet_cli.images import ResizeMode
from resnet_cli.registry import DEFAULT_MODEL, MODEL_NAMES, get_spec
from resnet_cli.render import OutputFormat, make_console

app = typer.Typer(
    name="resnet",
    help="Classify images, extract features, finetune and inspect Keras ResNet models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

T = TypeVar("T")

_state = {"debug": False}  # set by the callback on every invocation


# ----- shared options ---------------------------------------------------------------------

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
DeviceOpt = Annotated[str, typer.Option(
    "--device", callback=_check_device, metavar="auto|cpu|gpu|gpu:N",
    help="Where to run: auto (GPUs if any), cpu, gpu, or one GPU by index.")]
BatchSizeOpt = Annotated[int, typer.Option(
    "--batch-size", "-b", min=1, max=4096, metavar="N", help="Images per batch.")]
ResizeOpt = Annotated[ResizeMode, typer.Option(
    "--resize", help="crop: shorter side to size/0.875 then centre crop (ImageNet "
                     "evaluation); squash: plain bilinear resize, like keras.utils.load_img.")]
RecursiveOpt = Annotated[bool, typer.Option(
    "--recursive/--no-recursive", "-r", help="Descend into sub-folders of folder inputs.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
PrecisionOpt = Annotated[Precision, typer.Option(
    "--precision", case_sensitive=False,
    help="fp32, or bf16: Keras mixed precision (bfloat16 on CPUs with avx512_bf16/amx_bf16 "
         "and on Ampere+ GPUs, float16 on older GPUs; fp32 with a warning where the hardware "
         "has neither). About 1.5x faster where supported; outputs drift slightly.")]


# ----- error handling ---------------------------------------------------------------------

def _print_error(message: str) -> None:
    """One red `error:` line on stderr (the message is printed as text, never as markup)."""
    from rich.markup import escape

    make_console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", markup=True,
                                    highlight=False)


def _report_failure(path: str, reason: str) -> None:
    """The line for one input that failed; the rest of the batch goes on."""
    _print_error(f"{path}: {reason}")


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn library errors into one red line on stderr and their exit code."""
    try:
        yield
    except ResnetCliError as exc:
        if _state["debug"]:
            raise
        _print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if _state["debug"]:
            raise
        _print_error("interrupted")
        raise typer.Exit(130) from None


class _FailureCounter:
    """Passes results through, printing one stderr line per failed input and counting them."""

    def __init__(self) -> None:
        self.count = 0

    def report(self, results: Iterable[T]) -> Iterator[T]:
        for result in results:
            error = getattr(result, "error", None)
            if error is not None:
                self.count += 1
                _report_failure(getattr(result, "path", "?"), error)
            yield result


def _read_inputs(inputs: list[str] | None, *, recursive: bool) -> list[str]:
    from resnet_cli.images import collect_inputs

    if not inputs:
        if sys.stdin is None or sys.stdin.isatty():
            raise NoInputsError("No inputs: give image files, folders or patterns, "
                                "or pipe paths on stdin.")
        inputs = ["-"]
    return collect_inputs(inputs, recursive=recursive)


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


# ----- commands ---------------------------------------------------------------------------

def _version(value: bool) -> None:
    if value:
        typer.echo(f"resnet {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="More log output (-vv for debug).")] = 0,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks "
                                        "(also RESNET_DEBUG=1).")] = False,
) -> None:
    """Keras ResNet models from the command line."""
    _state["debug"] = debug or os.environ.get("RESNET_DEBUG", "") not in ("", "0")
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)


@app.command()
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
    resize: ResizeOpt = ResizeMode.crop,
    fmt: Annotated[OutputFormat | None, typer.Option(
        "--format", "-f", help="table (default on screen), json, jsonl or csv. "
                               "With -o, taken from the file suffix.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", dir_okay=False,
        help="Write results to FILE (atomically) instead of stdout.")] = None,
    recursive: RecursiveOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    quiet: QuietOpt = False,
) -> None:
    """Top-k ImageNet (or your finetuned model's) labels for each image.

    Example: resnet classify sample_images/*.jpg --model resnet101 --top-k 3
    """
    from resnet_cli.classify import classify_images
    from resnet_cli.models import ModelOptions, load_model
    from resnet_cli.outputs import atomic_open, check_output_path
    from resnet_cli.render import render_classify_table, write_classify

    out_format = _format_for(fmt, output)
    failures = _FailureCounter()
    with _user_errors():
        paths = _read_inputs(inputs, recursive=recursive)
        if output is not None:
            check_output_path(output)
        loaded = load_model(ModelOptions(model=model, weights=weights, image_size=image_size,
                                         device=device, precision=precision.value),
                            progress=not quiet)
        results = failures.report(classify_images(paths, loaded, top_k=top_k,
                                                  batch_size=batch_size, resize=resize,
                                                  progress=not quiet))
        if out_format is OutputFormat.table:
            render_classify_table(results, make_console())
        elif output is None:
            write_classify(results, out_format, sys.stdout)
        else:
            with atomic_open(output, newline="") as handle:
                write_classify(results, out_format, handle)
    raise typer.Exit(EXIT_FAILURE if failures.count else EXIT_OK)


def _check_shard(value: str | None) -> str | None:
    from resnet_cli.extract import parse_shard

    if value is None:
        return None
    try:
        return str(parse_shard(value))
    except ResnetCliError as exc:
        raise typer.BadParameter(str(exc)) from None


FeaturesOutOpt = Annotated[Path, typer.Option(
    "--output", "-o", metavar="FILE", dir_okay=False, show_default=False,
    help="FILE.npy (rows; the row index goes to FILE.paths.txt beside it) or FILE.npz "
         "(arrays 'features' and 'paths'). Written atomically.")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an existing output (and its .paths.txt).")]


@app.command()
def extract(
    inputs: InputsArg = None,
    output: FeaturesOutOpt = ...,  # type: ignore[assignment]
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "imagenet",
    pooling: Annotated[Pooling, typer.Option(
        "--pooling", case_sensitive=False,
        help="avg or max: one vector per image (2048 wide for every ResNet); none: the "
             "(h, w, C) feature map.")] = Pooling.avg,
    layer: Annotated[str | None, typer.Option(
        "--layer", metavar="NAME",
        help="Take the output of this backbone layer (e.g. conv4_block6_out) instead of the "
             "last conv stage; pooled the same way.")] = None,
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = ResizeMode.crop,
    batch_size: BatchSizeOpt = 32,
    l2_normalize: Annotated[bool, typer.Option(
        "--l2-normalize", help="Scale each vector to unit length (with --pooling none, each "
                               "position's channel vector).")] = False,
    dtype: Annotated[FeatureDType, typer.Option(
        "--dtype", case_sensitive=False,
        help="Number type on disk; float16 halves the size.")] = FeatureDType.float32,
    shard: Annotated[str | None, typer.Option(
        "--shard", metavar="K/N", callback=_check_shard,
        help="Process only slice K of N (0 <= K < N) of the SORTED inputs, e.g. "
             "--shard $SLURM_ARRAY_TASK_ID/8; join the outputs with resnet merge.")] = None,
    overwrite: OverwriteOpt = False,
    recursive: RecursiveOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    quiet: QuietOpt = False,
) -> None:
    """Feature vectors (or maps) of images from the ResNet backbone, streamed to .npy/.npz.

    One row per image that could be read, in input order (sorted order with --shard).
    Unreadable images are reported on stderr, left out, and make the exit code 1.
    With several GPUs visible, batches are spread over all of them.

    Example: find photos -name '*.jpg' | resnet extract --pooling avg -o feats.npy
    """
    from resnet_cli.extract import check_feature_output, extract_features, parse_shard
    from resnet_cli.models import ModelOptions

    with _user_errors():
        check_feature_output(output, overwrite=overwrite)
        paths = _read_inputs(inputs, recursive=recursive)
        summary = extract_features(
            paths, output, options=ModelOptions(model=model, weights=weights,
                                                image_size=image_size, device=device,
                                                precision=precision.value),
            pooling=pooling.value, layer=layer, batch_size=batch_size, resize=resize,
            l2_normalize=l2_normalize, dtype=dtype.value,
            shard=parse_shard(shard) if shard else None, overwrite=overwrite,
            progress=not quiet, on_failure=_report_failure)
    if not quiet:
        out = summary.output
        beside = f" + {out.index}" if out.index is not None else ""
        make_console(stderr=True).print(
            f"{out.rows} x {out.row_shape} {out.dtype} features from {summary.layer} of "
            f"{summary.source} -> {out.path}{beside} ({summary.failed} failed, "
            f"{summary.seconds:.1f} s, {summary.images_per_second:.1f} img/s)",
            markup=False, highlight=False)
    raise typer.Exit(EXIT_FAILURE if summary.failed else EXIT_OK)


@app.command()
def merge(
    files: Annotated[list[Path], typer.Argument(
        metavar="FILES...", show_default=False,
        help="Feature files from extract --shard runs, in order: .npy (with .paths.txt "
             "beside) or .npz.")],
    output: FeaturesOutOpt = ...,  # type: ignore[assignment]
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Join feature files from `resnet extract --shard` runs into one, in the order given.

    Rows and paths are copied in chunks (memory stays flat) into a new .npy or .npz.
    All files must hold rows of the same shape and type.

    Example: resnet merge feats-0-of-4.npy feats-1-of-4.npy ... -o feats.npy
    """
    from resnet_cli.extract import merge_features

    with _user_errors():
        out = merge_features(files, output, overwrite=overwrite)
    if not quiet:
        beside = f" + {out.index}" if out.index is not None else ""
        make_console(stderr=True).print(
            f"{out.rows} x {out.row_shape} {out.dtype} rows from {len(files)} files -> "
            f"{out.path}{beside}", markup=False, highlight=False)


class ReportFormat(str, Enum):
    """Formats of one-shot reports (summary, benchmark)."""

    table = "table"
    json = "json"


ReportFormatOpt = Annotated[ReportFormat, typer.Option(
    "--format", "-f", case_sensitive=False, help="table (Rich tables) or json.")]


@app.command()
def summary(
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "none",
    include_top: Annotated[bool, typer.Option(
        "--include-top/--no-include-top",
        help="With the 1000-class classifier, or the backbone alone.")] = True,
    pooling: Annotated[str | None, typer.Option(
        "--pooling", metavar="avg|max|none",
        help="Pooling of the backbone output (with --no-include-top).")] = None,
    image_size: ImageSizeOpt = None,
    layers: Annotated[bool, typer.Option(
        "--layers", help="Also list every layer: name, type, output shape, parameters (the "
                         "names extract --layer takes).")] = False,
    fmt: ReportFormatOpt = ReportFormat.table,
    quiet: QuietOpt = False,
) -> None:
    """Stages, parameters, multiply-accumulates and input/output of a model, without running it.

    Works offline: the architecture needs no weights (--weights none is the default). With a
    finetuned .keras model, also shows its classes and the backbone it came from. Accuracy
    figures are the published ImageNet ones from Keras' documentation, not measured.

    Example: resnet summary --model resnet101 --no-include-top --pooling avg --layers
    """
    import json

    from resnet_cli.models import ModelOptions
    from resnet_cli.summary import render_summary, summarize

    with _user_errors():
        result = summarize(ModelOptions(model=model, weights=weights, include_top=include_top,
                                        pooling=pooling, image_size=image_size, device="cpu"),
                           layers=layers, progress=not quiet)
    if fmt is ReportFormat.json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        render_summary(result, make_console())


@app.command()
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
    import json

    from resnet_cli.benchmark import (
        BenchmarkOptions,
        parse_photo_size,
        render_benchmark,
        run_benchmark,
    )
    from resnet_cli.models import ModelOptions

    with _user_errors():
        paths = None
        if inputs is not None:
            paths = _read_inputs([str(inputs)], recursive=False)
        options = BenchmarkOptions(
            model=ModelOptions(model=model, weights=weights, image_size=image_size,
                               device=device, precision=precision.value),
            batch_size=batch_size, images=images, repeats=repeats, warmup=warmup,
            inputs=paths, photo_size=parse_photo_size(photo_size), baseline=baseline)
        report = run_benchmark(options, progress=not quiet)
    for error in report.errors:
        _report_failure(error.path, error.reason)
    if fmt is ReportFormat.json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        render_benchmark(report, make_console())
    raise typer.Exit(EXIT_FAILURE if report.errors else EXIT_OK)


# ----- finetune / evaluate ------------------------------------------------------------------

def _choice(*choices: str):  # type: ignore[no-untyped-def]
    """A callback accepting one of `choices` (any case), for plain-string options."""
    def check(value: str | None) -> str | None:
        if value is None:
            return None
        if value.lower() not in choices:
            raise typer.BadParameter(f"'{value}' is not one of {', '.join(choices)}.")
        return value.lower()
    return check


def _explicit_options(ctx: typer.Context) -> frozenset[str]:
    """The parameters given on the command line (or by environment), not left at defaults."""
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    return frozenset(name for name, source in sources.items()
                     if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"))


DataDirArg = Annotated[Path, typer.Argument(
    metavar="DATA_DIR", show_default=False,
    help="Folder with one sub-folder of images per class (data/cat/*.jpg, data/dog/*.jpg).")]


@app.command()
def finetune(
    ctx: typer.Context,
    data_dir: DataDirArg,
    classes: Annotated[int, typer.Option(
        "--classes", "-n", min=2, metavar="N", show_default=False,
        help="Number of classes; must equal the number of class folders in DATA_DIR.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="RUN_DIR", file_okay=False,
        help="Run folder for model.keras, config.json, labels.txt, history.csv, metrics.json "
             "and checkpoints/. Default: runs/<data>-<model>-<date-time>.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "imagenet",
    image_size: ImageSizeOpt = None,
    epochs: Annotated[int, typer.Option(
        "--epochs", "-e", min=1, metavar="N",
        help="Epochs of phase 1 (the new head on a frozen backbone), or of the whole network "
             "with --weights none.")] = 10,
    batch_size: BatchSizeOpt = 32,
    lr: Annotated[float, typer.Option(
        "--lr", min=0.0, metavar="LR",
        help="Peak learning rate of phase 1 (AdamW, warmup then cosine decay).")] = 1e-3,
    val_split: Annotated[float, typer.Option(
        "--val-split", min=0.0, max=0.95, metavar="F",
        help="Fraction of each class held out for validation (ignored with --val-dir).")] = 0.2,
    val_dir: Annotated[Path | None, typer.Option(
        "--val-dir", metavar="DIR", file_okay=False,
        help="Validation images in the same folder-per-class layout, instead of a split.")
    ] = None,
    augment: Annotated[bool, typer.Option(
        "--augment/--no-augment",
        help="Random flips, rotations (+-18 deg), zooms and shifts (10%) of training images.")
    ] = True,
    flip: Annotated[bool, typer.Option(
        "--flip/--no-flip",
        help="Include horizontal flips in --augment (turn off for digits, text, ...).")] = True,
    fine_tune_epochs: Annotated[int | None, typer.Option(
        "--fine-tune-epochs", min=0, metavar="M",
        help="Phase 2 epochs with the top of the backbone unfrozen. Default: half of --epochs "
             "with pretrained weights, 0 with --weights none.")] = None,
    fine_tune_lr: Annotated[float, typer.Option(
        "--fine-tune-lr", min=0.0, metavar="LR", help="Peak learning rate of phase 2.")] = 1e-5,
    unfreeze: Annotated[str, typer.Option(
        "--unfreeze", metavar="all|K",
        help="Phase 2 trains the whole backbone, or its top K residual blocks (16 in "
             "resnet50). BatchNorm stays in inference mode either way.")] = "all",
    label_smoothing: Annotated[float, typer.Option(
        "--label-smoothing", min=0.0, max=0.99, metavar="F", help="Label smoothing.")] = 0.1,
    class_weight: Annotated[str, typer.Option(
        "--class-weight", metavar="none|auto", callback=_choice("none", "auto"),
        help="auto: weigh each class's loss by the inverse of its frequency.")] = "none",
    weight_decay: Annotated[float, typer.Option(
        "--weight-decay", min=0.0, metavar="W",
        help="AdamW weight decay (not applied to biases and BatchNorm).")] = 0.05,
    seed: Annotated[int, typer.Option(
        "--seed", metavar="N", help="Seed of the split, the shuffling, the augmentation and "
                                    "the initial weights.")] = 0,
    resize: ResizeOpt = ResizeMode.crop,
    keep_checkpoints: Annotated[int, typer.Option(
        "--keep-checkpoints", min=0, metavar="K",
        help="Per-epoch checkpoints kept (the newest K; 0 keeps all).")] = 1,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in -o RUN_DIR from its last completed epoch, with "
                         "its optimizer state.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the run in -o RUN_DIR.")] = False,
    mixed_precision: Annotated[bool, typer.Option(
        "--mixed-precision", help="float16 compute on GPUs (Keras mixed_float16, with loss "
                                  "scaling); ignored on CPUs.")] = False,
    strategy: Annotated[str, typer.Option(
        "--strategy", metavar="auto|mirrored|multiworker",
        callback=_choice("auto", "mirrored", "multiworker"),
        help="mirrored: all GPUs of this machine; multiworker: several machines, from "
             "TF_CONFIG; auto: mirrored when more than one GPU is visible.")] = "auto",
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Train a classifier for your own classes (transfer learning, or from scratch).

    With pretrained weights: phase 1 trains a new head on the frozen backbone, phase 2
    (--fine-tune-epochs) unfreezes it at a low learning rate. With --weights none the whole
    network trains from the start. RUN_DIR/model.keras then works with classify, extract,
    summary and evaluate (--weights RUN_DIR/model.keras): class names, input size and
    preprocessing come from RUN_DIR/config.json. --batch-size is the global batch, split over
    the replicas of --strategy; for multiworker, run the same command on every machine with
    TF_CONFIG describing the cluster (the chief writes RUN_DIR).

    Example: resnet finetune data/ --classes 10 -o runs/pets --epochs 5
    """
    from rich.text import Text

    from resnet_cli.render_training import epoch_line, render_finetune
    from resnet_cli.training import FinetuneOptions
    from resnet_cli.training import finetune as run_finetune

    err = make_console(stderr=True)

    def on_epoch(record, total: int) -> None:  # type: ignore[no-untyped-def]
        if not quiet:
            err.print(epoch_line(record, total), markup=False)

    def on_warning(message: str) -> None:
        err.print(Text.assemble(("warning:", "yellow"), " ", message))

    options = FinetuneOptions(
        data_dir=str(data_dir), classes=classes, run_dir=str(output) if output else None,
        model=model, weights=weights, image_size=image_size, epochs=epochs,
        batch_size=batch_size, lr=lr, val_split=val_split,
        val_dir=str(val_dir) if val_dir else None, augment=augment, flip=flip,
        fine_tune_epochs=fine_tune_epochs, fine_tune_lr=fine_tune_lr, unfreeze=unfreeze,
        label_smoothing=label_smoothing, class_weight=class_weight, weight_decay=weight_decay,
        seed=seed, resize=resize.value, keep_checkpoints=keep_checkpoints, resume=resume,
        overwrite=overwrite, mixed_precision=mixed_precision, strategy=strategy, device=device)
    with _user_errors():
        result = run_finetune(options, explicit=_explicit_options(ctx), progress=not quiet,
                              on_epoch=on_epoch, on_warning=on_warning)
    render_finetune(result, make_console())


@app.command()
def evaluate(
    data_dir: DataDirArg,
    weights: WeightsOpt = "imagenet",
    model: ModelOpt = DEFAULT_MODEL,
    image_size: ImageSizeOpt = None,
    batch_size: BatchSizeOpt = 32,
    resize: Annotated[ResizeMode | None, typer.Option(
        "--resize", help="crop or squash. Default: what a finetuned model was trained with "
                         "(its config.json), else crop.")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", "-f", metavar="table|json", callback=_choice("table", "json"),
        help="A report of tables, or one JSON document.")] = "table",
    errors: Annotated[int, typer.Option(
        "--errors", min=0, metavar="N",
        help="List this many misclassified files (the most confident first).")] = 10,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Accuracy of a model on a folder-per-class dataset.

    Top-1 and top-5 accuracy, per-class precision/recall/F1, the confusion matrix and the
    files it got wrong. Class folders are matched to the model's classes by name: a finetuned
    model's own classes, or ImageNet WordNet ids (n01440764) or class names for ImageNet
    models. Unreadable images are reported, left out, and make the exit code 1.

    Example: resnet evaluate data/test --weights runs/pets/model.keras --errors 5
    """
    from resnet_cli.evaluate import card_resize, evaluate_folder
    from resnet_cli.models import ModelOptions, load_model
    from resnet_cli.render_training import render_evaluation, write_evaluation_json

    failed = 0

    def on_failure(error):  # type: ignore[no-untyped-def]
        nonlocal failed
        failed += 1
        _report_failure(error.path, error.reason)

    with _user_errors():
        from resnet_cli.datasets import scan_class_folders

        scan_class_folders(data_dir)  # a bad layout fails before the model loads
        loaded = load_model(ModelOptions(model=model, weights=weights, image_size=image_size,
                                         device=device), progress=not quiet)
        result = evaluate_folder(str(data_dir), loaded, batch_size=batch_size,
                                 resize=resize or card_resize(loaded), errors=errors,
                                 progress=not quiet, on_failure=on_failure)
    if fmt == "json":
        write_evaluation_json(result, sys.stdout)
    else:
        render_evaluation(result, make_console())
    raise typer.Exit(EXIT_FAILURE if failed else EXIT_OK)


def main() -> None:
    """Console-script entry point."""
    from resnet_cli.devices import configure_runtime

    configure_runtime()
    app()


__all__ = ["EXIT_USAGE", "app", "main"]
