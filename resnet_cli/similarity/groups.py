"""Groups that never chain: each group is a representative and the items within the
threshold of it, so A~B and B~C never pull A and C together unless both are close to one
representative (unlike connected components, which chain 0.82-similar pairs into one group).

Greedy, like leader clustering: the item with the most close items not yet grouped leads the
next group and takes them; ties go to the earlier item. Each item is in at most one group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class IndexGroup:
    """`members[0]` is the representative; `scores[m]` is member m's score with it."""

    members: tuple[int, ...]
    scores: tuple[float, ...]


def leader_groups(count: int, i: np.ndarray, j: np.ndarray, score: np.ndarray,
                  *, eligible: Sequence[bool] | None = None) -> list[IndexGroup]:
    """Groups of the items 0..count-1 from their close pairs (i, j, score: larger is closer).

    Items not `eligible` take part in no group. Groups come out largest first.
    """
    import heapq

    neighbors: list[dict[int, float]] = [{} for _ in range(count)]
    for a, b, s in zip(i.tolist(), j.tolist(), score.tolist(), strict=True):
        if a == b or (eligible is not None and not (eligible[a] and eligible[b])):
            continue
        neighbors[a][b] = max(s, neighbors[a].get(b, s))
        neighbors[b][a] = max(s, neighbors[b].get(a, s))
    free = [bool(n) for n in neighbors]
    heap = [(-len(n), item) for item, n in enumerate(neighbors) if n]
    heapq.heapify(heap)
    groups: list[IndexGroup] = []
    while heap:
        negative, item = heapq.heappop(heap)
        if not free[item]:
            continue
        close = [other for other in neighbors[item] if free[other]]
        if len(close) != -negative:  # stale: some were taken since; look again later
            if close:
                heapq.heappush(heap, (-len(close), item))
            continue
        close.sort(key=lambda other: (-neighbors[item][other], other))
        free[item] = False
        for other in close:
            free[other] = False
        groups.append(IndexGroup((item, *close),
                                 (1.0, *(neighbors[item][o] for o in close))))
    groups.sort(key=lambda g: (-len(g.members), g.members[0]))
    return groups
