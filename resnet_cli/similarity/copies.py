"""Copies: the same picture re-encoded, resized or slightly cropped, found by a perceptual
hash whatever the model's weights.

imagehash's pHash (the DCT of a 32x32 grey thumbnail, 64 bits) changes by a few bits when a
photo is resized or recompressed and by more when it is cropped; different photos differ by
far more (the README has the measured spread). Hamming distances are computed by faiss's
binary index, block by block. Images are read by `images.load_upright_rgb` (regular files
only, EXIF upright, a JPEG decoded at reduced DCT scale) in a thread pool, and an image it
refuses goes to the failure callback like everywhere else.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from resnet_cli.errors import ImageError
from resnet_cli.extras import require_module

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.loaded import FailureHandler

HASH_BITS = 64
DEFAULT_COPY_BITS = 14  # at most this many of the 64 bits differ between copies
HASH_SIDE = 64  # pixels a JPEG is decoded to at least (pHash itself looks at 32x32)
BLOCK = 8192


def _imagehash() -> Any:
    return require_module("imagehash", extra="data", purpose="Finding copies")


def require_copy_finding() -> None:
    """Fail in one line, before any work, when the data extra is missing."""
    _imagehash()
    require_module("faiss", extra="data", purpose="Finding copies")


def perceptual_hash(path: str) -> np.ndarray:
    """The 64-bit pHash of the image at `path`, as 8 bytes.

    Raises:
        ImageError: it cannot be read.
    """
    import numpy as np

    imagehash = _imagehash()
    rgb = load_for_hash(path)
    bits = imagehash.phash(rgb, hash_size=8).hash
    packed: np.ndarray = np.packbits(bits.reshape(-1).astype(np.uint8))
    return packed


def load_for_hash(path: str) -> Any:
    from resnet_cli.images import load_upright_rgb

    return load_upright_rgb(path, draft=lambda w, h: (HASH_SIDE, HASH_SIDE),
                            purpose="for its perceptual hash")


def hash_paths(paths: Sequence[str], *, on_failure: FailureHandler | None = None,
               workers: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Hashes of `paths` (rows of 8 bytes) and the indices in `paths` they belong to; the
    paths that cannot be read go to `on_failure` and get no row."""
    import numpy as np

    _imagehash()  # one line naming the extra, before any work

    def one(path: str) -> np.ndarray | ImageError:
        try:
            return perceptual_hash(path)
        except ImageError as exc:
            return exc

    rows: list[np.ndarray] = []
    kept: list[int] = []
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for index, result in enumerate(pool.map(one, paths)):
            if isinstance(result, ImageError):
                if on_failure is not None:
                    on_failure(result)
            else:
                rows.append(result)
                kept.append(index)
    hashes = np.stack(rows) if rows else np.empty((0, HASH_BITS // 8), dtype=np.uint8)
    return hashes, kept


def hash_pairs(hashes: np.ndarray, max_bits: int, *, other: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of hashes at most `max_bits` apart: (i, j, similarity = 1 - bits/64). Within
    `hashes` (i < j), or from `hashes` to `other`."""
    import numpy as np

    faiss = require_module("faiss", extra="data", purpose="Finding copies")
    base = hashes if other is None else other
    found_i, found_j, found_d = [], [], []
    if len(hashes) and len(base):
        index = faiss.IndexBinaryFlat(HASH_BITS)
        index.add(np.ascontiguousarray(base))
        for start in range(0, len(hashes), BLOCK):
            part = np.ascontiguousarray(hashes[start:start + BLOCK])
            lims, dist, ids = index.range_search(part, max_bits + 1)  # radius is exclusive
            rows = np.repeat(np.arange(start, start + len(part)), np.diff(lims).astype(np.int64))
            keep = rows < ids if other is None else np.ones(len(ids), dtype=bool)
            found_i.append(rows[keep])
            found_j.append(ids[keep].astype(np.int64))
            found_d.append(dist[keep])
    if not found_i:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float32)
    bits = np.concatenate(found_d).astype(np.float32)
    return (np.concatenate(found_i).astype(np.int64), np.concatenate(found_j),
            1.0 - bits / HASH_BITS)
