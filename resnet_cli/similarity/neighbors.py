"""Nearest neighbours by cosine similarity (inner products of unit vectors), exact, with
faiss, a block of queries at a time: memory holds the vectors once plus one block's results,
never an N x N matrix.

`faiss.knn` runs the exact search straight on a numpy array (BLAS matrix products and a heap
per query, on every core) without copying the base into an index. Pairs above a threshold
are found as k nearest neighbours with k doubled for the rows whose k-th neighbour is still
above it, so the answer is exact however large a group is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resnet_cli.extras import require_module

if TYPE_CHECKING:
    import numpy as np

QUERY_BLOCK = 4096  # queries per faiss call: 4096 x k results, whatever N is
FEW_QUERIES = 64  # below this, one thread: a lone query is bound by memory bandwidth, and
# OpenMP threads splitting one scan contend (measured 3x slower on a busy 2-core machine)
PAIR_K = 16  # neighbours looked at first for each row when listing pairs


def _faiss() -> Any:
    return require_module("faiss", extra="data", purpose="Nearest-neighbour search")


def knn(base: np.ndarray, queries: np.ndarray, k: int, *, block: int = QUERY_BLOCK
        ) -> tuple[np.ndarray, np.ndarray]:
    """The `k` rows of `base` nearest each query (similarities, indices), nearest first;
    k is cut to len(base). Both arrays are float32 C-ordered unit rows."""
    import numpy as np

    faiss = _faiss()
    k = min(k, len(base))
    sims = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    threads = faiss.omp_get_max_threads()
    if len(queries) < FEW_QUERIES:
        faiss.omp_set_num_threads(1)
    try:
        for start in range(0, len(queries), block):
            part = np.ascontiguousarray(queries[start:start + block], dtype=np.float32)
            d, i = faiss.knn(part, base, k, metric=faiss.METRIC_INNER_PRODUCT)
            sims[start:start + len(part)], ids[start:start + len(part)] = d, i
    finally:
        faiss.omp_set_num_threads(threads)
    return sims, ids


def pairs_within(vectors: np.ndarray, threshold: float, *, block: int = QUERY_BLOCK
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of rows with cosine similarity >= `threshold`: arrays i, j, sim."""
    return _pairs(vectors, vectors, threshold, block=block, same=True)


def pairs_across(left: np.ndarray, right: np.ndarray, threshold: float, *,
                 block: int = QUERY_BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i in left, j in right) with cosine similarity >= `threshold`."""
    return _pairs(left, right, threshold, block=block, same=False)


def _pairs(queries: np.ndarray, base: np.ndarray, threshold: float, *, block: int,
           same: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import numpy as np

    found_i, found_j, found_s = [], [], []
    for start in range(0, len(queries), block):
        rows = np.arange(start, min(start + block, len(queries)))
        k = min(PAIR_K + int(same), len(base))
        while len(rows):
            sims, ids = knn(base, queries[rows], k, block=block)
            full = sims[:, -1] >= threshold  # the k-th is still close: there may be more
            done = ~full if k < len(base) else np.ones(len(rows), dtype=bool)
            keep = (sims >= threshold) & done[:, None]
            qi = np.broadcast_to(rows[:, None], ids.shape)[keep]
            qj, qs = ids[keep], sims[keep]
            if same:
                upper = qi < qj
                qi, qj, qs = qi[upper], qj[upper], qs[upper]
            found_i.append(qi)
            found_j.append(qj)
            found_s.append(qs)
            rows, k = rows[~done], min(k * 4, len(base))
    if not found_i:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float32)
    return (np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64),
            np.concatenate(found_s).astype(np.float32))


def mean_neighbor_distance(vectors: np.ndarray, k: int) -> np.ndarray:
    """Each row's mean cosine distance (1 - similarity) to its `k` nearest other rows."""
    import numpy as np

    if len(vectors) < 2:
        return np.zeros(len(vectors), dtype=np.float32)
    sims, ids = knn(vectors, vectors, min(k + 1, len(vectors)))
    others = ids != np.arange(len(vectors))[:, None]
    # a row's own entry is dropped; exact ties may put it elsewhere than first
    sims = np.where(others, sims, np.nan)
    mean: np.ndarray = 1.0 - np.nanmean(sims[:, : k + 1], axis=1)
    return mean.astype(np.float32)
