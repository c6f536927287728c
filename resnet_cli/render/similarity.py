"""What index, search, duplicates and audit show: Rich tables, JSON, CSV, lines and pages."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from resnet_cli.outputs import atomic_open, make_folder
from resnet_cli.render import make_console
from resnet_cli.render.findings import Section, Tile, build_page, write_page

if TYPE_CHECKING:
    from rich.console import Console

    from resnet_cli.similarity.records import (
        AuditResult,
        DuplicatesResult,
        IndexSummary,
        SearchHit,
    )

AUDIT_JSON, LABEL_CSV, AUDIT_PAGE = "audit.json", "label_issues.csv", "index.html"


class ListFormat(str, Enum):
    """Formats of search and duplicates results."""

    table = "table"
    json = "json"
    csv = "csv"


def index_line(summary: IndexSummary) -> str:
    failed = f", {summary.failed} unreadable" if summary.failed else ""
    return (f"{summary.path}: {summary.rows} rows of {summary.dim} ({summary.added} added"
            f"{failed}); {summary.model}")


def audit_line(result: AuditResult, folder: Path) -> str:
    """What audit found, in a few lines, and where it wrote it."""
    small = [c.name for c in result.classes if c.underrepresented]
    return "\n".join([
        f"{result.images} images in {len(result.classes)} classes ({result.model}); "
        f"out-of-sample accuracy {result.cv_accuracy:.1%}",
        f"  likely label errors: {len(result.label_issues)}",
        f"  copies / near-duplicate groups: "
        f"{sum(g.kind == 'copy' for g in result.duplicates)} / "
        f"{sum(g.kind == 'near' for g in result.duplicates)}",
        f"  leaks into the test set: {len(result.leaks)}"
        + ("" if result.test_dir else " (no --test)"),
        f"  outliers: {len(result.outliers)}; unreadable: {len(result.unreadable)}",
        f"  underrepresented classes: {', '.join(small) or 'none'}; overlapping pairs: "
        f"{len(result.overlaps)}",
        f"wrote {folder / AUDIT_JSON}, {folder / LABEL_CSV}, {folder / AUDIT_PAGE}"])


def write_search(hits: Sequence[SearchHit], fmt: ListFormat, out: TextIO,
                 console: Console | None = None) -> None:
    """Search results as JSON (a list, per query its neighbours, nearest first), CSV (query,
    rank, path, similarity) or a table per query."""
    if fmt is ListFormat.json:
        out.write(json.dumps([h.to_dict() for h in hits], indent=2) + "\n")
    elif fmt is ListFormat.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["query", "rank", "path", "similarity"])
        for hit in hits:
            for rank, n in enumerate(hit.neighbors, 1):
                writer.writerow([hit.path, rank, n.path, f"{n.similarity:.6f}"])
    else:
        from rich.table import Table

        console = console or make_console()
        for hit in hits:
            table = Table(title=hit.path, title_justify="left")
            table.add_column("#", justify="right")
            table.add_column("path")
            table.add_column("similarity", justify="right")
            for rank, n in enumerate(hit.neighbors, 1):
                table.add_row(str(rank), n.path, f"{n.similarity:.4f}")
            console.print(table)


def write_duplicates(result: DuplicatesResult, fmt: ListFormat, out: TextIO,
                     console: Console | None = None) -> None:
    """Groups as JSON (a list of {paths, kind, similarity}), CSV (group, kind, similarity,
    path; the representative first) or a table."""
    if fmt is ListFormat.json:
        out.write(json.dumps([g.to_dict() for g in result.groups], indent=2) + "\n")
    elif fmt is ListFormat.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["group", "kind", "similarity", "path"])
        for number, group in enumerate(result.groups, 1):
            for path in group.paths:
                writer.writerow([number, group.kind, f"{group.similarity:.6f}", path])
    else:
        from rich.table import Table

        console = console or make_console()
        table = Table(title=f"{len(result.groups)} groups among {result.inputs} images",
                      title_justify="left")
        for name in ("#", "kind", "similarity", "paths (representative first)"):
            table.add_column(name, justify="right" if name in ("#", "similarity") else "left")
        for number, group in enumerate(result.groups, 1):
            table.add_row(str(number), group.kind, f"{group.similarity:.4f}",
                          "\n".join(group.paths))
        console.print(table)


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """One path per line, atomically (the removal list)."""
    with atomic_open(path, newline="\n") as handle:
        handle.writelines(line + "\n" for line in lines)


def search_page(hits: Sequence[SearchHit], index: str) -> str:
    rows = tuple((Tile(h.path, ("query",), lead=True),
                  *(Tile(n.path, (f"similarity {n.similarity:.4f}",)) for n in h.neighbors))
                 for h in hits)
    return build_page("resnet search", f"queries against {index}",
                      [(str(len(hits)), "queries")],
                      [Section("results", "Nearest images", "Each query (outlined), then its "
                               "nearest indexed images, nearest first.", rows)])


def duplicates_page(result: DuplicatesResult) -> str:
    def rows(kind: str) -> tuple[tuple[Tile, ...], ...]:
        return tuple(tuple(Tile(p, ("representative",) if i == 0 else (), lead=i == 0)
                           for i, p in enumerate(g.paths))
                     for g in result.groups if g.kind == kind)

    near = ("not searched (random weights or --threshold none)" if result.threshold is None
            else f"cosine similarity of features at least {result.threshold}")
    return build_page(
        "resnet duplicates", f"{result.inputs} images",
        [(str(len(result.groups)), "groups"), (str(len(result.unreadable)), "unreadable")],
        [Section("copies", "Copies", f"The same picture: perceptual hashes at most "
                 f"{result.copy_bits} of 64 bits apart from the representative (outlined).",
                 rows("copy")),
         Section("near", "Near duplicates", f"{near}; every member is within it of the "
                 "representative.", rows("near"))])


def write_audit(result: AuditResult, folder: Path) -> list[Path]:
    """OUT/audit.json, OUT/label_issues.csv and OUT/index.html, each atomically."""
    make_folder(folder)
    written = [folder / AUDIT_JSON, folder / LABEL_CSV, folder / AUDIT_PAGE]
    with atomic_open(written[0]) as handle:
        handle.write(json.dumps(result.to_dict(), indent=2) + "\n")
    with atomic_open(written[1], newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", "suggested", "score"])
        for issue in result.label_issues:
            writer.writerow([issue.path, issue.label, issue.suggested, f"{issue.score:.6f}"])
    write_page(written[2], audit_page(result))
    return written


def audit_page(result: AuditResult) -> str:
    """The audit as one self-contained page: each finding beside its neighbours."""
    def beside(path: str) -> tuple[Tile, ...]:
        return tuple(Tile(n.path, (f"{result.labels.get(n.path, '')} "
                                   f"{n.similarity:.3f}",)) for n in result.neighbors.get(
                                       path, ()))

    issues = tuple((Tile(i.path, (f"labelled {i.label}", f"score {i.score:.2g}"),
                         bold=f"suggested {i.suggested}", lead=True), *beside(i.path))
                   for i in result.label_issues)
    dupes = tuple(tuple(Tile(p, (g.kind,) if k == 0 else (), lead=k == 0)
                        for k, p in enumerate(g.paths)) for g in result.duplicates)
    leaks = tuple((Tile(leak.paths[0], ("training",), lead=True),
                   Tile(leak.paths[1], (f"test, {leak.kind} {leak.similarity:.3f}",)))
                  for leak in result.leaks)
    outliers = tuple((Tile(o.path, (f"distance {o.score:.3f}",), lead=True), *beside(o.path))
                     for o in result.outliers)
    small = [c.name for c in result.classes if c.underrepresented]
    overlap = "; ".join(f"{o.classes[0]} / {o.classes[1]} ({o.examples} images)"
                        for o in result.overlaps) or "none"
    return build_page(
        "resnet audit", f"{result.data_dir}: {result.images} images in "
        f"{len(result.classes)} classes; {result.model}",
        [(str(len(result.label_issues)), "likely label errors"),
         (str(len(result.duplicates)), "duplicate groups"), (str(len(result.leaks)), "leaks"),
         (str(len(result.outliers)), "outliers"), (str(len(result.unreadable)), "unreadable"),
         (f"{result.cv_accuracy:.1%}", "out-of-sample accuracy")],
        [Section("label-issues", "Likely label errors", "Ranked by cleanlab from K-fold "
                 "out-of-sample probabilities; the image (outlined), then its nearest "
                 "neighbours with their labels.", issues),
         Section("duplicates", "Copies and near duplicates", "Representative outlined.", dupes),
         Section("leaks", "Leaks into the test set", "A training image and its copy or near "
                 "duplicate among the test images.", leaks),
         Section("outliers", "Outliers", "Far from every neighbour (mean cosine distance to "
                 f"the nearest 5). Underrepresented classes: {', '.join(small) or 'none'}. "
                 f"Overlapping classes: {overlap}.", outliers),
         Section("unreadable", "Unreadable files", "; ".join(
             f"{u.path}: {u.error}" for u in result.unreadable) or "None.", ())])
