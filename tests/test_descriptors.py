"""Region descriptors on hand-made masks: the geometry orders shapes as a person would."""

import cv2
import numpy as np
import pytest

from core.grouping.descriptors import DESCRIPTOR_GROUPS, DescriptorConfig, combine, describe


def _disc() -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (32, 32), 14, 255, -1)
    return mask


def _line() -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    cv2.line(mask, (6, 30), (58, 34), 255, 2)
    return mask


def _ring() -> np.ndarray:
    mask = _disc()
    cv2.circle(mask, (32, 32), 10, 0, -1)
    return mask


def _edge_blob() -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (4, 32), 8, 255, -1)
    return mask


def _column(descriptors, name: str) -> np.ndarray:
    return descriptors.values[:, descriptors.names.index(name)]


@pytest.fixture(scope="module")
def shapes():
    masks = [_disc(), _line(), _ring(), _edge_blob()]
    gray = np.full((64, 64), 60, np.uint8)
    crops = []
    for mask in masks:
        crop = gray.copy()
        crop[mask > 0] = 200  # bright defects on a dark part
        crops.append(np.dstack([crop] * 3))
    boxes = [(100, 100, 164, 164)] * 3 + [(0, 100, 64, 164)]  # the edge blob's crop touches the image edge
    return describe(crops, masks, boxes=boxes, image_sizes=[(400, 400)] * 4, image_stats=[(80.0, 40.0)] * 4)


def test_elongation_orders_line_above_the_round_shapes(shapes):
    elongation = _column(shapes, "elongation")
    disc, line, ring, blob = elongation
    assert line > 0.8
    assert disc < 0.1 and ring < 0.1
    assert line > blob


def test_solidity_is_low_for_a_ring_and_high_for_a_disc(shapes):
    solidity = _column(shapes, "solidity")
    disc, line, ring, blob = solidity
    assert disc > 0.85
    assert ring < 0.6
    assert disc > ring and line > ring


def test_edge_distance_is_smallest_for_the_blob_at_the_edge(shapes):
    edge = _column(shapes, "edge_distance")
    assert edge[3] == pytest.approx(0.0, abs=1e-6)
    assert edge[:3].min() > 0.2


def test_compactness_and_parts(shapes):
    compactness = _column(shapes, "compactness")
    assert compactness[0] > compactness[1]  # disc more compact than a line
    assert np.allclose(np.exp(_column(shapes, "parts")), 1.0)  # each is one part


def test_polarity_follows_the_contrast_with_the_surroundings(shapes):
    assert (_column(shapes, "polarity") > 0.5).all()  # all bright on dark
    dark = np.full((64, 64), 200, np.uint8)
    dark[_disc() > 0] = 30
    flipped = describe([np.dstack([dark] * 3)], [_disc()], image_stats=[(150.0, 50.0)])
    assert _column(flipped, "polarity")[0] < -0.5


def test_groups_are_standardized_and_weighted_by_group_not_length(shapes):
    rng = np.random.default_rng(0)
    masks = [_disc(), _line(), _ring(), _edge_blob()] * 5
    crops = [np.dstack([rng.integers(0, 255, (64, 64), dtype=np.uint8)] * 3) for _ in masks]
    raw = describe(crops, masks)
    assert set(raw.groups) == set(DESCRIPTOR_GROUPS)
    assert raw.values.shape == (20, sum(s.stop - s.start for s in raw.groups.values()))
    config = DescriptorConfig(geometry=1.0, intensity=1.0, texture=1.0, hog=1.0)
    combined = combine(raw, config)
    start = 0
    for name in DESCRIPTOR_GROUPS:  # every group's total variance is at most its weight squared
        width = raw.groups[name].stop - raw.groups[name].start
        block = combined[:, start:start + width]
        start += width
        assert block.var(axis=0).sum() <= 1.0 + 1e-4
    assert np.isfinite(combined).all()


def test_empty_mask_and_tiny_crop_do_not_break():
    crops = [np.zeros((5, 7, 3), np.uint8), np.full((40, 30, 3), 9, np.uint8)]
    masks = [np.zeros((5, 7), np.uint8), np.zeros((40, 30), np.uint8)]
    raw = describe(crops, masks)
    assert np.isfinite(raw.values).all() and raw.values.shape[0] == 2


def test_worker_processes_give_the_same_descriptors(monkeypatch):
    """Large sets are described in forked processes, chunk by chunk: the same values as one process."""
    import core.grouping.descriptors as descriptors

    rng = np.random.default_rng(1)
    masks = [_disc(), _line(), _ring(), _edge_blob(), np.zeros((64, 64), np.uint8)] * 4
    crops = [np.dstack([rng.integers(0, 255, (64, 64), dtype=np.uint8)] * 3) for _ in masks]
    one = describe(crops, masks, workers=1)
    monkeypatch.setattr(descriptors, "_MIN_CHUNK", 5)
    many = describe(crops, masks, workers=3)
    assert np.array_equal(one.values, many.values) and one.groups == many.groups
