"""similarity.neighbors: exact k nearest neighbours and pairs above a threshold, on planted
unit vectors, checked against a brute-force numpy answer."""

from __future__ import annotations

import numpy as np

from resnet_cli.similarity.neighbors import (
    PAIR_K,
    knn,
    mean_neighbor_distance,
    pairs_across,
    pairs_within,
)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _planted(seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """400 random vectors, 10 planted near-duplicate pairs and one group of 40 close copies
    (more than PAIR_K, so the k-doubling path must find all of them)."""
    rng = np.random.default_rng(seed)
    vectors = _unit(rng.standard_normal((400, 64)))
    pairs = set()
    for a in range(10):
        b = 200 + a
        vectors[b] = _unit(vectors[a:a + 1] + 0.02 * rng.standard_normal((1, 64)))[0]
        pairs.add((a, b))
    group = list(range(300, 340))
    assert len(group) > PAIR_K
    for g in group[1:]:
        vectors[g] = _unit(vectors[300:301] + 0.02 * rng.standard_normal((1, 64)))[0]
    for x in group:
        for y in group:
            if x < y:
                pairs.add((x, y))
    return vectors, pairs


def _brute(vectors: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    sims = vectors @ vectors.T
    i, j = np.nonzero(np.triu(sims >= threshold, 1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def test_pairs_within_is_exact_including_groups_larger_than_k() -> None:
    vectors, planted = _planted()
    i, j, s = pairs_within(vectors, 0.95, block=64)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    assert found == _brute(vectors, 0.95)
    assert planted <= found
    assert len(found) == len(planted)  # random 64-d vectors are never that close
    assert np.all(s >= 0.95) and np.all(i < j)


def test_knn_matches_numpy_and_is_sorted() -> None:
    vectors, _ = _planted(1)
    queries = vectors[[0, 5, 300]]
    sims, ids = knn(vectors, queries, 5)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    assert ids[:, 0].tolist() == [0, 5, 300]  # each query is its own nearest
    assert np.array_equal(np.sort(ids, axis=1), np.sort(expected, axis=1))
    assert np.all(np.diff(sims, axis=1) <= 1e-6)
    assert ids[0, 1] == 200  # the planted near duplicate of row 0


def test_pairs_across_finds_planted_leaks() -> None:
    rng = np.random.default_rng(2)
    train = _unit(rng.standard_normal((100, 32)))
    test = _unit(rng.standard_normal((50, 32)))
    test[[3, 7]] = _unit(train[[10, 20]] + 0.01 * rng.standard_normal((2, 32)))
    i, j, _ = pairs_across(train, test, 0.95)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(10, 3), (20, 7)]


def test_outlier_score_is_largest_for_the_planted_outlier() -> None:
    rng = np.random.default_rng(3)
    centre = rng.standard_normal((1, 32))
    vectors = _unit(centre + 0.3 * rng.standard_normal((60, 32)))
    vectors[17] = _unit(rng.standard_normal((1, 32)))[0]
    score = mean_neighbor_distance(vectors, 5)
    assert int(np.argmax(score)) == 17
