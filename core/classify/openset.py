"""The open-set classifier of a bundle: named classes by nearest neighbours, "unknown" when far from all.

Fitted on a run's regions in its representation (the standardized, group-weighted descriptors) and
the engineer's final class of every region. For a new region and every named class c, d_c is the
mean distance to its k nearest regions of c; divided by the class's own typical d_c (the median of
its regions' leave-one-out d_c) it reads "how many typical neighbour distances away". The class is
the nearest in that unit; the region is **unknown** when even that is above the threshold, the
`quantile` of the same leave-one-out value over the run's own regions (so that share of the run's
regions would have been called known). Deterministic; no randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["OpenSetClassifier", "OpenSetResult", "fit_open_set"]

NEIGHBORS = 5  # k of the class distance
QUANTILE = 0.95  # share of the run's own regions the threshold calls known
TEMPERATURE = 0.5  # softmax over -normalized distance: the confidence among named classes


@dataclass
class OpenSetResult:
    """Per region: class index, its probability, the novelty (normalized distance) and the unknown flag."""

    classes: np.ndarray  # [M] int64 index into the classifier's classes
    confidence: np.ndarray  # [M] float64
    probabilities: np.ndarray  # [M, C] float64 over the named classes, rows sum to 1
    novelty: np.ndarray  # [M] float64 normalized distance to the nearest class
    unknown: np.ndarray  # [M] bool novelty above the threshold


@dataclass
class OpenSetClassifier:
    """Training features and labels, each class's distance unit and the calibrated threshold."""

    features: np.ndarray  # [N, D] float64
    labels: np.ndarray  # [N] int64 index into classes
    classes: list[str]
    unit: np.ndarray  # [C] typical leave-one-out class distance
    threshold: float
    neighbors: int = NEIGHBORS
    quantile: float = QUANTILE

    def _class_distances(self, features: np.ndarray, leave_out: bool = False) -> np.ndarray:
        """[M, C] mean distance to the k nearest training regions of each class (itself left out when asked)."""
        features = np.asarray(features, np.float64)
        out = np.full((len(features), len(self.classes)), np.inf)
        for c in range(len(self.classes)):
            members = self.features[self.labels == c]
            k = min(self.neighbors, len(members) - (1 if leave_out else 0))
            if k < 1 or not len(features):
                continue
            squared = ((features ** 2).sum(1)[:, None] + (members ** 2).sum(1)[None] - 2.0 * features @ members.T)
            distance = np.sqrt(np.maximum(squared, 0.0))
            if leave_out:  # a training region's own row: drop its zero distance to itself
                own = np.flatnonzero(self.labels == c)
                distance[own, np.arange(len(own))] = np.inf
            out[:, c] = np.sort(distance, axis=1)[:, :k].mean(axis=1)
        return out

    def novelty_of(self, distances: np.ndarray) -> np.ndarray:
        return distances / self.unit[None]

    def predict(self, features: np.ndarray) -> OpenSetResult:
        """Class, confidence, novelty and unknown flag of new regions in the classifier's space."""
        normalized = self.novelty_of(self._class_distances(features))
        classes = normalized.argmin(axis=1).astype(np.int64)
        novelty = normalized[np.arange(len(classes)), classes]
        logits = -np.where(np.isfinite(normalized), normalized, 1e6) / TEMPERATURE
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        return OpenSetResult(classes, probabilities[np.arange(len(classes)), classes], probabilities, novelty,
                             novelty > self.threshold)

    def state(self) -> dict:
        """What a bundle records beside the training rows (bundle.json)."""
        return {"neighbors": self.neighbors, "quantile": self.quantile, "threshold": float(self.threshold),
                "unit": [float(u) for u in self.unit]}


def fit_open_set(features: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                 neighbors: int = NEIGHBORS, quantile: float = QUANTILE, normalize: bool = True) -> OpenSetClassifier:
    """The classifier of regions `features` [N, D] with class index `labels` (into `classes`).

    normalize: distances in units of each class's own spread (default); False: plain distances.

    Raises ValueError when there are no regions or a label is out of range.
    """
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels, np.int64)
    if not len(features) or len(features) != len(labels):
        raise ValueError(f"{len(features)} regions and {len(labels)} labels: need at least one of each, alike")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"labels must index the {len(classes)} classes")
    model = OpenSetClassifier(features, labels, list(classes), np.ones(len(classes)), np.inf, neighbors, quantile)
    own = model._class_distances(features, leave_out=True)
    rows = np.arange(len(labels))
    units = np.array([np.median(own[rows[labels == c], c]) if np.isfinite(own[rows[labels == c], c]).any() else np.nan
                      for c in range(len(classes))])
    fallback = np.nanmedian(units) if np.isfinite(units).any() else 1.0
    model.unit = np.where(np.isfinite(units) & (units > 1e-12), units, fallback if fallback > 1e-12 else 1.0)
    if not normalize:
        model.unit = np.ones(len(classes))
    normalized = model.novelty_of(own).min(axis=1)
    finite = normalized[np.isfinite(normalized)]
    model.threshold = float(np.quantile(finite, quantile)) if len(finite) else np.inf
    return model
