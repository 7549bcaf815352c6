"""The open-set classifier of a bundle: the named classes, and "unknown" for a region far from all of them.

Fitted on a run's regions in its representation (the standardized, group-weighted descriptors) and
the engineer's final class of every region. Three rules (`RULES`):

- **subspace** (the default): each named class is a Gaussian of its regions whose covariance is shrunk
  by `SHRINK` toward one floor for all classes (the pooled within-class average variance). A region's
  class is the nearest by Mahalanobis distance within the run's principal subspace (the directions
  holding `SUBSPACE` of its regions' variance); its novelty is the distance, in all directions, to
  the nearest class. Why: a run names each class from 8-20 regions in ~190 dimensions, so a class's
  covariance is known only in the few directions its regions span. Shrunk toward its own average
  variance (the rule below), a mixed, broad class is near everything in the other directions and
  draws regions of tight classes (7 of 14 new holes on the demo); one floor for all classes and a
  choice made where the run's classes actually differ remove that pull, while a new type stays
  far in the directions the run never varied in. Measured against the rule below in one run
  (docs/results.md): demo image accuracy 0.549 -> 0.610, DeepPCB region accuracy 0.805 -> 0.813,
  novelty AUROC of held-out types DeepPCB 0.873 -> 0.877, AITEX 0.767 -> 0.795 (AITEX's accuracy
  0.598 -> 0.593 over three seeds).
- **gaussian** (model bundles of format version 2): the same Gaussians, each covariance shrunk toward
  its own average variance; class and novelty both by the distance in all directions.
- **neighbors** (model bundles of format version 1): d_c is the mean distance to the k nearest
  regions of c, divided by the class's own typical d_c (the median of its regions' leave-one-out d_c).

The region is **unknown** when its novelty is above the threshold, the `quantile` of the same
novelty over the run's own regions, each scored by a model that did not see it (leave-one-out for
neighbors; `FOLDS`-fold for the Gaussian rules), so that share of the run's regions would have been
called known. Deterministic; no randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["OpenSetClassifier", "OpenSetResult", "RULES", "SUBSPACE", "fit_open_set"]

RULES = ("subspace", "gaussian", "neighbors")
NEIGHBORS = 5  # neighbors rule: k of the class distance
SHRINK = 0.3  # Gaussian rules: weight of the floor variance in a class's covariance (0.1-0.5 measured alike)
SUBSPACE = 0.8  # subspace rule: share of the run's region variance the class is chosen in (0.8, 0.9, 0.95 measured)
FOLDS = 5  # Gaussian rules: the threshold's calibration scores each fifth of the regions with the other four
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


def _gaussians(features: np.ndarray, labels: np.ndarray, count: int, shrink: float, pooled_floor: bool = False
               ) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per class (mean, precision matrix) of its rows, covariance shrunk toward its own average variance, or with
    pooled_floor toward the pooled within-class average variance (one floor for all classes); a class of one
    region takes the pooled within-class covariance; None for a class without rows."""
    dim = features.shape[1]
    means = [features[labels == c].mean(axis=0) if (labels == c).any() else None for c in range(count)]
    centred = [features[labels == c] - means[c] for c in range(count) if (labels == c).sum() > 1]
    pooled = (np.concatenate(centred).T @ np.concatenate(centred) / max(1, sum(len(x) - 1 for x in centred))
              if centred else np.eye(dim))
    floor = float(np.trace(pooled)) / dim if pooled_floor else None

    def shrunk(covariance: np.ndarray) -> np.ndarray:
        average = float(np.trace(covariance)) / dim if floor is None else floor
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


@dataclass
class _Fitted:
    """A Gaussian rule's classes: in all directions (novelty; and the class, for "gaussian") and, for
    "subspace", in the principal subspace of the training rows (the class)."""

    full: list
    centre: np.ndarray | None = None  # subspace: the training rows' mean and [D, r] principal directions
    basis: np.ndarray | None = None
    sub: list | None = None

    def distances(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[M, C] distances to each class in all directions, and those the class is chosen by."""
        full = _mahalanobis(features, self.full)
        if self.basis is None:
            return full, full
        return full, _mahalanobis((features - self.centre) @ self.basis, self.sub)


def _fit(features: np.ndarray, labels: np.ndarray, count: int, rule: str, shrink: float, share: float) -> _Fitted:
    if rule == "gaussian":
        return _Fitted(_gaussians(features, labels, count, shrink))
    centre = features.mean(axis=0)
    _, singular, directions = np.linalg.svd(features - centre, full_matrices=False)
    energy = singular ** 2
    total = float(energy.sum())
    kept = int(np.searchsorted(np.cumsum(energy) / total, share) + 1) if total > 0 else 1
    basis = directions[:min(kept, len(directions))].T
    return _Fitted(_gaussians(features, labels, count, shrink, pooled_floor=True), centre, basis,
                   _gaussians((features - centre) @ basis, labels, count, shrink, pooled_floor=True))


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
    unit: np.ndarray  # [C] neighbors: typical leave-one-out class distance; Gaussian rules: ones
    threshold: float
    neighbors: int = NEIGHBORS
    quantile: float = QUANTILE
    rule: str = "subspace"
    shrink: float = SHRINK
    scale: float = 1.0  # the confidence's distance unit: Gaussian rules, the median own (out-of-fold) distance the
    # class is chosen by; neighbors 1
    subspace: float = SUBSPACE
    _fitted: _Fitted | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"open-set rule must be one of {', '.join(RULES)}, not {self.rule!r}")
        if not 0 < self.subspace <= 1:
            raise ValueError(f"subspace share must be in (0, 1], not {self.subspace}")

    def _class_distances(self, features: np.ndarray, leave_out: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """[M, C] distance of each row to each class in all directions (novelty) and the one the class is chosen
        by (the same array but for "subspace"): Mahalanobis (Gaussian rules) or the mean distance to the k nearest
        training regions of the class (neighbors; a training row's own distance left out when asked)."""
        features = np.asarray(features, np.float64)
        if self.rule != "neighbors":
            if self._fitted is None:
                self._fitted = _fit(self.features, self.labels, len(self.classes), self.rule, self.shrink,
                                    self.subspace)
            return self._fitted.distances(features)
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
        return out, out

    def novelty_of(self, distances: np.ndarray) -> np.ndarray:
        return distances / self.unit[None]

    def _own(self) -> tuple[np.ndarray, np.ndarray]:
        """[N] each training region's novelty and its distance to the class it would be given, by a model that
        did not see it: leave-one-out (neighbors) or FOLDS-fold (Gaussian rules; folds dealt within each class)."""
        if self.rule == "neighbors":
            own = self.novelty_of(self._class_distances(self.features, leave_out=True)[0]).min(axis=1)
            return own, own
        fold = np.empty(len(self.labels), np.int64)
        for c in range(len(self.classes)):
            members = np.flatnonzero(self.labels == c)
            fold[members] = np.arange(len(members)) % FOLDS
        novelty, chosen = np.empty(len(self.labels)), np.empty(len(self.labels))
        for f in range(FOLDS):
            inside = fold == f
            if not inside.any():
                continue
            fitted = _fit(self.features[~inside], self.labels[~inside], len(self.classes), self.rule, self.shrink,
                          self.subspace)
            full, choice = fitted.distances(self.features[inside])
            novelty[inside], chosen[inside] = full.min(axis=1), choice.min(axis=1)
        return novelty, chosen

    def own_novelty(self) -> np.ndarray:
        """[N] the novelty of each training region by a model that did not see it (what the threshold is the
        quantile of)."""
        return self._own()[0]

    def predict(self, features: np.ndarray) -> OpenSetResult:
        """Class, confidence, novelty and unknown flag of new regions in the classifier's space."""
        full, choice = self._class_distances(features)
        novelty = self.novelty_of(full).min(axis=1)
        choice = self.novelty_of(choice)
        classes = choice.argmin(axis=1).astype(np.int64)
        logits = -np.where(np.isfinite(choice), choice, 1e6) / (TEMPERATURE * self.scale)
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
        elif self.rule == "gaussian":
            distance = (f"Mahalanobis distance to its nearest named class (each class a Gaussian of its regions, "
                        f"covariance shrunk {self.shrink:.0%} toward its average variance) exceeds "
                        f"{self.threshold:.3f}")
            scored = f"each scored by classes fitted on the other {FOLDS - 1} of {FOLDS} folds"
        else:
            distance = (f"Mahalanobis distance, in all directions, to its nearest named class (each class a Gaussian "
                        f"of its regions, covariance shrunk {self.shrink:.0%} toward the classes' pooled average "
                        f"variance; the class itself chosen in the directions holding {self.subspace:.0%} of the "
                        f"regions' variance) exceeds {self.threshold:.3f}")
            scored = f"each scored by classes fitted on the other {FOLDS - 1} of {FOLDS} folds"
        return f"unknown when a region's {distance}, the value {self.quantile:.0%} of the run's own {regions} " \
               f"regions stay under ({scored})"

    def state(self) -> dict:
        """What a bundle records beside the training rows (bundle.json)."""
        return {"rule": self.rule, "neighbors": self.neighbors, "shrink": self.shrink, "subspace": self.subspace,
                "quantile": self.quantile, "threshold": float(self.threshold), "scale": float(self.scale),
                "unit": [float(u) for u in self.unit]}


def fit_open_set(features: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                 neighbors: int = NEIGHBORS, quantile: float = QUANTILE, normalize: bool = True,
                 rule: str = "subspace", shrink: float = SHRINK, subspace: float = SUBSPACE) -> OpenSetClassifier:
    """The classifier of regions `features` [N, D] with class index `labels` (into `classes`).

    rule: one of RULES ("subspace", the default); normalize (neighbors only): distances in units of each
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
                              rule, shrink, subspace=subspace)
    if rule == "neighbors" and normalize:
        own = model._class_distances(features, leave_out=True)[0]
        rows = np.arange(len(labels))
        units = np.array([np.median(own[rows[labels == c], c]) if np.isfinite(own[rows[labels == c], c]).any()
                          else np.nan for c in range(len(classes))])
        fallback = np.nanmedian(units) if np.isfinite(units).any() else 1.0
        model.unit = np.where(np.isfinite(units) & (units > 1e-12), units, fallback if fallback > 1e-12 else 1.0)
    own, chosen = model._own()
    finite = own[np.isfinite(own)]
    model.threshold = float(np.quantile(finite, quantile)) if len(finite) else np.inf
    chosen = chosen[np.isfinite(chosen)]
    if rule != "neighbors" and len(chosen) and np.median(chosen) > 1e-12:
        # Mahalanobis distances grow with the dimension: a region one typical distance further from the second
        # class than from the first is e^2 more likely the first, whatever the descriptor count.
        model.scale = float(np.median(chosen))
    return model
