"""The open-set classifier of a bundle: the named classes, and "unknown" for a region far from all of them.

Fitted on a run's regions in its representation (the standardized, group-weighted descriptors) and
the engineer's final class of every region. Two rules (`RULES`):

- **gaussian** (the default): each named class is a Gaussian of its regions, its covariance shrunk by
  `SHRINK` toward its average variance (so that a class of a few regions still has one). A region's
  distance to a class is its Mahalanobis distance, "how many of that class's own spreads away, in
  the directions the class varies in"; the class is the nearest. Measured against the rule below on
  DeepPCB and AITEX (docs/results.md): novelty AUROC of held-out types 0.853 -> 0.873 and 0.697 ->
  0.767, region accuracy 0.795 -> 0.805 and 0.556 -> 0.574.
- **neighbors** (model bundles of format version 1): d_c is the mean distance to the k nearest
  regions of c, divided by the class's own typical d_c (the median of its regions' leave-one-out d_c).

The region is **unknown** when its distance to the nearest class is above the threshold, the
`quantile` of the same distance over the run's own regions, each scored by a model that did not see
it (leave-one-out for neighbors; `FOLDS`-fold for gaussian), so that share of the run's regions
would have been called known. Deterministic; no randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["OpenSetClassifier", "OpenSetResult", "RULES", "fit_open_set"]

RULES = ("gaussian", "neighbors")
NEIGHBORS = 5  # neighbors rule: k of the class distance
SHRINK = 0.3  # gaussian rule: weight of the class's average variance in its covariance (0.1-0.5 measured alike)
FOLDS = 5  # gaussian rule: the threshold's calibration scores each fifth of the regions with the other four
QUANTILE = 0.95  # share of the run's own regions the threshold calls known
TEMPERATURE = 0.5  # softmax over -distance / (scale x this): the confidence among named classes


@dataclass
class OpenSetResult:
    """Per region: class index, its probability, the novelty (normalized distance) and the unknown flag."""

    classes: np.ndarray  # [M] int64 index into the classifier's classes
    confidence: np.ndarray  # [M] float64
    probabilities: np.ndarray  # [M, C] float64 over the named classes, rows sum to 1
    novelty: np.ndarray  # [M] float64 normalized distance to the nearest class
    unknown: np.ndarray  # [M] bool novelty above the threshold


def _gaussians(features: np.ndarray, labels: np.ndarray, count: int, shrink: float
               ) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per class (mean, precision matrix) of its rows, covariance shrunk toward its average variance; a class
    of one region takes the pooled within-class covariance; None for a class without rows."""
    dim = features.shape[1]
    means = [features[labels == c].mean(axis=0) if (labels == c).any() else None for c in range(count)]
    centred = [features[labels == c] - means[c] for c in range(count) if (labels == c).sum() > 1]
    pooled = (np.concatenate(centred).T @ np.concatenate(centred) / max(1, sum(len(x) - 1 for x in centred))
              if centred else np.eye(dim))

    def shrunk(covariance: np.ndarray) -> np.ndarray:
        average = float(np.trace(covariance)) / dim
        if average <= 1e-12:
            covariance, average = np.eye(dim), 1.0
        return (1 - shrink) * covariance + shrink * average * np.eye(dim)

    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for c in range(count):
        rows = features[labels == c]
        if not len(rows):
            out.append(None)
            continue
        covariance = np.cov(rows.T, ddof=1).reshape(dim, dim) if len(rows) > 1 else pooled
        out.append((means[c], np.linalg.pinv(shrunk(covariance), hermitian=True)))
    return out


def _mahalanobis(features: np.ndarray, gaussians: list[tuple[np.ndarray, np.ndarray] | None]) -> np.ndarray:
    """[M, C] Mahalanobis distance of each row to each class (inf for a class without rows)."""
    out = np.full((len(features), len(gaussians)), np.inf)
    for c, gaussian in enumerate(gaussians):
        if gaussian is None or not len(features):
            continue
        mean, precision = gaussian
        difference = features - mean
        out[:, c] = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", difference, precision, difference), 0.0))
    return out


@dataclass
class OpenSetClassifier:
    """Training features and labels, the rule, each class's distance unit and the calibrated threshold."""

    features: np.ndarray  # [N, D] float64
    labels: np.ndarray  # [N] int64 index into classes
    classes: list[str]
    unit: np.ndarray  # [C] neighbors: typical leave-one-out class distance; gaussian: ones
    threshold: float
    neighbors: int = NEIGHBORS
    quantile: float = QUANTILE
    rule: str = "gaussian"
    shrink: float = SHRINK
    scale: float = 1.0  # the confidence's distance unit: gaussian, the median own (out-of-fold) distance; neighbors 1
    _fitted: list | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"open-set rule must be one of {', '.join(RULES)}, not {self.rule!r}")

    def _class_distances(self, features: np.ndarray, leave_out: bool = False) -> np.ndarray:
        """[M, C] distance of each row to each class: Mahalanobis (gaussian) or the mean distance to the k
        nearest training regions of the class (neighbors; a training row's own distance left out when asked)."""
        features = np.asarray(features, np.float64)
        if self.rule == "gaussian":
            if self._fitted is None:
                self._fitted = _gaussians(self.features, self.labels, len(self.classes), self.shrink)
            return _mahalanobis(features, self._fitted)
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

    def own_novelty(self) -> np.ndarray:
        """[N] the novelty of each training region by a model that did not see it (what the threshold is the
        quantile of): leave-one-out (neighbors) or FOLDS-fold (gaussian; folds dealt within each class)."""
        if self.rule == "neighbors":
            return self.novelty_of(self._class_distances(self.features, leave_out=True)).min(axis=1)
        fold = np.empty(len(self.labels), np.int64)
        for c in range(len(self.classes)):
            members = np.flatnonzero(self.labels == c)
            fold[members] = np.arange(len(members)) % FOLDS
        out = np.empty(len(self.labels))
        for f in range(FOLDS):
            inside = fold == f
            if not inside.any():
                continue
            fitted = _gaussians(self.features[~inside], self.labels[~inside], len(self.classes), self.shrink)
            out[inside] = _mahalanobis(self.features[inside], fitted).min(axis=1)
        return out

    def predict(self, features: np.ndarray) -> OpenSetResult:
        """Class, confidence, novelty and unknown flag of new regions in the classifier's space."""
        normalized = self.novelty_of(self._class_distances(features))
        classes = normalized.argmin(axis=1).astype(np.int64)
        novelty = normalized[np.arange(len(classes)), classes]
        logits = -np.where(np.isfinite(normalized), normalized, 1e6) / (TEMPERATURE * self.scale)
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        return OpenSetResult(classes, probabilities[np.arange(len(classes)), classes], probabilities, novelty,
                             novelty > self.threshold)

    def describe(self, regions: int) -> str:
        """The unknown rule in words, with its threshold (what classification outputs state)."""
        if self.rule == "neighbors":
            distance = (f"distance to its nearest named class exceeds {self.threshold:.3f} class units (in "
                        f"{self.neighbors}-nearest-neighbour distance of that class)")
            scored = "each left out in turn"
        else:
            distance = (f"Mahalanobis distance to its nearest named class (each class a Gaussian of its regions, "
                        f"covariance shrunk {self.shrink:.0%} toward its average variance) exceeds {self.threshold:.3f}")
            scored = f"each scored by classes fitted on the other {FOLDS - 1} of {FOLDS} folds"
        return f"unknown when a region's {distance}, the value {self.quantile:.0%} of the run's own {regions} " \
               f"regions stay under ({scored})"

    def state(self) -> dict:
        """What a bundle records beside the training rows (bundle.json)."""
        return {"rule": self.rule, "neighbors": self.neighbors, "shrink": self.shrink, "quantile": self.quantile,
                "threshold": float(self.threshold), "scale": float(self.scale), "unit": [float(u) for u in self.unit]}


def fit_open_set(features: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                 neighbors: int = NEIGHBORS, quantile: float = QUANTILE, normalize: bool = True,
                 rule: str = "gaussian", shrink: float = SHRINK) -> OpenSetClassifier:
    """The classifier of regions `features` [N, D] with class index `labels` (into `classes`).

    rule: "gaussian" (default) or "neighbors"; normalize (neighbors only): distances in units of each
    class's own spread (default); False: plain distances.

    Raises ValueError when there are no regions, a label is out of range or the rule is unknown.
    """
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels, np.int64)
    if not len(features) or len(features) != len(labels):
        raise ValueError(f"{len(features)} regions and {len(labels)} labels: need at least one of each, alike")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"labels must index the {len(classes)} classes")
    model = OpenSetClassifier(features, labels, list(classes), np.ones(len(classes)), np.inf, neighbors, quantile,
                              rule, shrink)
    if rule == "neighbors" and normalize:
        own = model._class_distances(features, leave_out=True)
        rows = np.arange(len(labels))
        units = np.array([np.median(own[rows[labels == c], c]) if np.isfinite(own[rows[labels == c], c]).any()
                          else np.nan for c in range(len(classes))])
        fallback = np.nanmedian(units) if np.isfinite(units).any() else 1.0
        model.unit = np.where(np.isfinite(units) & (units > 1e-12), units, fallback if fallback > 1e-12 else 1.0)
    own = model.own_novelty()
    finite = own[np.isfinite(own)]
    model.threshold = float(np.quantile(finite, quantile)) if len(finite) else np.inf
    if rule == "gaussian" and len(finite) and np.median(finite) > 1e-12:
        # Mahalanobis distances grow with the dimension: a region one typical distance further from the second
        # class than from the first is e^2 more likely the first, whatever the descriptor count.
        model.scale = float(np.median(finite))
    return model
