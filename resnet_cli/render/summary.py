"""What `resnet summary` shows: tables of the model, its stages, layers and classes, or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.table import Table

if TYPE_CHECKING:
    from rich.console import Console

    from resnet_cli.summary import ModelSummary, Shape


def format_shape(shape: Shape | None) -> str:
    """(None, 7, 7, 2048) -> "7 x 7 x 2048" (the batch dimension left out)."""
    if shape is None:
        return "?"
    return " x ".join("?" if d is None else str(d) for d in shape[1:])


def format_count(value: int | None, unit: str = "") -> str:
    """25636712 -> "25.64 M"; None -> "unknown"."""
    if value is None:
        return "unknown"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {suffix}{unit}"
    return f"{value} {unit}".rstrip()


def render_summary(summary: ModelSummary, console: Console) -> None:
    """The summary as Rich tables: overview, stages, then layers and classes when present."""
    console.print(_overview_table(summary))
    console.print(_stages_table(summary))
    if summary.layers is not None:
        console.print(_layers_table(summary))
    if summary.class_names:
        console.print(_classes_table(summary.class_names))


def _overview_table(summary: ModelSummary) -> Table:
    overview = Table(show_header=False, title=f"{summary.model} summary", title_justify="left")
    overview.add_column(style="bold")
    overview.add_column()
    rows = [
        ("model", summary.source),
        ("input shape", format_shape(summary.input_shape) + " (batch first, channels last)"),
        ("output shape", format_shape(summary.output_shape)
         + (f" ({summary.num_classes} classes)" if summary.num_classes else "")),
        ("preprocessing", summary.preprocessing),
        ("parameters", f"{summary.total_params:,}"),
        ("  trainable", f"{summary.trainable_params:,}"),
        ("  non-trainable", f"{summary.non_trainable_params:,}"),
        ("multiply-accumulates", f"{format_count(summary.macs, 'MAC')} per image at "
                                 f"{summary.image_size}x{summary.image_size}"),
        ("weight memory", f"{summary.weight_bytes / 2**20:.1f} MiB"),
        ("ImageNet top-1 / top-5", f"{summary.top1:.1%} / {summary.top5:.1%}: published "
                                   f"figures for {summary.model} with ImageNet weights (Keras "
                                   "documentation), not measured here"),
    ]
    if summary.finetuned:
        rows.insert(1, ("backbone", f"{summary.model}"
                        + (f" (nested model '{summary.backbone}')" if summary.backbone else "")))
    for key, value in rows:
        overview.add_row(key, value)
    return overview


def _stages_table(summary: ModelSummary) -> Table:
    stages = Table(title="stages", title_justify="left")
    for name, justify in (("stage", "left"), ("blocks", "right"), ("output shape", "right"),
                          ("parameters", "right"), ("MACs", "right")):
        stages.add_column(name, justify=justify)  # type: ignore[arg-type]
    for stage in summary.stages:
        stages.add_row(stage.name, str(stage.blocks) if stage.blocks else "",
                       format_shape(stage.output_shape), f"{stage.params:,}",
                       format_count(stage.macs))
    stages.add_row("total", str(sum(s.blocks for s in summary.stages)), "",
                   f"{summary.total_params:,}", format_count(summary.macs), style="bold")
    return stages


def _layers_table(summary: ModelSummary) -> Table:
    table = Table(title="layers (names for extract --layer)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("name", "left"), ("type", "left"), ("output shape", "right"),
                          ("parameters", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for layer in summary.layers or ():
        table.add_row(layer.name, layer.type,
                      format_shape(layer.output_shape).replace(" x ", "x"), f"{layer.params:,}")
    return table


def _classes_table(class_names: tuple[str, ...]) -> Table:
    classes = Table(title="classes", title_justify="left")
    classes.add_column("index", justify="right")
    classes.add_column("name")
    for index, name in enumerate(class_names):
        classes.add_row(str(index), name)
    return classes
