"""Matching the clusters of two runs by the items they share (Hungarian on the overlap counts)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np

__all__ = ["match_by_overlap"]


def match_by_overlap(
    first: Mapping[Hashable, Hashable], second: Mapping[Hashable, Hashable]
) -> list[tuple[Hashable, Hashable, int]]:
    """One-to-one matches (cluster in first, cluster in second, shared items) maximizing the overlap.

    `first` and `second` map an item (e.g. a region id) to its cluster in each run; only items
    in both count. Pairs sharing nothing are left out; the largest overlaps come first, ties by
    the first run's cluster (sorted), so the output is deterministic.
    """
    from scipy.optimize import linear_sum_assignment

    shared = [item for item in first if item in second]
    if not shared:
        return []
    first_ids = sorted({first[item] for item in shared})  # type: ignore[type-var]
    second_ids = sorted({second[item] for item in shared})  # type: ignore[type-var]
    row_of = {c: i for i, c in enumerate(first_ids)}
    column_of = {c: i for i, c in enumerate(second_ids)}
    overlap = np.zeros((len(first_ids), len(second_ids)), dtype=np.int64)
    for item in shared:
        overlap[row_of[first[item]], column_of[second[item]]] += 1
    rows, columns = linear_sum_assignment(overlap, maximize=True)
    pairs = sorted(zip(rows, columns), key=lambda rc: (-overlap[rc], rc[0]))
    return [(first_ids[i], second_ids[j], int(overlap[i, j])) for i, j in pairs if overlap[i, j] > 0]
