"""`resnet classify`: top-k labels for each image."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from resnet_cli.errors import UsageError
from resnet_cli.images import ResizeMode
from resnet_cli.inference import RunnerFactory, predict_paths
from resnet_cli.labels import ClassLabel
from resnet_cli.loaded import FailureHandler, LoadedModel
from resnet_cli.results import ClassifyResult, Prediction

if TYPE_CHECKING:
    import numpy as np

DEFAULT_TOP_K = 5


def classify_images(
    paths: Sequence[str],
    loaded: LoadedModel,
    *,
    top_k: int | None = None,
    batch_size: int = 32,
    resize: ResizeMode | None = None,
    progress: bool = True,
    on_failure: FailureHandler | None = None,
    runner: RunnerFactory | None = None,
) -> Iterator[ClassifyResult]:
    """Yield one result per path, in input order, batch by batch.

    `top_k` defaults to 5, or all classes of a model that has fewer. An input that cannot be
    read yields a result with its `error` (and goes to `on_failure`). `runner` runs the
    model elsewhere (`cluster.ray_runner`); by default, `loaded` runs here.

    Raises:
        UsageError: the model has no classifier, or `top_k` is out of range.
    """
    labels = loaded.labels
    if labels is None:
        raise UsageError("classify needs a model with its classifier (drop --no-include-top).")
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, len(labels))
    if not 1 <= top_k <= len(labels):
        raise UsageError(f"--top-k must be between 1 and {len(labels)}; got {top_k}.")
    resize = loaded.resize_or_own(resize)  # resolved here, for whichever path runs it
    run = runner(loaded) if runner else functools.partial(predict_paths, loaded=loaded)
    for batch in run(paths, batch_size=batch_size, resize=resize, progress=progress,
                     on_failure=on_failure):
        rows = iter(batch.outputs)
        for position, path in enumerate(batch.paths):
            if position in batch.errors:
                yield ClassifyResult(path=path, error=batch.errors[position].reason)
                continue
            yield ClassifyResult(path=path, predictions=top_predictions(next(rows), labels,
                                                                        top_k))


def top_predictions(probs: np.ndarray, labels: Sequence[ClassLabel], top_k: int
                    ) -> tuple[Prediction, ...]:
    """The `top_k` classes of one row of probabilities, most probable first."""
    import numpy as np

    top = np.argpartition(-probs, top_k - 1)[:top_k]
    top = top[np.argsort(-probs[top], kind="stable")]
    return tuple(Prediction(rank=rank, index=int(i), wnid=labels[i].wnid, label=labels[i].name,
                            probability=float(probs[i])) for rank, i in enumerate(top, start=1))
