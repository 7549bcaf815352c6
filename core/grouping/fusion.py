"""Area-weighted region fusion (docs/method.md stage 6): image probabilities from its regions'.

weights = softmax(sqrt(mask pixel count) / tau) over an image's regions; the image's
probabilities are the weighted sum of its regions' probabilities. Large regions dominate, so
small over-detections cannot outvote the real defect even when they score high.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["FusionConfig", "area_weights", "fuse_image", "fuse_regions"]


@dataclass(frozen=True)
class FusionConfig:
    """Settings of the image fusion, with the published default."""

    tau: float = 100.0  # softmax temperature on sqrt(area): 100 on MVTec AD, 50 on MTD


def area_weights(areas: Sequence[float] | np.ndarray, tau: float = 100.0) -> np.ndarray:
    """softmax(sqrt(area) / tau) over one image's regions; float64, sums to 1."""
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    areas = np.asarray(areas, dtype=np.float64)
    if areas.ndim != 1 or areas.size == 0:
        raise ValueError("area_weights needs a non-empty 1-D sequence of areas")
    if (areas < 0).any():
        raise ValueError("region areas cannot be negative")
    logits = np.sqrt(areas) / tau
    logits -= logits.max()  # stable softmax
    weights = np.exp(logits)
    return weights / weights.sum()


def fuse_image(probabilities: np.ndarray, areas: Sequence[float] | np.ndarray, tau: float = 100.0) -> np.ndarray:
    """Fuse one image's region probabilities [n, C] into image probabilities [C].

    One region: its probabilities unchanged (the weight is exactly 1).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be [regions, classes], got shape {probabilities.shape}")
    if probabilities.shape[0] != len(areas):
        raise ValueError(f"{probabilities.shape[0]} probability rows but {len(areas)} areas")
    if probabilities.shape[0] == 1:
        return probabilities[0].copy()
    return area_weights(areas, tau) @ probabilities


def fuse_regions(
    image_keys: Sequence[str],
    probabilities: np.ndarray,
    areas: Sequence[float] | np.ndarray,
    tau: float = 100.0,
) -> dict[str, np.ndarray]:
    """Fuse the regions of many images at once: region i belongs to image_keys[i].

    Returns image key -> probabilities [C], images in order of first appearance.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64)
    if not (len(image_keys) == len(probabilities) == len(areas)):
        raise ValueError(
            f"{len(image_keys)} image keys, {len(probabilities)} probability rows and {len(areas)} areas differ"
        )
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(image_keys):
        groups.setdefault(key, []).append(index)
    return {key: fuse_image(probabilities[rows], areas[rows], tau) for key, rows in groups.items()}
