"""`resnet duplicates`: groups of copies (perceptual hash) and of near duplicates (features).

Copies are grouped first; near-duplicate groups are then formed among the images left over
and the copy groups' representatives, so an image is in one group at most. Nothing is deleted
or moved: `removal_list` names the paths to remove, all but one of each group.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from resnet_cli.errors import ImageError
from resnet_cli.similarity.copies import DEFAULT_COPY_BITS, hash_pairs, hash_paths
from resnet_cli.similarity.groups import leader_groups
from resnet_cli.similarity.neighbors import pairs_within
from resnet_cli.similarity.records import DuplicatesResult, Group, Unreadable

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.loaded import FailureHandler

DEFAULT_THRESHOLD = 0.9  # cosine similarity of near duplicates (trained weights)


class Keep(str, Enum):
    """Which image of a group the removal list keeps."""

    first = "first"  # the first of the group in input order
    largest = "largest"  # the most pixels (then the larger file)


def find_duplicates(paths: Sequence[str], vectors: np.ndarray | None, *,
                    threshold: float | None = DEFAULT_THRESHOLD,
                    copy_bits: int = DEFAULT_COPY_BITS,
                    on_failure: FailureHandler | None = None,
                    hashed: tuple[np.ndarray, list[int]] | None = None) -> DuplicatesResult:
    """Copy and near-duplicate groups among `paths` (`vectors[i]`: row of `paths[i]`, unit
    length; None or `threshold` None: copies only). Unreadable images are left out.
    `hashed`: the paths' hashes if already computed (`copies.hash_paths`)."""
    import numpy as np

    unreadable: list[Unreadable] = []

    def fail(error: ImageError) -> None:
        unreadable.append(Unreadable(error.path, error.reason))
        if on_failure is not None:
            on_failure(error)

    hashes, kept = hashed if hashed is not None else hash_paths(paths, on_failure=fail)
    hi, hj, hs = hash_pairs(hashes, copy_bits)
    position = np.asarray(kept, dtype=np.int64)
    copy_groups = leader_groups(len(paths), position[hi], position[hj], hs)
    groups = [Group(tuple(paths[m] for m in g.members), "copy", min(g.scores))
              for g in copy_groups]
    if vectors is not None and threshold is not None:
        eligible = [True] * len(paths)
        for g in copy_groups:
            for member in g.members[1:]:
                eligible[member] = False
        ni, nj, ns = pairs_within(vectors, threshold)
        near = leader_groups(len(paths), ni, nj, ns, eligible=eligible)
        groups += [Group(tuple(paths[m] for m in g.members), "near", min(g.scores))
                   for g in near]
    return DuplicatesResult(groups=tuple(groups), inputs=len(paths), copy_bits=copy_bits,
                            threshold=threshold if vectors is not None else None,
                            unreadable=tuple(unreadable))




def removal_list(result: DuplicatesResult, *, keep: Keep, order: Sequence[str]) -> list[str]:
    """The paths to remove so that one image of each group stays: with `keep` first, the one
    earliest in `order` (the inputs); with largest, the one with most pixels."""
    rank = {path: i for i, path in enumerate(order)}
    remove: list[str] = []
    for group in result.groups:
        if keep is Keep.first:
            kept = min(group.paths, key=lambda p: rank.get(p, len(rank)))
        else:
            kept = max(group.paths, key=lambda p: (_pixels(p), -rank.get(p, len(rank))))
        remove.extend(p for p in group.paths if p != kept)
    return remove


def _pixels(path: str) -> tuple[int, int]:
    """(pixels, bytes) of an image, from its header; (0, 0) when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.width * image.height, Path(path).stat().st_size
    except (OSError, ValueError, SyntaxError):
        return 0, 0
