"""Everything that is shown or written: Rich tables, JSON/JSONL/CSV, progress bars.

Results go to stdout (or a file); progress, warnings and errors go to stderr.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from resnet_cli.results import ClassifyResult


class OutputFormat(str, Enum):
    """Result formats."""

    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


def make_console(*, stderr: bool = False, file: TextIO | None = None) -> Console:
    """A Console built at call time (so tests and pipes get the right width and colours)."""
    # stderr carries one-line messages: never wrap them at the terminal width.
    return Console(stderr=stderr, file=file, highlight=False, soft_wrap=stderr)


@contextmanager
def progress_bar(*, total: int, desc: str, enabled: bool = True, unit: str = "it") -> Iterator[Any]:
    """A tqdm bar on stderr; hidden when disabled or when stderr is not a terminal."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
              disable=None if enabled else True, leave=False) as bar:
        yield bar


def classify_record(result: ClassifyResult) -> dict[str, Any]:
    """The JSON object for one classify result."""
    if not result.ok:
        return {"path": result.path, "error": result.error}
    return {"path": result.path, "predictions": [
        {"rank": p.rank, "index": p.index, "wnid": p.wnid, "label": p.label,
         "probability": p.probability} for p in result.predictions]}


def write_classify(results: Iterable[ClassifyResult], fmt: OutputFormat, out: TextIO) -> None:
    """Stream results to `out` as JSON, JSON Lines or CSV, flushing after each record."""
    if fmt is OutputFormat.jsonl:
        for result in results:
            out.write(json.dumps(classify_record(result)) + "\n")
            out.flush()
    elif fmt is OutputFormat.json:
        out.write("[")
        for n, result in enumerate(results):
            out.write(("," if n else "") + "\n  " + json.dumps(classify_record(result)))
        out.write("\n]\n")
    elif fmt is OutputFormat.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["path", "rank", "index", "wnid", "label", "probability", "error"])
        for result in results:
            if not result.ok:
                writer.writerow([result.path, "", "", "", "", "", result.error])
            for p in result.predictions:
                writer.writerow([result.path, p.rank, p.index, p.wnid or "", p.label,
                                 f"{p.probability:.6g}", ""])
            out.flush()
    else:
        raise ValueError(f"write_classify does not write {fmt.value}")


def render_classify_table(results: Iterable[ClassifyResult], console: Console) -> None:
    """A table with one row per (image, rank); failed images are left out (errors go to stderr)."""
    table = Table(show_lines=False)
    table.add_column("file", overflow="fold")
    table.add_column("#", justify="right")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for result in results:
        for p in result.predictions:
            table.add_row(result.path if p.rank == 1 else "", str(p.rank), p.label,
                          f"{p.probability:.4f}", end_section=p.rank == len(result.predictions))
    if table.row_count:
        console.print(table)
