"""Estimating the number of novel classes from embeddings (the paper needs it given; we guess it).

A silhouette sweep: k-means for every k in a range on the L2-normalized embeddings of the
regions, scored by the mean silhouette (cosine distance); the k with the best score wins. The
whole table is kept as evidence, so the app and the CLI can show why that k was chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.config import EstimateConfig

__all__ = ["EstimateConfig", "ClassEstimate", "estimate_num_classes"]


@dataclass
class ClassEstimate:
    """The estimated number of classes with its evidence table."""

    k: int  # the estimate
    method: str  # how it was chosen
    n_samples: int  # embeddings the sweep ran on
    table: list[dict[str, float]] = field(default_factory=list)  # per k: silhouette, inertia
    note: str = ""  # why the sweep could not run, when it could not

    def describe(self) -> str:
        """Human-readable evidence: one line per k, the chosen one marked."""
        if not self.table:
            return f"k = {self.k} ({self.note or self.method})"
        lines = [f"estimated k = {self.k} by {self.method} on {self.n_samples} regions"]
        for row in self.table:
            mark = "  <-" if int(row["k"]) == self.k else ""
            lines.append(f"  k={int(row['k']):3d}  silhouette={row['silhouette']:.4f}{mark}")
        return "\n".join(lines)


def _normalize(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def estimate_num_classes(
    features: np.ndarray,
    config: EstimateConfig = EstimateConfig(),
    *,
    scores: np.ndarray | None = None,
    seed: int = 0,
) -> ClassEstimate:
    """Estimate how many clusters the embeddings [N, D] hold by a silhouette sweep over k.

    `scores` (anomaly score per region, 0..1) lets the sweep ignore likely false detections
    when at least k_min + 1 regions score min_score or more. Fewer than three distinct
    embeddings give k = 1 with a note instead of an error.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {features.shape}")
    if config.k_min < 2 or config.k_max < config.k_min:
        raise ValueError(f"need 2 <= k_min <= k_max, got k_min={config.k_min}, k_max={config.k_max}")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if len(scores) != len(features):
            raise ValueError(f"{len(scores)} scores for {len(features)} embeddings")
        keep = scores >= config.min_score
        if keep.sum() > config.k_min:
            features = features[keep]
    rng = np.random.default_rng(seed)
    if len(features) > config.max_samples:
        features = features[rng.choice(len(features), size=config.max_samples, replace=False)]
    features = _normalize(features)
    n = len(features)
    distinct = len(np.unique(np.round(features, 6), axis=0)) if n else 0
    if distinct < 3:
        return ClassEstimate(k=1, method="too few distinct regions", n_samples=n,
                             note=f"only {distinct} distinct region embeddings: one class assumed")
    k_max = min(config.k_max, distinct - 1)
    k_min = min(config.k_min, k_max)
    table = []
    for k in range(k_min, k_max + 1):
        kmeans = KMeans(n_clusters=k, n_init=config.n_init, random_state=seed)
        labels = kmeans.fit_predict(features)
        if len(np.unique(labels)) < 2:
            continue
        table.append({
            "k": float(k),
            "silhouette": float(silhouette_score(features, labels, metric="cosine")),
            "inertia": float(kmeans.inertia_),
        })
    if not table:
        return ClassEstimate(k=1, method="no split found", n_samples=n, note="k-means found a single cluster")
    best = max(table, key=lambda row: (row["silhouette"], -row["k"]))
    return ClassEstimate(k=int(best["k"]), method="silhouette sweep (k-means, cosine)", n_samples=n, table=table)
