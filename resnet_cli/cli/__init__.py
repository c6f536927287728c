"""The `resnet` command line: parse options, call one library function, render the result.

This package is the only code that knows about Typer: one module per command group
(`classify`, `features`, `training`, `inspect`), the options they share (`options`), and the
one place where library errors become one-line messages and exit codes (`messages`).
TensorFlow is never imported here: `resnet --help` is instant.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from resnet_cli import __version__
from resnet_cli.cli import (
    classify,
    explain,
    export,
    features,
    inspect,
    serve,
    similarity,
    training,
)
from resnet_cli.cli.messages import RedactingFormatter, state
from resnet_cli.errors import EXIT_USAGE

app = typer.Typer(
    name="resnet",
    help="Classify images, extract features, finetune and inspect Keras ResNet models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
    state["debug"] = debug or os.environ.get("RESNET_DEBUG", "") not in ("", "0")
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))


def help_text(doc: str | None) -> str:
    """A command's docstring as its --help text: each paragraph on one line, which Rich then
    wraps at the terminal's width (it keeps single line breaks, so a docstring's own wrapping
    would break its sentences at any other width). Indented lines and lines that start a
    label ("Example: ...") keep their breaks."""
    import inspect
    import re

    paragraphs = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(doc or "")):
        lines: list[str] = []
        for line in block.splitlines():
            if lines and not line.startswith(" ") and not re.match(r"[A-Z][\w ]*: ", line):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


for command in (classify.classify, explain.explain, features.extract, features.merge,
                training.finetune, training.evaluate, inspect.summary, inspect.benchmark,
                export.export, serve.serve, similarity.index, similarity.search,
                similarity.duplicates, similarity.audit):
    app.command(help=help_text(command.__doc__))(command)


def main() -> None:
    """Console-script entry point."""
    from resnet_cli.devices import configure_runtime

    configure_runtime()
    app()


__all__ = ["EXIT_USAGE", "app", "main"]
