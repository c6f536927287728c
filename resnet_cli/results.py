"""Plain result records returned by the command logic and consumed by `render`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from resnet_cli.errors import ImageError


@dataclass(frozen=True)
class Prediction:
    """One of the top-k classes for an image."""

    rank: int
    index: int
    wnid: str | None
    label: str
    probability: float


@dataclass(frozen=True)
class ClassifyResult:
    """The outcome for one input: its predictions, or the reason it failed."""

    path: str
    predictions: tuple[Prediction, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall and F1 of one dataset class (0.0 where undefined)."""

    name: str
    support: int
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class Mistake:
    """A misclassified file: its true class, the predicted one and that prediction's
    probability."""

    path: str
    true_label: str
    predicted_label: str
    probability: float
    true_probability: float | None = None  # the probability given to the true class


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate_files` measured. `confusion[i][j]` counts images of `classes[i]`
    predicted as `columns[j]`; `columns` is the dataset's classes, plus `(other)` when some
    prediction fell outside them. `top5` is None for models with fewer than 5 classes."""

    model: str
    dataset: str
    images: int
    top1: float
    top5: float | None
    classes: tuple[ClassScores, ...]
    columns: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    mistakes: tuple[Mistake, ...]  # the most confident ones first, at most `max_mistakes`
    mistake_count: int
    failures: tuple[ImageError, ...] = ()
    seconds: float = 0.0
    # How the images were fed (for the HTML report): the variant, input size, resize, device.
    architecture: str = ""
    image_size: int = 0
    resize: str = ""
    device: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (also `metrics.json` of a finetune run)."""
        return {
            "model": self.model, "dataset": self.dataset, "images": self.images,
            "top1_accuracy": self.top1, "top5_accuracy": self.top5,
            "macro_f1": macro_f1(self.classes),
            "per_class": [{"class": c.name, "support": c.support, "precision": c.precision,
                           "recall": c.recall, "f1": c.f1} for c in self.classes],
            "confusion_matrix": {"rows": [c.name for c in self.classes],
                                 "columns": list(self.columns),
                                 "counts": [list(row) for row in self.confusion]},
            "errors": {"count": self.mistake_count, "shown": [
                {"path": m.path, "true": m.true_label, "predicted": m.predicted_label,
                 "probability": m.probability} for m in self.mistakes]},
            "failed_images": [{"path": f.path, "error": f.reason} for f in self.failures],
            "seconds": self.seconds,
        }


def macro_f1(classes: Sequence[ClassScores]) -> float:
    """Unweighted mean F1 over the classes."""
    return sum(c.f1 for c in classes) / len(classes) if classes else 0.0


@dataclass(frozen=True)
class EpochRecord:
    """One row of history.csv. `epoch` counts from 1 over both phases."""

    epoch: int
    phase: int
    lr: float
    loss: float
    accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float


@dataclass(frozen=True)
class FinetuneResult:
    """A finished run: where it is, what it trained on, how it went."""

    run_dir: str
    model_path: str
    class_names: tuple[str, ...]
    train_images: int
    val_images: int
    skipped: tuple[ImageError, ...]
    history: tuple[EpochRecord, ...]
    metrics: Evaluation | None
    seconds: float  # training time of this invocation (fit calls, checkpoints included)
    resumed_from: int | None = None
    total_epochs: int = 0
    curves_path: str | None = None  # curves.png in the run folder (None on other workers)
    logs_dir: str | None = None  # the TensorBoard event files (None on other workers)
    mlflow_run: str | None = None  # "ID in TRACKING_URI" with --mlflow
