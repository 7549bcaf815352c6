"""Splitting one cluster into parts by k-means on its regions' features (the engineer's "split")."""

from __future__ import annotations

import numpy as np

__all__ = ["split_by_kmeans"]


def split_by_kmeans(features: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of `features` [N, D] in k parts by k-means, the largest part first.

    Ties in size go to the part k-means numbered first, so the order is deterministic for a
    seed. Every part is non-empty; raises ValueError when k < 2 or there are fewer rows than k.
    """
    from sklearn.cluster import KMeans

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [rows, dimensions], got shape {features.shape}")
    if k < 2:
        raise ValueError("a split needs k >= 2")
    if len(features) < k:
        raise ValueError(f"{len(features)} rows cannot be split into {k} parts")
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)
    parts = [np.flatnonzero(labels == part) for part in range(k)]
    order = sorted(range(k), key=lambda p: (-len(parts[p]), p))
    return [parts[p] for p in order if len(parts[p])]
