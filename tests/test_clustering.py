"""core.grouping.clustering: the engineer's split by k-means."""

import numpy as np
import pytest

from core.grouping.clustering import split_by_kmeans


def test_split_finds_separated_groups_largest_first():
    rng = np.random.default_rng(0)
    small = rng.normal(0.0, 0.1, size=(4, 3))
    large = rng.normal(10.0, 0.1, size=(9, 3))
    features = np.vstack([small, large])
    parts = split_by_kmeans(features, 2, seed=0)
    assert [sorted(p.tolist()) for p in parts] == [list(range(4, 13)), list(range(4))]


def test_split_is_deterministic_for_a_seed_and_covers_every_row():
    features = np.random.default_rng(1).normal(size=(30, 4))
    first, second = split_by_kmeans(features, 3, seed=5), split_by_kmeans(features, 3, seed=5)
    assert [p.tolist() for p in first] == [p.tolist() for p in second]
    assert sorted(np.concatenate(first).tolist()) == list(range(30))
    assert [len(p) for p in first] == sorted((len(p) for p in first), reverse=True)


def test_split_rejects_bad_requests():
    with pytest.raises(ValueError, match="k >= 2"):
        split_by_kmeans(np.zeros((5, 2)), 1)
    with pytest.raises(ValueError, match="3 rows"):
        split_by_kmeans(np.zeros((3, 2)), 4)
