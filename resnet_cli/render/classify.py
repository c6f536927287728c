"""What `resnet classify` shows: a Rich table, or JSON / JSON Lines / CSV records."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from resnet_cli.render import make_console
from resnet_cli.results import ClassifyResult


class OutputFormat(str, Enum):
    """Result formats."""

    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


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


def emit_classify(results: Iterable[ClassifyResult], fmt: OutputFormat,
                  output: Path | None) -> None:
    """Show results as a table on stdout, or write them as `fmt` to stdout or (atomically) to
    `output`."""
    from resnet_cli.outputs import atomic_open

    if fmt is OutputFormat.table:
        render_classify_table(results, make_console())
    elif output is None:
        write_classify(results, fmt, sys.stdout)
    else:
        with atomic_open(output, newline="") as handle:
            write_classify(results, fmt, handle)
