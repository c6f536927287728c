"""The confusion-matrix picture of `resnet evaluate --report`, and its most confused pairs.

Up to 25 classes the picture shows two labelled grids, the counts and each row as a
percentage of its class; beyond that, the most confused (true, predicted) pairs as bars
beside the row-normalised grid without labels. matplotlib (Agg) is imported inside
`draw_confusion`, so the command line starts as fast without it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from resnet_cli.results import Evaluation

GRID_MAX_COLUMNS = 25  # above this, the picture shows the most confused pairs and a bare grid
PAIRS_SHOWN = 20  # most confused pairs in the picture and the page, for many classes
LABEL_CHARS = 18  # class names in the picture are shortened to this many characters
DPI = 100


@dataclass(frozen=True)
class ConfusedPair:
    """Images of class `true` predicted as `predicted`: how many, and the fraction of that
    class's images."""

    true: str
    predicted: str
    count: int
    fraction: float


def confused_pairs(result: Evaluation, *, limit: int = PAIRS_SHOWN) -> list[ConfusedPair]:
    """The off-diagonal cells of the confusion matrix with the most images (ties: the larger
    fraction of the true class, then matrix order), at most `limit`."""
    pairs = []
    for i, (cls, row) in enumerate(zip(result.classes, result.confusion, strict=True)):
        for j, count in enumerate(row):
            if j != i and count:
                pairs.append(ConfusedPair(cls.name, result.columns[j], count,
                                          count / cls.support if cls.support else 0.0))
    pairs.sort(key=lambda p: (-p.count, -p.fraction))
    return pairs[:limit]



def draw_confusion(result: Evaluation) -> bytes:
    """The confusion matrix as PNG bytes: counts and row-normalised grids with class names
    for up to 25 columns; beyond that, the most confused pairs as bars and the row-normalised
    grid without labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = [list(row) for row in result.confusion]
    totals = [sum(row) for row in counts]
    normalised = [[v / t if t else 0.0 for v in row] for row, t in zip(counts, totals,
                                                                       strict=True)]
    rows = [_label(c.name) for c in result.classes]
    columns = [_label(c) for c in result.columns]
    if len(result.columns) <= GRID_MAX_COLUMNS:
        n_rows, n_cols = len(rows), len(columns)
        longest = max((len(name) for name in [*rows, *columns]), default=1)
        cell = 0.42 if n_cols <= 12 else 0.36
        margin = 0.6 + 0.075 * longest  # room for the class names
        panel_w, panel_h = n_cols * cell + margin + 0.9, n_rows * cell + margin + 0.7
        side_by_side = n_cols <= 12
        size = ((2 * panel_w, panel_h) if side_by_side else (panel_w, 2 * panel_h))
        fig = Figure(figsize=(max(size[0], 6.0), max(size[1], 3.2)), dpi=DPI,
                     facecolor="white", layout="constrained")
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2) if side_by_side else fig.subplots(2, 1)
        _grid(left, counts, rows, columns, title="counts", fmt=lambda v: f"{int(v)}",
              vmax=max((max(row) for row in counts), default=1) or 1)
        _grid(right, normalised, rows, columns, title="row-normalised (% of the true class)",
              fmt=lambda v: f"{v * 100:.0f}", vmax=1.0)
    else:
        pairs = confused_pairs(result, limit=PAIRS_SHOWN)
        fig = Figure(figsize=(12.5, 7), dpi=DPI, facecolor="white", layout="constrained")
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2)
        _pairs_chart(left, pairs)
        _bare_grid(right, normalised, len(result.classes))
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def _grid(ax: Axes, values: Sequence[Sequence[float]], rows: Sequence[str],
          columns: Sequence[str], *, title: str, fmt: Any, vmax: float) -> None:
    """A labelled heat map with each non-zero cell's value written in it."""
    ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax, aspect="equal",
              interpolation="nearest")
    size = 9 if len(columns) <= 12 else 7
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if value:
                text = fmt(value)
                if text in ("0", "-0"):
                    text = "<1"  # a row-normalised cell under 0.5 %
                ax.text(j, i, text, ha="center", va="center", fontsize=size,
                        color="white" if value > 0.55 * vmax else "#1a1a1a")
    ax.set_xticks(range(len(columns)), columns, rotation=45 if _long(columns) else 0,
                  ha="right" if _long(columns) else "center", fontsize=size)
    ax.set_yticks(range(len(rows)), rows, fontsize=size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=11)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xticks([x - 0.5 for x in range(1, len(columns))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(rows))], minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)


def _pairs_chart(ax: Axes, pairs: Sequence[ConfusedPair]) -> None:
    """Horizontal bars: images of each (true, predicted) pair, the most confused on top."""
    if not pairs:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    labels = [f"{_label(p.true)} → {_label(p.predicted)}" for p in pairs]
    positions = list(range(len(pairs)))
    ax.barh(positions, [p.count for p in pairs], color="#4a7fb5")
    ax.set_yticks(positions, labels, fontsize=9)
    ax.invert_yaxis()
    for y, p in zip(positions, pairs, strict=True):
        ax.text(p.count, y, f" {p.count} ({p.fraction:.0%})", va="center", fontsize=9)
    ax.set_xlim(0, max(p.count for p in pairs) * 1.25)
    ax.set_xlabel("images (and the fraction of the true class)")
    ax.set_title(f"the {len(pairs)} most confused pairs (true → predicted)", fontsize=11)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _bare_grid(ax: Axes, values: Sequence[Sequence[float]], n_rows: int) -> None:
    """The row-normalised matrix without labels: the diagonal and the hot spots off it."""
    from matplotlib.colors import PowerNorm
    from matplotlib.ticker import MaxNLocator

    # A square-root scale: one image in ten of a class still shows off the diagonal.
    image = ax.imshow(values, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1),
                      aspect="equal", interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="fraction of the true class")
    ax.set_title(f"row-normalised, {n_rows} classes (by their # in the table below)",
                 fontsize=11)
    ax.set_xlabel("predicted (class index)")
    ax.set_ylabel("true (class index)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _label(name: str) -> str:
    """A class name as matplotlib text: shortened, and `$` kept literal (no mathtext)."""
    short = name if len(name) <= LABEL_CHARS else name[:LABEL_CHARS - 1] + "…"
    return short.replace("$", r"\$")


def _long(names: Iterable[str]) -> bool:
    return any(len(name) > 3 for name in names)
