"""The Keras callback of `resnet finetune`: a progress bar per epoch, then the epoch's
checkpoint and history row through the run's `RunBook`."""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from typing import Any

from resnet_cli.training.options import Phase
from resnet_cli.training.run_folder import EpochRecord, RunBook


def epoch_callback(book: RunBook, phase: Phase, steps: int, *, progress: bool) -> Any:
    """A Keras callback: a tqdm bar per epoch (Keras' own logging stays off), then the
    checkpoint, history and `on_epoch` through `book.epoch_done`."""
    import keras

    from resnet_cli.render import progress_bar

    class EpochCallback(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._stack = ExitStack()
            self._bar: Any = None
            self._started = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._started = time.perf_counter()
            self._bar = self._stack.enter_context(progress_bar(
                total=steps, desc=f"epoch {epoch + 1}/{book.total_epochs}",
                enabled=progress, unit="step"))

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if self._bar is None or self._bar.disable:
                return
            self._bar.update(1)
            if logs:
                self._bar.set_postfix(loss=f"{float(logs['loss']):.4f}",
                                      acc=f"{float(logs['accuracy']):.4f}", refresh=False)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self._stack.close()
            logs = logs or {}
            record = EpochRecord(
                epoch=epoch + 1, phase=phase.number,
                lr=float(self.model.optimizer.learning_rate),
                loss=float(logs.get("loss", math.nan)),
                accuracy=float(logs.get("accuracy", math.nan)),
                val_loss=float(logs["val_loss"]) if "val_loss" in logs else None,
                val_accuracy=float(logs["val_accuracy"]) if "val_accuracy" in logs else None,
                seconds=time.perf_counter() - self._started)
            book.epoch_done(self.model, record)

        def on_train_end(self, logs: Any = None) -> None:
            self._stack.close()

    return EpochCallback()
