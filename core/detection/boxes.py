"""Scoring maps against box annotations (COCO), for real sets such as DeepPCB with no masks.

Pixel AUROC treats every pixel inside an annotated box as defective and every other pixel as
normal: an approximation (a box also holds good pixels around the defect), fair between
detectors because it is the same for all. Per-defect recall counts the boxes whose maximum
exceeds a threshold set on the pixels outside every box (1% of them above it by default).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from core.evaluation.metrics import pixel_auroc


def read_coco_boxes(path: Path) -> dict[str, list[tuple[int, int, int, int, str]]]:
    """Boxes per image file name (as in the file: relative to the data set root): x, y, w, h, class."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    names = {c["id"]: c["name"] for c in data.get("categories", [])}
    files = {image["id"]: image["file_name"].replace("\\", "/") for image in data["images"]}
    boxes: dict[str, list[tuple[int, int, int, int, str]]] = {name: [] for name in files.values()}
    for annotation in data["annotations"]:
        x, y, w, h = (int(round(v)) for v in annotation["bbox"])
        boxes[files[annotation["image_id"]]].append((x, y, w, h, names.get(annotation["category_id"], "?")))
    return boxes


def box_mask(shape: tuple[int, int], boxes: list[tuple[int, int, int, int, str]]) -> np.ndarray:
    """0/1 uint8 mask with every box interior set."""
    mask = np.zeros(shape, np.uint8)
    for x, y, w, h, _ in boxes:
        mask[max(0, y):y + h, max(0, x):x + w] = 1
    return mask


def box_scores(maps: Mapping[str, np.ndarray], boxes: Mapping[str, list[tuple[int, int, int, int, str]]],
               false_positive_rate: float = 0.01) -> dict[str, float]:
    """Pixel AUROC (box interiors as positives) and per-defect recall at a pixel false-positive rate."""
    keys = [k for k in maps if k in boxes]
    if not keys:
        raise ValueError("no map has box annotations")
    masks = [box_mask(maps[k].shape, boxes[k]) for k in keys]
    outside = np.concatenate([maps[k][m == 0].ravel() for k, m in zip(keys, masks)])
    threshold = float(np.quantile(outside, 1 - false_positive_rate))
    found = total = 0
    for key in keys:
        for x, y, w, h, _ in boxes[key]:
            region = maps[key][max(0, y):y + h, max(0, x):x + w]
            total += 1
            found += int(region.size > 0 and float(region.max()) > threshold)
    return {"pixel_auroc": pixel_auroc(masks, [maps[k] for k in keys]), "defect_recall": found / max(total, 1),
            "threshold": threshold, "defects": total}
