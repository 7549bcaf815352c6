import numpy as np
import pytest

from core.evaluation.metrics import cluster_metrics, confusion, hungarian_accuracy, image_auroc, pixel_auroc


def test_perfect_clustering_with_permuted_ids():
    result = cluster_metrics(["a", "a", "b", "b", "c"], [2, 2, 0, 0, 1])
    assert result == pytest.approx({"nmi": 1.0, "ari": 1.0, "f1": 1.0})


def test_known_accuracy_more_clusters_than_classes():
    # Class a split over clusters 0 and 1: the best matching keeps 3 of a (cluster 0) and all b.
    y_true = ["a"] * 4 + ["b"] * 4
    y_pred = [0, 0, 0, 1, 2, 2, 2, 2]
    assert hungarian_accuracy(y_true, y_pred) == pytest.approx(7 / 8)


def test_known_accuracy_fewer_clusters_than_classes():
    y_true = ["a", "a", "b", "b", "c", "c"]
    y_pred = [0, 0, 1, 1, 1, 1]
    # Only two clusters: one of b or c is entirely unmatched.
    assert hungarian_accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    assert cluster_metrics(y_true, y_pred)["nmi"] < 1.0


def test_random_labels_score_near_zero_ari():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 2000)
    y_pred = rng.integers(0, 5, 2000)
    result = cluster_metrics(y_true, y_pred)
    assert abs(result["ari"]) < 0.02 and result["nmi"] < 0.02 and result["f1"] < 0.3


def test_confusion_counts():
    matrix = confusion(["x", "y", "y"], [1, 1, 0])
    assert matrix.tolist() == [[0, 1], [1, 1]]


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 labels"):
        cluster_metrics([1, 2, 3], [1, 2])


def test_aurocs():
    assert image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert image_auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert np.isnan(image_auroc([1, 1], [0.2, 0.3]))
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 255
    good_map = mask.astype(np.float32) + 0.1
    assert pixel_auroc([mask], [good_map]) == 1.0
    assert pixel_auroc([mask], [-good_map]) == 0.0


def test_component_recall_counts_each_defect_once_at_the_false_positive_threshold():
    from core.evaluation.metrics import component_recall

    rng = np.random.default_rng(0)
    maps = [rng.random((64, 64)).astype(np.float32) for _ in range(3)]
    masks = [np.zeros((64, 64), np.uint8) for _ in range(3)]
    masks[0][10:12, 10:12] = 1  # a tiny defect that the map lights up
    maps[0][11, 11] = 5.0
    masks[1][30:50, 30:50] = 1  # a large one it misses: background-level scores inside
    maps[1][30:50, 30:50] *= 0.5
    masks[1][5:7, 50:52] = 1  # and a second small one it finds
    maps[1][6, 51] = 3.0
    found = component_recall(masks, maps, false_positive_rate=0.01)
    assert found["components"] == 3
    assert found["recall"] == 2 / 3
    outside = np.concatenate([m[k == 0] for m, k in zip(maps, masks)])
    assert np.isclose(found["threshold"], np.quantile(outside, 0.99))
    assert np.isnan(component_recall([np.zeros((4, 4))], [np.zeros((4, 4))])["recall"])
    with pytest.raises(ValueError):
        component_recall([np.zeros((4, 4))], [np.zeros((4, 5))])
