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
from typing import TYPE_CHECKING, Any

from resnet_cli.datasets import ClassFolders
from resnet_cli.errors import DatasetError, ImageError, UsageError
from resnet_cli.images import ResizeMode
from resnet_cli.inference import predict_paths
from resnet_cli.labels import ClassLabel, close_classes, find_class
from resnet_cli.results import ClassScores, Evaluation, Mistake

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.loaded import FailureHandler, LoadedModel

OTHER = "(other)"  # confusion-matrix column for predictions outside the dataset's classes


def match_classes(folder_names: Sequence[str], labels: Sequence[ClassLabel], *, source: str
                  ) -> list[int]:
    """The model output index of each dataset class folder.

    Folders match a class by the one rule of `labels.find_class`: its name (case-insensitive,
    spaces and underscores alike) or its WordNet id.

    Raises:
        DatasetError: a folder names no class of the model (with close names, if any).
    """
    indices, unknown = [], []
    for name in folder_names:
        index = find_class(name, labels)
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
        close = close_classes(unknown[0], labels)
        hint = f" Did you mean {', '.join(close)} for {unknown[0]}?" if close else ""
        raise DatasetError(f"Class folder{'s' if len(unknown) > 1 else ''} {shown} "
                           f"match{'' if len(unknown) > 1 else 'es'} no class of {source} "
                           f"(it knows: {known}).{hint}")
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
    resize: ResizeMode | None = None,
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
                      image_size=loaded.image_size, resize=loaded.resize_or_own(resize).value,
                      device=loaded.device, **metrics)
