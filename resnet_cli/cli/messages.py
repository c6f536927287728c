"""The one place where library errors become one-line messages and exit codes.

Results go to stdout; errors, warnings and failed inputs go to stderr, one line each.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from resnet_cli.errors import EXIT_FAILURE, EXIT_OK, ImageError, NoInputsError, ResnetCliError
from resnet_cli.remote import redact_urls
from resnet_cli.render import make_console

state = {"debug": False}  # set by the app's callback on every invocation


def print_error(message: str) -> None:
    """One red `error:` line on stderr (the message is printed as text, never as markup;
    credentials in URLs masked)."""
    from rich.markup import escape

    make_console(stderr=True).print(f"[bold red]error:[/] {escape(redact_urls(message))}",
                                    markup=True, highlight=False)


def print_warning(message: str) -> None:
    """One yellow `warning:` line on stderr (credentials in URLs masked)."""
    from rich.markup import escape

    make_console(stderr=True).print(f"[yellow]warning:[/] {escape(redact_urls(message))}",
                                    markup=True, highlight=False)


class RedactingFormatter(logging.Formatter):
    """Log lines with the credentials of URLs masked (`remote.redact_urls`), whatever logged
    them (our modules, fsspec, aiohttp)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_urls(super().format(record))


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors into one red line on stderr and their exit code."""
    try:
        yield
    except ResnetCliError as exc:
        if state["debug"]:
            raise
        print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if state["debug"]:
            raise
        print_error("interrupted")
        raise typer.Exit(130) from None


class FailureReporter:
    """The `on_failure` callback of every command: one `error: PATH: reason` line on stderr
    for each input that cannot be read, counted for the exit code."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, error: ImageError) -> None:
        self.count += 1
        print_error(f"{error.path}: {error.reason}")

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURE if self.count else EXIT_OK


def read_inputs(inputs: list[str] | None, *, recursive: bool) -> list[str]:
    """The image paths named by INPUTS, or read from stdin when none are given."""
    if not inputs:
        if sys.stdin is None or sys.stdin.isatty():
            raise NoInputsError("No inputs: give image files, folders or patterns, "
                                "or pipe paths on stdin.")
        inputs = ["-"]
    return collect_named_inputs(inputs, recursive=recursive)


def collect_named_inputs(inputs: list[str], *, recursive: bool) -> list[str]:
    """The image paths named by `inputs`; a folder or pattern that holds no image gets a
    warning line."""
    from resnet_cli.images import collect_inputs

    return collect_inputs(inputs, recursive=recursive,
                          on_empty=lambda arg: print_warning(f"{arg}: no images"))
