"""Everything that is shown or written: one module per command group, and what they share.

Results go to stdout (or a file); progress, warnings and errors go to stderr. Library modules
return data; these modules turn it into tables, lines, JSON and CSV.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, Protocol, TextIO, TypeVar

from rich.console import Console


def make_console(*, stderr: bool = False, file: TextIO | None = None) -> Console:
    """A Console built at call time (so tests and pipes get the right width and colours)."""
    # stderr carries one-line messages: never wrap them at the terminal width.
    return Console(stderr=stderr, file=file, highlight=False, soft_wrap=stderr)


class Reportable(Protocol):
    """A result with a JSON form (the dataclasses of `summary`, `benchmark`, ...)."""

    def to_dict(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Reportable)


def emit(result: R, render: Callable[[R, Console], None], *, as_json: bool) -> None:
    """`result` on stdout: its `to_dict()` as JSON, or drawn by `render` as Rich tables."""
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        render(result, make_console())
