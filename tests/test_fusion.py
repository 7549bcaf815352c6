"""Area-weighted fusion: hand-computed weights and probabilities."""

import math

import numpy as np
import pytest

from core.grouping.fusion import area_weights, fuse_image, fuse_regions


def test_weights_are_softmax_of_sqrt_area_over_tau():
    # sqrt([100, 0]) / 10 = [1, 0] -> softmax = [e / (e + 1), 1 / (e + 1)]
    weights = area_weights([100, 0], tau=10)
    e = math.e
    assert weights == pytest.approx([e / (e + 1), 1 / (e + 1)], abs=1e-12)


def test_default_tau_is_100():
    # sqrt(400) / 100 = 0.2, sqrt(0) = 0 -> [e^0.2, 1] / (e^0.2 + 1)
    weights = area_weights([400, 0])
    a = math.exp(0.2)
    assert weights == pytest.approx([a / (a + 1), 1 / (a + 1)], abs=1e-12)


def test_fused_probabilities_are_the_weighted_sum():
    probabilities = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    fused = fuse_image(probabilities, [100, 0], tau=10)
    e = math.e
    assert fused == pytest.approx([e / (e + 1), 0.5 / (e + 1), 0.5 / (e + 1)], abs=1e-12)
    assert fused.sum() == pytest.approx(1.0)


def test_one_region_gives_its_own_probabilities():
    probabilities = np.array([[0.2, 0.3, 0.5]])
    assert fuse_image(probabilities, [12345], tau=1) == pytest.approx([0.2, 0.3, 0.5])


def test_equal_areas_average_the_regions():
    probabilities = np.array([[0.8, 0.2], [0.2, 0.8], [0.5, 0.5]])
    assert fuse_image(probabilities, [9, 9, 9]) == pytest.approx([0.5, 0.5])


def test_large_region_outvotes_small_confident_ones():
    # One big region for class 0 against two small ones for class 1, tau = 5:
    # logits sqrt([900, 4, 4]) / 5 = [6, 0.4, 0.4]
    probabilities = np.array([[0.6, 0.4], [0.0, 1.0], [0.0, 1.0]])
    fused = fuse_image(probabilities, [900, 4, 4], tau=5)
    w = np.exp([6.0, 0.4, 0.4]) / np.exp([6.0, 0.4, 0.4]).sum()
    assert fused == pytest.approx(w @ probabilities)
    assert fused.argmax() == 0


def test_fuse_regions_groups_by_image_in_order():
    keys = ["b.png", "a.png", "b.png"]
    probabilities = np.array([[1.0, 0.0], [0.3, 0.7], [0.0, 1.0]])
    fused = fuse_regions(keys, probabilities, [16, 1, 16], tau=100)
    assert list(fused) == ["b.png", "a.png"]
    assert fused["a.png"] == pytest.approx([0.3, 0.7])
    assert fused["b.png"] == pytest.approx([0.5, 0.5])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        area_weights([1, 2], tau=0)
    with pytest.raises(ValueError):
        area_weights([])
    with pytest.raises(ValueError):
        fuse_image(np.ones((2, 3)) / 3, [1])
    with pytest.raises(ValueError):
        fuse_regions(["a"], np.ones((2, 2)) / 2, [1, 1])
