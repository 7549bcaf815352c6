"""Class-count estimate: the eigengap sweep finds well-separated clusters and shows its table."""

import numpy as np
import pytest

from core.config import EstimateConfig
from core.grouping.estimate import estimate_num_classes


def _blobs(k, per=20, dim=12, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:k] * 2.0
    return np.concatenate([c + rng.normal(0, noise, size=(per, dim)) for c in centres])


@pytest.mark.parametrize("k", [2, 3, 5])
def test_sweep_finds_the_number_of_blobs(k):
    estimate = estimate_num_classes(_blobs(k), EstimateConfig(k_max=8))
    assert estimate.k == k
    ks = [int(row["k"]) for row in estimate.table]
    assert ks == list(range(2, 9))
    best = max(estimate.table, key=lambda r: r["support"])
    assert int(best["k"]) == k
    assert f"k={k:3d}" in estimate.describe()
    assert estimate.confidence > 0.5 and estimate.sureness in ("sure", "fairly sure")


def test_low_score_regions_are_left_out():
    features = np.concatenate([_blobs(3, per=15), _blobs(1, per=40, seed=5)[:, ::-1]])
    scores = np.concatenate([np.full(45, 0.9), np.full(40, 0.1)])
    estimate = estimate_num_classes(features, EstimateConfig(k_max=6, min_score=0.5), scores=scores)
    assert estimate.n_samples == 45
    assert estimate.k == 3


def test_too_few_regions_never_fail_and_say_they_are_unsure():
    estimate = estimate_num_classes(np.ones((5, 4)))
    assert estimate.k == 2 and "distinct" in estimate.note and estimate.confidence == 0.0
    assert "unsure" in estimate.describe()
    assert estimate_num_classes(np.eye(2, 4)).k == 2


def test_structureless_data_is_unsure():
    noise = np.random.default_rng(3).normal(size=(120, 6))
    estimate = estimate_num_classes(noise, EstimateConfig(k_max=8))
    assert 2 <= estimate.k <= 8
    assert estimate.confidence < 0.6 and "fit almost as well" in estimate.summary()


def test_k_max_is_clamped_to_the_samples():
    estimate = estimate_num_classes(_blobs(3, per=1), EstimateConfig(k_max=10))
    assert [int(r["k"]) for r in estimate.table] == [2]
