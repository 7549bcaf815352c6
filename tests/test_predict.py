"""Region prediction: novel-only softmax at temperature 0.1, names, confidence, 2-D map."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from core.config import PredictConfig
from core.grouping.predict import class_names, embed_2d, predict_regions, region_probabilities
from core.records import NORMAL_CLUSTER_NAME


def test_probabilities_are_over_novel_classes_at_temperature():
    # base logit 0.9 is ignored; novel [0.5, 0.4] / 0.1 = [5, 4] -> [e / (e + 1), 1 / (e + 1)]
    logits = np.array([[0.9, 0.5, 0.4]])
    p = region_probabilities(logits, n_base=1)
    e = math.e
    assert p[0] == pytest.approx([e / (e + 1), 1 / (e + 1)], abs=1e-12)


def test_include_base_keeps_every_column():
    logits = np.array([[0.0, 0.1, 0.0]])
    p = region_probabilities(logits, n_base=1, temperature=0.1, include_base=True)
    e = math.e
    assert p[0] == pytest.approx([1 / (e + 2), e / (e + 2), 1 / (e + 2)], abs=1e-12)


def test_names_put_the_normal_slot_first_among_novel_classes():
    assert class_names(3) == [NORMAL_CLUSTER_NAME, "class 1", "class 2"]
    assert class_names(2, ["scratch"], include_base=True) == ["scratch", NORMAL_CLUSTER_NAME, "class 1"]
    assert class_names(2, ["scratch"], include_base=False) == [NORMAL_CLUSTER_NAME, "class 1"]


def test_predict_regions_classes_and_confidence():
    logits = np.array([[0.0, 0.9, 0.1, 0.0], [0.0, 0.0, 0.0, 0.3], [0.5, 0.1, 0.1, 0.1]])
    features = np.eye(3, 8, dtype=np.float32)
    result = predict_regions(features, logits, n_base=1, base_classes=["crack"])
    assert result.names == [NORMAL_CLUSTER_NAME, "class 1", "class 2"]
    assert result.classes.tolist() == [0, 2, 0]  # third row: novel logits tie -> first (normal)
    assert result.normal_class == 0
    # row 1: novel [0, 0, 3] -> e^3 / (e^3 + 2)
    assert result.confidence[1] == pytest.approx(math.exp(3) / (math.exp(3) + 2))
    assert result.confidence[2] == pytest.approx(1 / 3)
    assert np.allclose(result.probabilities.sum(axis=1), 1.0)
    assert result.coordinates.shape == (3, 2)

    with_base = predict_regions(features, logits, 1, ["crack"], PredictConfig(include_base=True))
    assert with_base.names[0] == "crack" and with_base.normal_class == 1
    assert with_base.classes.tolist() == [1, 3, 0]


# From 6 regions on UMAP runs, and its first call compiles numba code for tens of seconds: slow.
@pytest.mark.parametrize("n", [1, 2, 3, 4, pytest.param(6, marks=pytest.mark.slow), pytest.param(12, marks=pytest.mark.slow)])
def test_embed_2d_is_safe_on_tiny_sets(n):
    features = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)
    coordinates = embed_2d(features, seed=0).coordinates
    assert coordinates.shape == (n, 2)
    assert coordinates.dtype == np.float32
    assert np.isfinite(coordinates).all()


@pytest.mark.slow  # UMAP: numba compiles for tens of seconds on its first call
def test_embed_2d_is_seeded_and_keeps_clusters_apart():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 0.05, size=(30, 16)) + np.eye(16)[0] * 3
    b = rng.normal(0, 0.05, size=(30, 16)) + np.eye(16)[1] * 3
    features = np.concatenate([a, b]).astype(np.float32)
    first = embed_2d(features, seed=3).coordinates
    second = embed_2d(features, seed=3).coordinates
    assert np.array_equal(first, second)
    centre_a, centre_b = first[:30].mean(axis=0), first[30:].mean(axis=0)
    spread = max(np.linalg.norm(first[:30] - centre_a, axis=1).max(), np.linalg.norm(first[30:] - centre_b, axis=1).max())
    assert np.linalg.norm(centre_a - centre_b) > spread


def test_bad_logits_are_refused():
    with pytest.raises(ValueError):
        region_probabilities(np.zeros((2, 2)), n_base=2)
    with pytest.raises(ValueError):
        region_probabilities(np.zeros(3), n_base=0)
    with pytest.raises(ValueError):
        predict_regions(np.zeros((2, 4)), np.zeros((3, 3)), n_base=0)


def test_an_image_with_only_a_weak_stand_in_region_is_normal_at_image_level():
    """Nothing cleared the floor in img_b: its weak strongest spot joins a defect group (region level) but
    the image is "no anomaly found", the normal slot, never a defect class; img_a keeps its fused class."""
    from core.grouping.predict import Predictions, assemble_results
    from core.records import Region

    def region(image: str, weak: bool) -> Region:
        return Region(image=image, index=0, box=(0, 0, 8, 8), image_crop=np.zeros((8, 8, 3), np.uint8),
                      mask_crop=np.full((8, 8), 255, np.uint8), area=64, score=0.3, weak=weak)

    regions = [region("img_a", False), region("img_b", True)]
    probabilities = np.array([[0.1, 0.8, 0.1], [0.05, 0.05, 0.9]])
    predictions = Predictions(probabilities=probabilities, classes=probabilities.argmax(1),
                              confidence=probabilities.max(1), names=["normal", "c1", "c2"], normal_class=0,
                              coordinates=np.zeros((2, 2), np.float32))
    binarization = {k: SimpleNamespace(threshold=10, num_anomalies=1) for k in ("img_a", "img_b")}
    region_results, image_results = assemble_results(
        regions, ["img_a", "img_b"], binarization, predictions, np.zeros((2, 4)), {}, 100.0, {}, {})
    assert [r.cluster for r in region_results] == [1, 2]
    assert [(i.cluster, i.confidence) for i in image_results] == [(1, 0.8), (0, 1.0)]
