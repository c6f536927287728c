"""`resnet evaluate`: accuracy, per-class scores, confusion matrix and mistakes on a
folder-per-class dataset.

Images go through classify's pipeline (`inference.Predictor` over `iter_batches`), so the
numbers are those of `resnet classify` on the same files. Folder names are matched to the
model's classes: a finetuned model's own class names, or, for an ImageNet model, WordNet ids
(n01440764) or ImageNet class names.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resnet_cli.datasets import ClassFolders
from resnet_cli.errors import DatasetError, ImageError, UsageError
from resnet_cli.images import ResizeMode
from resnet_cli.inference import FailureHandler, predict_paths
from resnet_cli.labels import ClassLabel

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.models import LoadedModel

OTHER = "(other)"  # confusion-matrix column for predictions outside the dataset's classes


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


def match_classes(folder_names: Sequence[str], labels: Sequence[ClassLabel], *, source: str
                  ) -> list[int]:
    """The model output index of each dataset class folder.

    Folders match a class by its name, or by its WordNet id for ImageNet models; ImageNet
    names also match case-insensitively with spaces for underscores.

    Raises:
        DatasetError: a folder names no class of the model.
    """
    by_key: dict[str, int] = {}
    for label in labels:
        by_key.setdefault(label.name, label.index)
        if label.wnid:
            by_key.setdefault(label.wnid, label.index)
            by_key.setdefault(label.name.lower().replace(" ", "_"), label.index)
    indices, unknown = [], []
    for name in folder_names:
        index = by_key.get(name)
        if index is None and any(label.wnid for label in labels):
            index = by_key.get(name.lower().replace(" ", "_"))
        if index is None:
            unknown.append(name)
        else:
            indices.append(index)
    if unknown:
        imagenet = any(label.wnid for label in labels)
        known = ("ImageNet WordNet ids (e.g. n01440764) or class names" if imagenet
                 else ", ".join(label.name for label in labels[:10])
                 + (", ..." if len(labels) > 10 else ""))
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5
                                         else "")
        raise DatasetError(f"Class folder{'s' if len(unknown) > 1 else ''} {shown} "
                           f"match{'' if len(unknown) > 1 else 'es'} no class of {source} "
                           f"(it knows: {known}).")
    return indices


def compute_metrics(
    true: Sequence[int],
    probs: np.ndarray,
    paths: Sequence[str],
    *,
    class_names: Sequence[str],
    class_outputs: Sequence[int],
    labels: Sequence[ClassLabel],
    max_mistakes: int = 10,
) -> dict[str, Any]:
    """Accuracy, per-class scores, confusion matrix and mistakes from model outputs.

    Args:
        true: dataset class index of each row of `probs`.
        probs: model outputs, one row per image.
        class_names: the dataset's classes; `class_outputs[i]` is the model output of class i.
        labels: the model's classes, to name predictions outside the dataset's.
        max_mistakes: how many mistakes to keep (the most confident first).
    """
    import numpy as np

    outputs = np.asarray(class_outputs)
    target = outputs[np.asarray(true, dtype=np.int64)] if len(true) else np.zeros(0, np.int64)
    count = len(target)
    predicted = probs.argmax(axis=1) if count else np.zeros(0, np.int64)
    correct = predicted == target
    top5 = None
    if len(labels) >= 5:
        best5 = np.argsort(-probs, axis=1, kind="stable")[:, :5] if count else np.zeros((0, 5))
        top5 = float((best5 == target[:, None]).any(axis=1).mean()) if count else 0.0
    column_of = {int(out): i for i, out in enumerate(outputs)}
    columns = list(class_names)
    other = [column_of.get(int(p)) is None for p in predicted]
    if any(other):
        columns.append(OTHER)
    confusion = np.zeros((len(class_names), len(columns)), dtype=np.int64)
    for row, pred, outside in zip(true, predicted, other, strict=True):
        confusion[row, len(class_names) if outside else column_of[int(pred)]] += 1
    scores = []
    for i, name in enumerate(class_names):
        hits = int(confusion[i, i])
        support = int(confusion[i].sum())
        claimed = int((predicted == outputs[i]).sum())
        precision = hits / claimed if claimed else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(ClassScores(name, support, precision, recall, f1))
    wrong = np.flatnonzero(~correct)
    if len(wrong):
        wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")]
    mistakes = tuple(
        Mistake(paths[i], class_names[true[i]], labels[int(predicted[i])].name,
                float(probs[i, predicted[i]]), float(probs[i, outputs[true[i]]]))
        for i in wrong[:max_mistakes])
    return {"images": count, "top1": float(correct.mean()) if count else 0.0, "top5": top5,
            "classes": tuple(scores), "columns": tuple(columns),
            "confusion": tuple(tuple(int(v) for v in row) for row in confusion),
            "mistakes": mistakes, "mistake_count": len(wrong)}


def evaluate_files(
    data: ClassFolders,
    loaded: LoadedModel,
    *,
    batch_size: int = 32,
    resize: ResizeMode = ResizeMode.crop,
    max_mistakes: int = 10,
    progress: bool = True,
    on_failure: FailureHandler | None = None,
) -> Evaluation:
    """Run `loaded` on every image of `data` and score it (unreadable images are left out and
    listed in `failures`).

    Raises:
        UsageError: the model has no classifier, or `max_mistakes` is negative.
        DatasetError: a class folder that is not one of the model's classes.
    """
    import numpy as np

    if max_mistakes < 0:
        raise UsageError(f"--errors must be 0 or more; got {max_mistakes}.")

    if loaded.labels is None:
        raise UsageError("evaluate needs a model with its classifier (a finetuned .keras model "
                         "or an ImageNet model).")
    class_outputs = match_classes(data.class_names, loaded.labels, source=loaded.source)
    started = time.perf_counter()
    rows: list[np.ndarray] = []
    true: list[int] = []
    paths: list[str] = []
    failures: list[ImageError] = []

    def failed(error: ImageError) -> None:
        failures.append(error)
        if on_failure is not None:
            on_failure(error)

    offset = 0
    for batch in predict_paths(data.paths, loaded, batch_size=batch_size, resize=resize,
                               progress=progress, on_failure=failed):
        for position in batch.ok:
            true.append(data.labels[offset + position])
            paths.append(batch.paths[position])
        if batch.ok:
            rows.append(np.asarray(batch.outputs, dtype=np.float32))
        offset += len(batch.paths)
    if not true:
        raise DatasetError(f"None of the {len(data.paths)} images in {data.root} could be read.")
    probs = np.concatenate(rows)
    metrics = compute_metrics(true, probs, paths, class_names=data.class_names,
                              class_outputs=class_outputs, labels=loaded.labels,
                              max_mistakes=max_mistakes)
    return Evaluation(model=loaded.source, dataset=data.root, failures=tuple(failures),
                      seconds=time.perf_counter() - started, architecture=loaded.spec.name,
                      image_size=loaded.image_size, resize=resize.value,
                      device=loaded.device, **metrics)


def card_resize(loaded: LoadedModel) -> ResizeMode:
    """The resize a finetuned model was trained with (from its card), else crop."""
    card = loaded.card
    value = card.extra.get("resize") if card is not None else None
    try:
        return ResizeMode(value) if value else ResizeMode.crop
    except ValueError:
        return ResizeMode.crop
