"""The epochs of one phase: train, recompute BatchNorm statistics, validate, checkpoint.

Each epoch shows a progress bar of its steps (loss and accuracy so far), then one of the
precise-BatchNorm batches when BatchNorm trains, and ends with one `EpochRecord` through the
run's `RunBook` (checkpoint, history.csv, the `on_epoch` line).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from resnet_cli.progress import progress_bar
from resnet_cli.results import EpochRecord
from resnet_cli.training.engine import PRECISE_BN_BATCHES, Engine, Scores, scores_of
from resnet_cli.training.options import Phase
from resnet_cli.training.run_folder import RunBook


@dataclass(frozen=True)
class PhaseData:
    """What the epochs of a phase read: the training batches of all its epochs back to back,
    `steps` per epoch; the validation set; and, when BatchNorm trains, the un-augmented
    training batches its statistics are recomputed on (else None)."""

    train: Any
    steps: int
    val: Any | None
    batch_norm: Any | None


@dataclass
class EarlyStopping:
    """Stop a phase when its validation accuracy has not improved for `patience` epochs,
    and keep the weights of the best epoch of the run (ties go to the lower validation
    loss). The decision uses scores reduced over all workers, so every worker stops at the
    same epoch."""

    patience: int
    best_epoch: int = 0
    best: tuple[float, float] = (-math.inf, -math.inf)  # (accuracy, -loss)
    weights: list[Any] | None = None
    stopped: list[int] = field(default_factory=list)  # epochs at which a phase stopped
    phase_start: int = 0

    def start_phase(self, first: int) -> None:
        """A new phase starts after epoch `first`: its patience counts from there."""
        self.phase_start = first

    def update(self, record: EpochRecord, model: Any) -> bool:
        """Note the epoch's scores; True when the phase should stop."""
        if record.val_accuracy is None or record.val_loss is None:
            return False
        score = (record.val_accuracy, -record.val_loss)
        if score > self.best:
            self.best, self.best_epoch = score, record.epoch
            self.weights = model.get_weights()
        if record.epoch - max(self.best_epoch, self.phase_start) >= self.patience:
            self.stopped.append(record.epoch)
            return True
        return False

    def restore(self, model: Any, last_epoch: int) -> bool:
        """Put the best epoch's weights back; True if they differ from the last epoch's."""
        if self.weights is None or self.best_epoch == last_epoch:
            return False
        model.set_weights(self.weights)
        return True

    def summary(self, *, restored: bool) -> dict[str, Any]:
        """The entry of config.json."""
        return {"patience": self.patience, "best_epoch": self.best_epoch or None,
                "best_val_accuracy": self.best[0] if self.best_epoch else None,
                "stopped_at_epochs": self.stopped, "restored_best_weights": restored}


def run_epochs(engine: Engine, book: RunBook, phase: Phase, data: PhaseData, *, first: int,
               progress: bool, stopping: EarlyStopping | None = None) -> int:
    """Train epochs `first + 1` to `phase.end`, or until `stopping` says so; returns the
    last epoch run."""
    iterator = engine.iterate(data.train)
    if stopping is not None:
        stopping.start_phase(first)
    last = first
    for epoch in range(first, phase.end):
        started = time.perf_counter()
        train = _train_epoch(engine, iterator, data.steps,
                             desc=f"epoch {epoch + 1}/{book.total_epochs}", progress=progress)
        if data.batch_norm is not None:
            with progress_bar(total=PRECISE_BN_BATCHES, desc="BatchNorm statistics",
                              enabled=progress, unit="batch") as bar:
                engine.recompute_batch_norm(data.batch_norm, bar=bar)
        val = engine.evaluate(data.val) if data.val is not None else None
        record = EpochRecord(
            epoch=epoch + 1, phase=phase.number,
            lr=float(engine.model.optimizer.learning_rate),
            loss=train.loss, accuracy=train.accuracy,
            val_loss=val.loss if val else None, val_accuracy=val.accuracy if val else None,
            seconds=time.perf_counter() - started)
        book.epoch_done(engine.model, record)
        last = epoch + 1
        if stopping is not None and stopping.update(record, engine.model):
            break
    return last


def _train_epoch(engine: Engine, iterator: Any, steps: int, *, desc: str,
                 progress: bool) -> Scores:
    totals = [0.0, 0.0, 0.0, 0.0]
    with progress_bar(total=steps, desc=desc, enabled=progress, unit="step") as bar:
        for _ in range(steps):
            for i, value in enumerate(engine.train_step(iterator)):
                totals[i] += value
            if not bar.disable:
                now = scores_of(totals)
                bar.set_postfix(loss=f"{now.loss:.4f}", acc=f"{now.accuracy:.4f}",
                                refresh=False)
            bar.update(1)
    return scores_of(totals)
