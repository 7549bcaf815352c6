"""Quality metrics: clustering (NMI, ARI, Hungarian-matched F1) and detection (AUROC)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, roc_auc_score

from core.records import GOOD


def _codes(labels: Sequence) -> np.ndarray:
    _, codes = np.unique(np.asarray([str(v) for v in labels]), return_inverse=True)
    return codes


def confusion(y_true: Sequence, y_pred: Sequence) -> np.ndarray:
    """Counts matrix [true class, predicted cluster] over the sorted distinct values of each."""
    t, p = _codes(y_true), _codes(y_pred)
    matrix = np.zeros((t.max() + 1, p.max() + 1), dtype=np.int64)
    np.add.at(matrix, (t, p), 1)
    return matrix


def hungarian_accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Share of samples whose cluster maps to their class under the best one-to-one matching.

    With more clusters than classes (or fewer), unmatched clusters count as wrong: this equals
    the micro-F1 of docs/method.md's metrics.
    """
    matrix = confusion(y_true, y_pred)
    rows, cols = linear_sum_assignment(-matrix)
    return float(matrix[rows, cols].sum() / matrix.sum())


def cluster_metrics(y_true: Sequence, y_pred: Sequence) -> dict[str, float]:
    """NMI, ARI and Hungarian-matched F1 (= clustering accuracy) of predicted clusters."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        return {"nmi": float("nan"), "ari": float("nan"), "f1": float("nan")}
    t, p = _codes(y_true), _codes(y_pred)
    return {
        "nmi": float(normalized_mutual_info_score(t, p)),
        "ari": float(adjusted_rand_score(t, p)),
        "f1": hungarian_accuracy(y_true, y_pred),
    }


def image_auroc(is_anomalous: Sequence[bool], scores: Sequence[float]) -> float:
    """Image-level detection AUROC; NaN when only one kind of image is present."""
    labels = np.asarray(is_anomalous, dtype=bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def pixel_auroc(
    gt_masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], max_pixels: int = 4_000_000, seed: int = 0
) -> float:
    """Pixel-level AUROC over all images (masks > 0 are defect pixels), subsampled past max_pixels."""
    if len(gt_masks) != len(maps):
        raise ValueError(f"{len(gt_masks)} masks but {len(maps)} maps")
    labels, scores = [], []
    for mask, score_map in zip(gt_masks, maps):
        if mask.shape != score_map.shape:
            raise ValueError(f"mask shape {mask.shape} differs from map shape {score_map.shape}")
        labels.append((np.asarray(mask) > 0).ravel())
        scores.append(np.asarray(score_map, dtype=np.float32).ravel())
    if not labels:
        return float("nan")
    y = np.concatenate(labels)
    s = np.concatenate(scores)
    if y.size > max_pixels:
        pick = np.random.default_rng(seed).choice(y.size, size=max_pixels, replace=False)
        y, s = y[pick], s[pick]
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def component_recall(gt_masks: Sequence[np.ndarray], maps: Sequence[np.ndarray],
                     false_positive_rate: float = 0.01) -> dict[str, float]:
    """Share of ground-truth mask components found at a pixel false-positive rate.

    The threshold is the (1 - false_positive_rate) quantile of the maps over every defect-free
    pixel (outside all masks, defect-free images included); a component (8-connected) is found
    when any of its pixels scores above it. Pixel AUROC flatters small defects, which are a
    sliver of the pixels; this counts each defect once, whatever its size.
    """
    import cv2

    if len(gt_masks) != len(maps):
        raise ValueError(f"{len(gt_masks)} masks but {len(maps)} maps")
    if not len(maps):
        return {"recall": float("nan"), "components": 0, "threshold": float("nan")}
    masks = [np.asarray(m) > 0 for m in gt_masks]
    for mask, score_map in zip(masks, maps):
        if mask.shape != np.asarray(score_map).shape:
            raise ValueError(f"mask shape {mask.shape} differs from map shape {np.asarray(score_map).shape}")
    outside = np.concatenate([np.asarray(s, np.float32)[~m].ravel() for m, s in zip(masks, maps)])
    threshold = float(np.quantile(outside, 1 - false_positive_rate)) if outside.size else float("-inf")
    found = total = 0
    for mask, score_map in zip(masks, maps):
        if not mask.any():
            continue
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        above = np.asarray(score_map, np.float32) > threshold
        total += count - 1
        found += len(set(np.unique(labels[above & mask])) - {0})
    return {"recall": found / total if total else float("nan"), "components": total, "threshold": threshold}


# ------------------------------------------------------------------------------ the protocol


def protocol_levels(
    image_truth: Sequence[str | None],
    image_predicted: Sequence[Hashable],
    region_truth: Sequence[str | None],
    region_predicted: Sequence[Hashable],
) -> dict[str, tuple[list[str], list[Hashable]]]:
    """The (truth, predicted) pairs each metric is computed on, as metrics.json defines them.

    "image": defective images (truth known and not GOOD); "region": regions whose truth is a
    defect class (a region's truth is its image's class, or its own ground-truth label);
    "image_with_good": every image with known truth, GOOD counted as one more class.
    """
    if len(image_truth) != len(image_predicted) or len(region_truth) != len(region_predicted):
        raise ValueError("truth and predictions differ in length")

    def pairs(truth: Sequence[str | None], predicted: Sequence[Hashable], good: bool) -> tuple[list, list]:
        kept = [(t, p) for t, p in zip(truth, predicted) if t is not None and (good or t != GOOD)]
        return [t for t, _ in kept], [p for _, p in kept]

    return {
        "image": pairs(image_truth, image_predicted, good=False),
        "region": pairs(region_truth, region_predicted, good=False),
        "image_with_good": pairs(image_truth, image_predicted, good=True),
    }


def discovery_metrics(
    image_truth: Sequence[str | None],
    image_predicted: Sequence[Hashable],
    region_truth: Sequence[str | None],
    region_predicted: Sequence[Hashable],
    normal_prediction: Hashable,
) -> dict[str, Any] | None:
    """metrics.json of a run: NMI/ARI/F1 per protocol level and the share of normal images
    predicted as `normal_prediction` (the normal cluster); None when no image has ground truth."""
    if all(t is None for t in image_truth):
        return None
    levels = protocol_levels(image_truth, image_predicted, region_truth, region_predicted)

    def block(truth: list, predicted: list) -> dict[str, Any]:
        values: dict[str, Any] = cluster_metrics(truth, predicted) if truth else {"nmi": None, "ari": None, "f1": None}
        values = {k: (None if v is None or not np.isfinite(v) else float(v)) for k, v in values.items()}
        values["n"] = len(truth)
        return values

    normal = [p for t, p in zip(image_truth, image_predicted) if t == GOOD]
    share = float(np.mean([p == normal_prediction for p in normal])) if normal else None
    return {
        "image": block(*levels["image"]),
        "region": block(*levels["region"]),
        "normal_images": {"share_predicted_normal": share, "n": len(normal)},
        "image_with_good": block(*levels["image_with_good"]),
        "classes": sorted(set(levels["image"][0])),
    }
