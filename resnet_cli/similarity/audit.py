"""`resnet audit`: what is worth fixing in a folder-per-class dataset before training on it.

Rows come from extract's pipeline (one call for the data and the test images). Label issues
follow cleanlab's recipe: out-of-sample predicted probabilities from a K-fold
cross-validated linear model (scikit-learn's logistic regression on the standardised
features), ranked by cleanlab's `find_label_issues` (self-confidence), each with the class
the model suggests. Copies, near duplicates and leaks come from `duplicates` and
`neighbors`; outliers are the images whose nearest neighbours are far (Tukey's far-out rule
on the mean distance); overlapping classes come from cleanlab's `find_overlapping_classes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from resnet_cli.errors import ImageError
from resnet_cli.extras import require_module
from resnet_cli.similarity.copies import DEFAULT_COPY_BITS, hash_pairs, hash_paths
from resnet_cli.similarity.duplicates import DEFAULT_THRESHOLD, find_duplicates
from resnet_cli.similarity.neighbors import knn, mean_neighbor_distance, pairs_across
from resnet_cli.similarity.records import (
    AuditResult,
    ClassRow,
    LabelIssue,
    Leak,
    Neighbor,
    Outlier,
    Overlap,
    Unreadable,
)
from resnet_cli.similarity.vectors import FeatureOptions, embed

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.inference import RunnerFactory
    from resnet_cli.loaded import FailureHandler
    from resnet_cli.models import ModelOptions

FOLDS = 5
OUTLIER_K = 5
NEIGHBORS_SHOWN = 4
OVERLAP_MIN = 0.01  # joint probability of a class pair worth naming (1% of the images)


def run_audit(data_dir: Path, *, test_dir: Path | None, options: ModelOptions,
              features: FeatureOptions, threshold: float = DEFAULT_THRESHOLD,
              copy_bits: int = DEFAULT_COPY_BITS, folds: int = FOLDS, progress: bool = True,
              on_failure: FailureHandler | None = None,
              runner: RunnerFactory | None = None) -> AuditResult:
    """Audit the dataset in `data_dir` (and its leaks into `test_dir`); never changes it.

    Raises:
        DatasetError: not a folder-per-class dataset.
        UsageError: a missing extra, bad options. OutputError: no image could be read.
    """
    from resnet_cli.datasets import scan_class_folders
    from resnet_cli.images import collect_inputs

    require_module("sklearn", extra="data", purpose="audit")
    require_module("cleanlab", extra="data", purpose="audit")
    data = scan_class_folders(data_dir)
    test = collect_inputs([str(test_dir)], recursive=True) if test_dir is not None else []
    unreadable: list[Unreadable] = []

    def fail(error: ImageError) -> None:
        unreadable.append(Unreadable(error.path, error.reason))
        if on_failure is not None:
            on_failure(error)

    rows = embed([*data.paths, *test], options=options, features=features,
                 progress=progress, on_failure=fail, runner=runner)
    near = threshold if rows.record.reproducible else None
    label_of = dict(zip(data.paths, data.labels, strict=True))
    train = [i for i, p in enumerate(rows.paths) if p in label_of]
    tested = [i for i, p in enumerate(rows.paths) if p not in label_of]
    paths = [rows.paths[i] for i in train]
    vectors = rows.vectors[train]
    labels = [label_of[p] for p in paths]
    issues, overlaps, accuracy = _label_issues(vectors, labels, paths, data.class_names, folds)
    hashed = hash_paths(paths)  # once, for the duplicates and the leaks
    dupes = find_duplicates(paths, vectors, threshold=near, copy_bits=copy_bits, hashed=hashed)
    leaks = _leaks(paths, vectors, [rows.paths[i] for i in tested], rows.vectors[tested],
                   hashed=hashed, threshold=near, copy_bits=copy_bits)
    outliers = _outliers(vectors, paths)
    shown = [i.path for i in issues[:50]] + [o.path for o in outliers[:50]]
    return AuditResult(
        data_dir=str(data_dir), test_dir=str(test_dir) if test_dir else None,
        model=rows.record.describe(), images=len(data.paths), test_images=len(test),
        label_issues=tuple(issues), duplicates=dupes.groups, leaks=tuple(leaks),
        outliers=tuple(outliers), unreadable=tuple(unreadable),
        classes=_classes(labels, data.class_names), overlaps=tuple(overlaps),
        cv_accuracy=accuracy, neighbors=_neighbors_of(shown, paths, vectors),
        labels={p: data.class_names[label_of[p]] for p in paths},
    )


def _label_issues(vectors: np.ndarray, labels: Sequence[int], paths: Sequence[str],
                  names: Sequence[str], folds: int
                  ) -> tuple[list[LabelIssue], list[Overlap], float]:
    """Label issues (most likely first), overlapping class pairs, and the out-of-sample
    accuracy; nothing when a class has fewer than 2 readable images."""
    import numpy as np
    from cleanlab.dataset import find_overlapping_classes
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    present = sorted(set(labels))
    counts = np.bincount(np.searchsorted(present, labels))
    if len(present) < 2 or counts.min() < 2:
        return [], [], float("nan")
    dense = np.searchsorted(present, labels)  # classes without readable images dropped
    probs = _out_of_sample(vectors, dense, min(folds, int(counts.min())))
    ranked = find_label_issues(labels=dense, pred_probs=probs,
                               return_indices_ranked_by="self_confidence")
    scores = get_label_quality_scores(dense, probs)
    suggested = probs.argmax(axis=1)
    issues = [LabelIssue(paths[i], names[present[dense[i]]], names[present[suggested[i]]],
                         float(scores[i])) for i in ranked.tolist()]
    table = find_overlapping_classes(labels=dense, pred_probs=probs)
    overlaps = [Overlap((names[present[int(r["Class Index A"])]],
                         names[present[int(r["Class Index B"])]]),
                        float(r["Joint Probability"]), int(r["Num Overlapping Examples"]))
                for _, r in table.iterrows() if float(r["Joint Probability"]) >= OVERLAP_MIN]
    return issues, overlaps, float((suggested == dense).mean())


def _out_of_sample(vectors: np.ndarray, labels: np.ndarray, folds: int) -> np.ndarray:
    """K-fold cross-validated probabilities of a logistic regression on the features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # C=0.01: strong regularisation; on separable features (a finetuned model's) C=0.1 took
    # 20x longer to converge for recall 0.94 instead of 0.89 (benchmarks/similarity_labels.py)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.01))
    probs: np.ndarray = cross_val_predict(
        model, vectors, labels, method="predict_proba",
        cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=0))
    return probs


def _leaks(paths: Sequence[str], vectors: np.ndarray, test: Sequence[str],
           test_vectors: np.ndarray, *, hashed: tuple[np.ndarray, list[int]],
           threshold: float | None, copy_bits: int) -> list[Leak]:
    """Training images with a copy (hash) or a near duplicate (features) among `test`."""
    if not test:
        return []
    found: dict[tuple[int, int], Leak] = {}
    hashes, kept = hashed
    test_hashes, test_kept = hash_paths(test)
    for a, b, s in zip(*(x.tolist() for x in hash_pairs(hashes, copy_bits,
                                                         other=test_hashes)), strict=True):
        pair = (kept[a], test_kept[b])
        found[pair] = Leak((paths[pair[0]], test[pair[1]]), float(s), "copy")
    if threshold is not None:
        for a, b, s in zip(*(x.tolist() for x in pairs_across(vectors, test_vectors,
                                                               threshold)), strict=True):
            found.setdefault((a, b), Leak((paths[a], test[b]), float(s), "near"))
    return sorted(found.values(), key=lambda leak: (-leak.similarity, leak.paths))


def _outliers(vectors: np.ndarray, paths: Sequence[str]) -> list[Outlier]:
    """Images whose mean distance to their nearest neighbours is far out (above the third
    quartile plus three interquartile ranges), farthest first."""
    import numpy as np

    if len(paths) < OUTLIER_K + 2:
        return []
    score = mean_neighbor_distance(vectors, OUTLIER_K)
    q1, q3 = np.percentile(score, [25, 75])
    line = q3 + 3 * (q3 - q1)
    order = np.argsort(-score)
    return [Outlier(paths[i], float(score[i])) for i in order.tolist() if score[i] > line]


def _classes(labels: Sequence[int], names: Sequence[str]) -> tuple[ClassRow, ...]:
    """Each class's readable images; underrepresented below half an equal share."""
    counts = [0] * len(names)
    for label in labels:
        counts[label] += 1
    total = max(sum(counts), 1)
    return tuple(ClassRow(name, count, count / total, count / total < 0.5 / len(names))
                 for name, count in zip(names, counts, strict=True))


def _neighbors_of(shown: Sequence[str], paths: Sequence[str], vectors: np.ndarray
                  ) -> dict[str, tuple[Neighbor, ...]]:
    """The nearest other images of each path in `shown` (for the page)."""
    if not shown or len(paths) < 2:
        return {}
    row = {p: i for i, p in enumerate(paths)}
    picked = sorted({row[p] for p in shown})
    sims, ids = knn(vectors, vectors[picked], NEIGHBORS_SHOWN + 1)
    out: dict[str, tuple[Neighbor, ...]] = {}
    for i, s_row, id_row in zip(picked, sims.tolist(), ids.tolist(), strict=True):
        out[paths[i]] = tuple(Neighbor(paths[j], float(s)) for j, s in zip(id_row, s_row,
                                                                             strict=True)
                              if j != i)[:NEIGHBORS_SHOWN]
    return out


