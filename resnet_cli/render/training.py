"""What `resnet finetune` shows: a line per epoch on stderr, then the table of epochs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from resnet_cli.results import EpochRecord, FinetuneResult


def epoch_line(record: EpochRecord, total: int) -> str:
    """One line per epoch, e.g. `epoch 3/10 (phase 1) loss 0.4123 acc 0.8750 ...`."""
    text = (f"epoch {record.epoch}/{total} (phase {record.phase}) loss {record.loss:.4f} "
            f"acc {record.accuracy:.4f}")
    if record.val_loss is not None and record.val_accuracy is not None:
        text += f" val_loss {record.val_loss:.4f} val_acc {record.val_accuracy:.4f}"
    return text + f" lr {record.lr:.2e} {record.seconds:.1f}s"


def render_finetune(result: FinetuneResult, console: Console) -> None:
    """The table of epochs, then where the model is, how it scored and where its training
    curves are."""
    table = Table(title="training history")
    for name in ("epoch", "phase", "lr", "loss", "acc", "val_loss", "val_acc", "seconds"):
        table.add_column(name, justify="right")
    for r in result.history:
        table.add_row(str(r.epoch), str(r.phase), f"{r.lr:.2e}", f"{r.loss:.4f}",
                      f"{r.accuracy:.4f}", "-" if r.val_loss is None else f"{r.val_loss:.4f}",
                      "-" if r.val_accuracy is None else f"{r.val_accuracy:.4f}",
                      f"{r.seconds:.1f}")
    console.print(table)
    console.print(f"model: {result.model_path}  ({len(result.class_names)} classes, "
                  f"{result.train_images} training / {result.val_images} validation images, "
                  f"{result.seconds:.0f}s of training)")
    if result.metrics is not None:
        m = result.metrics
        top5 = f", top-5 {m.top5:.4f}" if m.top5 is not None else ""
        console.print(f"validation accuracy {m.top1:.4f}{top5}")
    if result.curves_path is not None:
        console.print(f"curves: {result.curves_path}", markup=False)
    if result.logs_dir is not None:
        console.print(f"tensorboard: {result.logs_dir}", markup=False)
    if result.mlflow_run is not None:
        console.print(f"mlflow: run {result.mlflow_run}", markup=False)
