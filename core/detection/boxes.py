"""Scoring maps against box annotations (COCO), for real sets such as DeepPCB with no masks.

Pixel AUROC treats every pixel inside an annotated box as defective and every other pixel as
normal: an approximation (a box also holds good pixels around the defect), fair between
detectors because it is the same for all. Per-defect recall counts the boxes whose maximum
exceeds a threshold set on the pixels outside every box (1% of them above it by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from core.evaluation.coco import Annotation, CocoTruth, load_coco
from core.evaluation.metrics import pixel_auroc


def coco_truth_for_maps(path: Path | str, maps: Mapping[str, np.ndarray]) -> CocoTruth:
    """The COCO file read by core.evaluation.coco.load_coco against the maps' images and sizes."""
    return load_coco(path, {key: tuple(array.shape[:2]) for key, array in maps.items()})


def box_mask(shape: tuple[int, int], annotations: Sequence[Annotation]) -> np.ndarray:
    """0/1 uint8 mask with every annotation's box interior set."""
    mask = np.zeros(shape, np.uint8)
    for annotation in annotations:
        x0, y0, x1, y1 = annotation.box
        mask[y0:y1, x0:x1] = 1
    return mask


def box_scores(maps: Mapping[str, np.ndarray], truth: CocoTruth, false_positive_rate: float = 0.01) -> dict[str, float]:
    """Pixel AUROC (box interiors as positives) and per-defect recall at a pixel false-positive rate.

    Scored are the maps of the images the COCO file lists (an image it lists without annotations
    is all normal pixels)."""
    listed = set(truth.images)
    keys = [k for k in maps if k in listed]
    if not keys:
        raise ValueError("no map has box annotations")
    masks = [box_mask(maps[k].shape, truth.by_image.get(k, [])) for k in keys]
    outside = np.concatenate([maps[k][m == 0].ravel() for k, m in zip(keys, masks)])
    threshold = float(np.quantile(outside, 1 - false_positive_rate))
    found = total = 0
    for key in keys:
        for annotation in truth.by_image.get(key, []):
            x0, y0, x1, y1 = annotation.box
            region = maps[key][y0:y1, x0:x1]
            total += 1
            found += int(region.size > 0 and float(region.max()) > threshold)
    return {"pixel_auroc": pixel_auroc(masks, [maps[k] for k in keys]), "defect_recall": found / max(total, 1),
            "threshold": threshold, "defects": total}
