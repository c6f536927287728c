"""`curves.png` of a finetune run: loss and accuracy per epoch, training and validation.

Two panels side by side; a dotted vertical line where a phase ends, and the best epoch marked
on both (a shaded band and a ring on its points). matplotlib (Agg) is imported inside the
function that draws, so the command line starts as fast without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

from resnet_cli.outputs import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from resnet_cli.results import EpochRecord

CURVES_NAME = "curves.png"
DPI = 100
TRAIN_COLOUR = "#1f77b4"
VAL_COLOUR = "#d62728"
BEST_COLOUR = "#2ca02c"
MAX_EPOCH_TICKS = 16  # a tick on every epoch up to this many
LOG_SCALE_RATIO = 20  # loss on a log axis when its largest value is this many times the least


def best_epoch(history: Sequence[EpochRecord]) -> int | None:
    """The epoch with the highest validation accuracy (ties: the lower validation loss, then
    the earlier epoch), or the last epoch when there was no validation; None for no epochs."""
    scored = [r for r in history if r.val_accuracy is not None]
    if not scored:
        return history[-1].epoch if history else None
    best = max(scored, key=lambda r: (r.val_accuracy, -(r.val_loss if r.val_loss is not None
                                                         else float("inf")), -r.epoch))
    return best.epoch


def phase_boundaries(history: Sequence[EpochRecord]) -> list[int]:
    """The epochs after which a new phase starts (epoch N: the boundary is between N and
    N + 1)."""
    return [previous.epoch for previous, record in pairwise(history)
            if record.phase != previous.phase]


def draw_curves(history: Sequence[EpochRecord], path: Path, *,
                phase_boundaries: Sequence[int] = (), best_epoch: int | None = None) -> Path:
    """Draw training and validation loss (left) and accuracy (right) per epoch into `path`
    (PNG, written atomically) and return it.

    Args:
        history: one record per epoch, in order; validation values may be None.
        phase_boundaries: epochs after which a new phase starts (drawn between N and N + 1).
        best_epoch: the epoch to highlight, if any.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r.epoch for r in history]
    fig = Figure(figsize=(11, 4.2), dpi=DPI, facecolor="white", layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    marker = "o" if len(epochs) <= 40 else None  # points read well up to a few dozen epochs
    panels = ((loss_ax, "loss", [r.loss for r in history], [r.val_loss for r in history]),
              (acc_ax, "accuracy", [r.accuracy for r in history],
               [r.val_accuracy for r in history]))
    for ax, name, train, val in panels:
        _draw_panel(ax, name, epochs, train, val, marker=marker,
                    phase_boundaries=phase_boundaries, best_epoch=best_epoch)
    acc_ax.set_ylim(bottom=min(0.0, acc_ax.get_ylim()[0]), top=1.02)
    _scale_loss_axis(loss_ax, history)
    if best_epoch is not None:
        fig.suptitle(_best_line(history, best_epoch), fontsize=10, color="#333333")
    handles, labels = acc_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9,
               frameon=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _draw_panel(ax: Axes, name: str, epochs: list[int], train: Sequence[float],
                val: Sequence[float | None], *, marker: str | None,
                phase_boundaries: Sequence[int], best_epoch: int | None) -> None:
    """One panel: the training and validation curves of `name`, the phase boundaries and the
    best epoch."""
    from matplotlib.ticker import MaxNLocator

    ax.plot(epochs, train, color=TRAIN_COLOUR, marker=marker, markersize=4, linewidth=1.8,
            label="training")
    if any(v is not None for v in val):
        ax.plot(epochs, [float("nan") if v is None else v for v in val], color=VAL_COLOUR,
                marker=marker, markersize=4, linewidth=1.8, linestyle="--",
                label="validation")
    for number, boundary in enumerate(phase_boundaries, start=2):
        ax.axvline(boundary + 0.5, color="#777777", linestyle=":", linewidth=1.4,
                   label=f"phase {number} starts (epoch {boundary + 1})")
    if best_epoch is not None and best_epoch in epochs:
        row = epochs.index(best_epoch)
        if len(epochs) > 1:
            ax.axvspan(best_epoch - 0.3, best_epoch + 0.3, color=BEST_COLOUR, alpha=0.12,
                       linewidth=0)
        best_value = val[row]
        shown = best_value if best_value is not None else train[row]
        ax.plot([best_epoch], [shown], linestyle="none", marker="o", markersize=11,
                markerfacecolor="none", markeredgecolor=BEST_COLOUR, markeredgewidth=2,
                label=f"best epoch ({best_epoch})")
    ax.set_title(name, fontsize=12)
    ax.set_xlabel("epoch")
    ax.set_xlim(0.5, max(epochs, default=1) + 0.5)
    if len(epochs) <= MAX_EPOCH_TICKS:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _scale_loss_axis(loss_ax: Axes, history: Sequence[EpochRecord]) -> None:
    """A log axis when the losses span more than LOG_SCALE_RATIO, else one from 0."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    losses = [v for r in history for v in (r.loss, r.val_loss) if v is not None and v > 0]
    if losses and max(losses) > LOG_SCALE_RATIO * min(losses):
        loss_ax.set_yscale("log")  # one diverged epoch would flatten all the others
        loss_ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
        if max(losses) <= 100 * min(losses):  # up to two decades: room for 2 and 5 too
            loss_ax.yaxis.set_minor_formatter(FuncFormatter(_two_and_five))
        else:
            loss_ax.yaxis.set_minor_formatter(NullFormatter())
    elif losses:
        loss_ax.set_ylim(0.0, max(losses) * 1.08)


def _plain_number(value: float, _: object = None) -> str:
    return f"{value:g}"


def _two_and_five(value: float, _: object = None) -> str:
    """Labels for the minor ticks of a log axis: 2 and 5 times a power of ten only."""
    if value <= 0:
        return ""
    leading = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if round(leading, 6) in (2.0, 5.0) else ""


def _best_line(history: Sequence[EpochRecord], epoch: int) -> str:
    record = next(r for r in history if r.epoch == epoch)
    if record.val_accuracy is None:
        return f"no validation: last epoch {epoch}, training accuracy {record.accuracy:.4f}"
    loss = "" if record.val_loss is None else f", validation loss {record.val_loss:.4f}"
    return f"best epoch {epoch}: validation accuracy {record.val_accuracy:.4f}{loss}"
