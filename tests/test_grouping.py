"""Spectral grouping on a representation: labeled regions keep their class, low-score groups are normal."""

import numpy as np
import pytest

from core.grouping.spectral import REPRESENTATIONS, fuse_representation, group_regions
from core.evaluation.metrics import cluster_metrics


def _blobs(k: int, per: int = 25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(k, 6))
    points = np.concatenate([c + rng.normal(0, 0.4, size=(per, 6)) for c in centres])
    return points, np.repeat(np.arange(k), per)


def test_groups_recover_blobs_deterministically():
    points, truth = _blobs(4)
    first = group_regions(points, 4, seed=1)
    again = group_regions(points, 4, seed=1)
    assert (first.labels == again.labels).all()
    assert cluster_metrics(truth, first.labels)["nmi"] > 0.95
    assert not first.normal_found and (first.labels != 0).all()  # no false detections: normal slot empty
    assert np.allclose(first.probabilities.sum(axis=1), 1.0)
    assert (first.probabilities.argmax(axis=1) == first.labels).mean() > 0.95


def test_low_score_group_becomes_the_normal_slot():
    points, truth = _blobs(4)
    scores = np.where(truth == 2, 0.1, 0.9)
    grouping = group_regions(points, 3, scores=scores, seed=0)
    assert grouping.normal_found
    assert (grouping.labels[truth == 2] == 0).all()
    assert set(grouping.labels[truth != 2]) == {1, 2, 3}


def test_labeled_regions_keep_their_class_and_labeled_normal_seeds_the_normal_slot():
    points, truth = _blobs(4)
    labels = np.full(len(points), -1)
    labels[truth == 0] = 1  # one base class, fully labeled
    labels[np.flatnonzero(truth == 3)[:5]] = 0  # five regions marked normal
    grouping = group_regions(points, 2, labels=labels, n_base=1, seed=0)
    assert grouping.probabilities.shape == (len(points), 1 + 1 + 2)
    assert (grouping.labels[truth == 0] == 1).all()
    assert (grouping.labels[truth == 3] == 0).all()  # the rest of that blob joins the labeled normals
    assert set(grouping.labels[(truth == 1) | (truth == 2)]) == {2, 3}


def test_fusion_needs_its_inputs_and_scales_parts_alike():
    embedding = np.random.default_rng(0).normal(size=(10, 8))
    descriptors = np.random.default_rng(1).normal(size=(10, 3)) * 100
    fused = fuse_representation("hybrid", embedding, descriptors, vit_weight=1.0)
    assert fused.shape == (10, 11)
    left, right = fused[:, :8], fused[:, 8:]
    assert (left ** 2).sum(axis=1).mean() == pytest.approx((right ** 2).sum(axis=1).mean(), rel=1e-4)
    assert set(REPRESENTATIONS) == {"vit", "descriptors", "hybrid"}
    with pytest.raises(ValueError, match="needs the region descriptors"):
        fuse_representation("descriptors", embedding, None)
    with pytest.raises(ValueError, match="representation must be one of"):
        fuse_representation("pixels", embedding, descriptors)


def test_grouped_probabilities_follow_the_prediction_columns():
    from core.grouping.spectral import LABELED_NORMAL, grouped_probabilities

    points, truth = _blobs(3)
    labels = np.full(len(points), -1)
    labels[truth == 0] = 0  # base class 0
    labels[np.flatnonzero(truth == 2)[:3]] = LABELED_NORMAL
    probabilities, features, _ = grouped_probabilities("descriptors", None, points, 2, labels=labels,
                                                       base_classes=["scratch"], include_base=True)
    assert probabilities.shape == (len(points), 1 + 1 + 2)  # scratch, normal, class 1, class 2
    assert (probabilities.argmax(axis=1)[truth == 0] == 0).all()
    assert (probabilities.argmax(axis=1)[truth == 2] == 1).all()
    assert np.allclose(probabilities.sum(axis=1), 1.0) and features.shape == points.shape


def test_weak_regions_are_assigned_but_do_not_take_a_group():
    """Three defect types and many weak stand-ins (images where nothing cleared the floor) that
    look alike: without the weak mark they claim a group of their own and two defect types merge."""
    points, truth = _blobs(3, per=20, seed=3)
    rng = np.random.default_rng(4)
    stand_ins = rng.normal(0, 4, size=(1, 6)) + rng.normal(0, 0.2, size=(40, 6))
    features = np.concatenate([points, stand_ins])
    weak = np.r_[np.zeros(len(points), bool), np.ones(len(stand_ins), bool)]
    scores = np.full(len(features), 0.9)
    marked = group_regions(features, 3, scores=scores, seed=0, weak=weak)
    plain = group_regions(features, 3, scores=scores, seed=0)
    assert cluster_metrics(truth, marked.labels[~weak])["nmi"] > 0.95
    assert cluster_metrics(truth, plain.labels[~weak])["nmi"] < 0.9
    assert set(marked.labels[weak]) <= set(marked.labels[~weak])  # every weak region joins a defect group
    too_few = np.ones(len(features), bool)
    too_few[:3] = False  # fewer than two confident regions per group: all shape the groups as before
    assert (group_regions(features, 3, scores=scores, seed=0, weak=too_few).labels == plain.labels).all()
