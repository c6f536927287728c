"""What `resnet evaluate` shows: the evaluation report (Rich tables) and its JSON form."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from resnet_cli.results import Evaluation

CONFUSION_MAX_CLASSES = 20  # wider matrices are left to --format json


def render_evaluation(result: Evaluation, console: Console) -> None:
    """Summary, per-class scores, the confusion matrix (up to 20 classes) and mistakes."""
    top5 = f"  top-5 {result.top5:.4f}" if result.top5 is not None else ""
    console.print(f"{result.model} on {result.dataset}: {result.images} images  "
                  f"top-1 {result.top1:.4f}{top5}")
    scores = Table(title="per class")
    for name, justify in (("class", "left"), ("images", "right"), ("precision", "right"),
                          ("recall", "right"), ("f1", "right")):
        scores.add_column(name, justify=justify)  # type: ignore[arg-type]
    for c in result.classes:
        scores.add_row(c.name, str(c.support), f"{c.precision:.4f}", f"{c.recall:.4f}",
                       f"{c.f1:.4f}")
    console.print(scores)
    if len(result.columns) <= CONFUSION_MAX_CLASSES + 1:
        matrix = Table(title="confusion matrix (rows: true, columns: predicted)")
        matrix.add_column("")
        for name in result.columns:
            matrix.add_column(name, justify="right")
        for c, row in zip(result.classes, result.confusion, strict=True):
            matrix.add_row(c.name, *(str(v) for v in row))
        console.print(matrix)
    else:
        console.print(f"confusion matrix: {len(result.classes)} classes, see --format json")
    if result.mistakes:
        wrong = Table(title=f"misclassified: {len(result.mistakes)} of {result.mistake_count} "
                            "shown, most confident first")
        wrong.add_column("file", overflow="fold")
        wrong.add_column("true")
        wrong.add_column("predicted")
        wrong.add_column("probability", justify="right")
        for m in result.mistakes:
            wrong.add_row(m.path, m.true_label, m.predicted_label, f"{m.probability:.4f}")
        console.print(wrong)


def write_evaluation_json(result: Evaluation, out: TextIO) -> None:
    """The evaluation as one JSON document."""
    json.dump(result.to_dict(), out, indent=2)
    out.write("\n")
