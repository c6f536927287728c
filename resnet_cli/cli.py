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
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from resnet_cli import __version__
from resnet_cli.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, NoInputsError, ResnetCliError
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

_state = {"debug": os.environ.get("RESNET_DEBUG", "") not in ("", "0")}


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


# ----- error handling ---------------------------------------------------------------------

def _print_error(message: str) -> None:
    make_console(stderr=True).print(f"[bold red]error:[/] {message}", markup=True,
                                    highlight=False)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn library errors into one red line on stderr and their exit code."""
    try:
        yield
    except ResnetCliError as exc:
        if _state["debug"]:
            raise
        _print_error(str(exc).replace("[", r"\["))
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
                _print_error(f"{getattr(result, 'path', '?')}: {error}".replace("[", r"\["))
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
    _state["debug"] = _state["debug"] or debug
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)


@app.command()
def classify(
    inputs: InputsArg = None,
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "imagenet",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, metavar="K",
                                       help="Labels per image (up to the number of classes).")] = 5,
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
                                         device=device), progress=not quiet)
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


def main() -> None:
    """Console-script entry point."""
    from resnet_cli.devices import configure_runtime

    configure_runtime()
    app()


__all__ = ["EXIT_USAGE", "app", "main"]
