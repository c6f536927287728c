"""Near-duplicate pairs at scale, and the time of one search, with planted vectors.

N unit vectors of D floats (default 50,000 x 2048) are drawn in clusters, so that unrelated
vectors are not all orthogonal (cosine up to about 0.8 within a cluster); 1% of N pairs are
planted near duplicates (cosine about 0.93-0.97). Then, each in a fresh process reading the
same .npy file:

- ours: `similarity.neighbors.pairs_within` (faiss exact inner product, blockwise);
- baseline: an exact blockwise numpy pass (rows @ all.T a block at a time, then >= T);

and it prints pairs found / planted, false pairs, seconds of each and their ratio, and the
peak memory of each process above what it held before loading the vectors, as a multiple of
the vectors' size. Then it writes an index of --search-rows vectors, loads it with
`similarity.index.load_index`, and times one query's 10 nearest (median of 50).

Example: python benchmarks/similarity_scale.py
         python benchmarks/similarity_scale.py --rows 20000 --search-rows 50000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THRESHOLD = 0.9


def make_vectors(rows: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors with rows // 100 planted near-duplicate pairs (returned)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(rows // 100, 1), dim), dtype=np.float32)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 8192):
        n = min(8192, rows - start)
        pick = rng.integers(0, len(centres), n)
        out[start:start + n] = centres[pick] * 1.0 + rng.standard_normal((n, dim),
                                                                         dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    planted = rows // 100
    chosen = rng.choice(rows, size=2 * planted, replace=False)
    a, b = chosen[:planted], chosen[planted:]
    for i, j in zip(a, b, strict=True):
        noise = rng.standard_normal(dim).astype(np.float32)
        noise /= np.linalg.norm(noise)
        scale = rng.uniform(0.25, 0.40)  # cosine about 1/sqrt(1 + s^2): 0.93-0.97
        v = out[i] + scale * noise
        out[j] = v / np.linalg.norm(v)
    return out, np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)


def high_water_kib() -> int:
    """This process's peak resident memory (VmHWM; ru_maxrss would carry the parent's
    peak over the fork)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


def child(mode: str, path: str) -> None:
    import faiss  # noqa: F401  (imported before the baseline is read, like numpy)

    base = high_water_kib()
    vectors = np.load(path, allow_pickle=False)
    started = time.perf_counter()
    if mode == "ours":
        from resnet_cli.similarity.neighbors import pairs_within

        i, j, _ = pairs_within(vectors, THRESHOLD)
    else:
        found_i, found_j = [], []
        for start in range(0, len(vectors), 1024):
            sims = vectors[start:start + 1024] @ vectors.T
            r, c = np.nonzero(sims >= THRESHOLD)
            r += start
            keep = r < c
            found_i.append(r[keep])
            found_j.append(c[keep])
        i, j = np.concatenate(found_i), np.concatenate(found_j)
    seconds = time.perf_counter() - started
    peak = high_water_kib()
    print(json.dumps({"seconds": seconds, "extra_kib": peak - base,
                      "pairs": np.stack([i, j], axis=1).tolist()}))


def run_child(mode: str, path: Path) -> dict[str, object]:
    done = subprocess.run([sys.executable, __file__, "--child", mode, str(path)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def search_timing(rows: int, dim: int, folder: Path) -> tuple[float, float]:
    from resnet_cli.similarity.index import load_index
    from resnet_cli.similarity.neighbors import knn

    vectors, _ = make_vectors(rows, dim, seed=1)
    index = folder / "bench.index"
    index.mkdir()
    np.save(index / "vectors.npy", vectors)
    (index / "vectors.paths.txt").write_text("".join(f"img{i}.jpg\n" for i in range(rows)))
    card = {"base_model": "resnet50", "image_size": 224, "preprocess_mode": "caffe",
            "include_top": False}
    (index / "vectors.card.json").write_text(json.dumps(
        {"card": card, "weights": "imagenet", "pooling": "avg", "layer": "conv5_block3_out",
         "resize": "crop"}))
    (index / "index.json").write_text(json.dumps(
        {"format": "resnet-index", "version": 1, "rows": rows, "dim": dim}))
    del vectors
    started = time.perf_counter()
    found = load_index(index)
    load_s = time.perf_counter() - started
    query = found.vectors[:1].copy()
    knn(found.vectors, query, 10)  # warm-up
    times = []
    for q in range(50):
        query = found.vectors[q * 7: q * 7 + 1].copy()
        started = time.perf_counter()
        knn(found.vectors, query, 10)
        times.append(time.perf_counter() - started)
    return load_s, float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--search-rows", type=int, default=100_000)
    parser.add_argument("--search-only", action="store_true",
                        help="time only the search (the pairs take minutes)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="similarity-scale-") as scratch:
        folder = Path(scratch)
        if args.search_only:
            load_s, query_s = search_timing(args.search_rows, args.dim, folder)
            print(f"search: {args.search_rows} indexed vectors, load_index {load_s:.2f} s, one "
                  f"query's 10 nearest: median {query_s * 1000:.1f} ms")
            return
        vectors, planted = make_vectors(args.rows, args.dim, seed=0)
        path = folder / "vectors.npy"
        np.save(path, vectors)
        size_kib = vectors.nbytes / 1024
        del vectors
        ours, numpy_pass = run_child("ours", path), run_child("numpy", path)
        truth = {tuple(p) for p in planted.tolist()}
        found = {tuple(p) for p in ours["pairs"]}  # type: ignore[union-attr]
        exact = {tuple(p) for p in numpy_pass["pairs"]}  # type: ignore[union-attr]
        hit = len(found & truth)
        print(f"vectors: {args.rows} x {args.dim} float32 ({size_kib / 1024:.0f} MiB), "
              f"{len(truth)} planted pairs, threshold {THRESHOLD}")
        print(f"ours (faiss, blockwise): {ours['seconds']:.2f} s, found {hit}/{len(truth)} "
              f"planted ({hit / len(truth):.1%}), {len(found - truth)} other pairs "
              f"({len(found - truth) / max(len(found), 1):.1%} of reported), "
              f"same pairs as numpy: {found == exact}")
        print(f"numpy blockwise pass: {numpy_pass['seconds']:.2f} s; ratio ours/numpy "
              f"{ours['seconds'] / numpy_pass['seconds']:.2f}")  # type: ignore[operator]
        print(f"peak memory above the process before loading the vectors, x vectors' size: ours "
              f"{(ours['extra_kib'] / size_kib):.2f}, numpy "  # type: ignore[operator]
              f"{(numpy_pass['extra_kib'] / size_kib):.2f}")  # type: ignore[operator]
        load_s, query_s = search_timing(args.search_rows, args.dim, folder)
        print(f"search: {args.search_rows} indexed vectors, load_index {load_s:.2f} s, one "
              f"query's 10 nearest: median {query_s * 1000:.1f} ms")


if __name__ == "__main__":
    main()
