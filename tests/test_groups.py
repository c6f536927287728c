"""similarity.groups: groups never chain; every member is within the threshold of its
representative."""

from __future__ import annotations

import numpy as np

from resnet_cli.similarity.groups import leader_groups


def _pairs(edges: list[tuple[int, int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i, j, s = zip(*edges, strict=True)
    return np.array(i), np.array(j), np.array(s, dtype=np.float32)


def test_a_chain_is_not_one_group() -> None:
    # 0~1, 1~2, 2~3, 3~4: connected components would make one group of five.
    groups = leader_groups(5, *_pairs([(0, 1, .95), (1, 2, .95), (2, 3, .95), (3, 4, .95)]))
    close = {(0, 1), (1, 2), (2, 3), (3, 4)}
    for g in groups:
        for member in g.members[1:]:
            assert tuple(sorted((g.members[0], member))) in close
    assert max(len(g.members) for g in groups) == 3
    members = [m for g in groups for m in g.members]
    assert len(members) == len(set(members))  # each item in one group at most


def test_the_best_connected_item_leads_and_scores_are_to_it() -> None:
    edges = [(4, 0, .91), (4, 1, .97), (4, 2, .93), (0, 1, .92), (5, 6, .99)]
    groups = leader_groups(7, *_pairs(edges))
    assert [g.members for g in groups] == [(4, 1, 2, 0), (5, 6)]
    assert groups[0].scores == (1.0, *np.float32([.97, .93, .91]).tolist())


def test_ineligible_items_take_no_part() -> None:
    groups = leader_groups(3, *_pairs([(0, 1, .99), (1, 2, .99)]),
                           eligible=[True, False, True])
    assert groups == []
