"""Grouping regions on a representation: the MGViT embedding, the fixed descriptors, or both.

`--representation` chooses what everything that groups regions works on (the novel-class
assignment, the class-count estimate, the 2-D map, "split"):

- "vit": the paper's path, the trained MGViT's [CLS] embedding and its classifier heads;
- "descriptors": the standardized, group-weighted descriptors of core.grouping.descriptors alone;
- "hybrid": late fusion of both: the L2-normalized embedding and the descriptors, each scaled
  to unit total variance and weighted (`vit_weight`), side by side.

Grouping is spectral: a symmetric k-nearest-neighbour graph of the representation, its
Laplacian eigenvectors, then k-means on them, seeded by labeled regions when there are some
(their classes keep fixed centres; a region labeled normal seeds the normal slot). Regions the
detector scored low form the normal / false-detection slot when the lowest-scoring group is
clearly weaker than the rest, as pseudo-label correction does during training.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from core.config import REPRESENTATIONS, GroupingConfig

__all__ = ["LABELED_NORMAL", "REPRESENTATIONS", "GroupingConfig", "Grouping", "fuse_representation",
           "group_regions", "grouped_probabilities", "spectral_coordinates"]

@dataclass
class Grouping:
    """Groups of regions: column 0 of `probabilities` is the normal / false-detection slot."""

    labels: np.ndarray  # [N] int64 column index: 0 = normal slot, then base classes, then novel groups
    probabilities: np.ndarray  # [N, 1 + n_base + K] float64, rows sum to 1
    coordinates: np.ndarray  # [N, D] spectral coordinates the groups were found in
    normal_found: bool  # whether a low-score group was taken as the normal slot


def _unit_variance(block: np.ndarray) -> np.ndarray:
    block = np.asarray(block, dtype=np.float64)
    centred = block - block.mean(axis=0, keepdims=True)
    total = float(np.sqrt((centred ** 2).sum(axis=1).mean()))
    return centred / total if total > 1e-12 else centred


def fuse_representation(representation: str, embedding: np.ndarray | None, descriptors: np.ndarray | None,
                        vit_weight: float = 0.5) -> np.ndarray:
    """The matrix regions are grouped on for one representation (see the module docstring)."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {REPRESENTATIONS}, not {representation!r}")
    if representation in ("vit", "hybrid") and embedding is None:
        raise ValueError(f"the {representation} representation needs the MGViT embedding")
    if representation in ("descriptors", "hybrid") and descriptors is None:
        raise ValueError(f"the {representation} representation needs the region descriptors")
    parts = []
    if representation in ("vit", "hybrid"):
        embedding = np.asarray(embedding, dtype=np.float64)
        norms = np.linalg.norm(embedding, axis=1, keepdims=True)
        parts.append(_unit_variance(embedding / np.maximum(norms, 1e-12)) * (vit_weight if representation == "hybrid" else 1.0))
    if representation in ("descriptors", "hybrid"):
        parts.append(_unit_variance(descriptors))
    return np.concatenate(parts, axis=1).astype(np.float32)


def spectral_coordinates(features: np.ndarray, dimensions: int, neighbors: int, seed: int = 0) -> np.ndarray:
    """Row-normalized Laplacian eigenvectors of the symmetric kNN graph [N, dimensions]."""
    from sklearn.manifold import spectral_embedding
    from sklearn.neighbors import kneighbors_graph

    features = np.asarray(features, dtype=np.float64)
    n = len(features)
    dimensions = max(1, min(dimensions, n - 1))
    if n <= 3:
        return features[:, :dimensions] if features.shape[1] >= dimensions else np.pad(
            features, ((0, 0), (0, dimensions - features.shape[1])))
    graph = kneighbors_graph(features, n_neighbors=int(max(2, min(neighbors, n - 1))), include_self=False)
    graph = 0.5 * (graph + graph.T)
    with warnings.catch_warnings():  # well-separated groups leave the graph disconnected: that is fine
        warnings.simplefilter("ignore", UserWarning)
        coordinates = spectral_embedding(graph, n_components=dimensions, random_state=seed, drop_first=False)
    norms = np.linalg.norm(coordinates, axis=1, keepdims=True)
    return coordinates / np.maximum(norms, 1e-12)


def _seeded_kmeans(points: np.ndarray, k: int, fixed: np.ndarray, n_fixed: int, seed: int, n_init: int,
                   iterations: int = 100, active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means where points with fixed[i] >= 0 stay in their cluster (0..n_fixed-1); k free clusters more.

    active: the points that seed and move the centres (default all); the others are only assigned.
    """
    rng = np.random.default_rng(seed)
    free = fixed < 0
    active = np.ones(len(points), bool) if active is None else np.asarray(active, bool)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    base_centres = np.stack([points[fixed == c].mean(axis=0) for c in range(n_fixed)]) if n_fixed else \
        np.zeros((0, points.shape[1]))
    candidates = points[free & active] if (free & active).any() else points[free] if free.any() else points
    for _ in range(max(1, n_init)):
        centres = list(base_centres)
        # k-means++ seeding of the free centres, away from the fixed ones
        for _ in range(k):
            if centres:
                distance = ((candidates[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1).min(axis=1)
                weights = distance / distance.sum() if distance.sum() > 0 else None
                centres.append(candidates[rng.choice(len(candidates), p=weights)])
            else:
                centres.append(candidates[rng.integers(len(candidates))])
        centres = np.asarray(centres)
        labels = np.zeros(len(points), np.int64)
        for _ in range(iterations):
            distance = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
            new = np.where(free, distance.argmin(axis=1), fixed)
            if (new == labels).all() and _ > 0:
                break
            labels = new
            for c in range(len(centres)):
                members = points[(labels == c) & (active | ~free)]
                if len(members):
                    centres[c] = members.mean(axis=0)
        inertia = float((((points - centres[labels]) ** 2).sum(axis=1) * active).sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels.copy(), centres.copy())
    assert best is not None
    return best[1], best[2]


def group_regions(
    features: np.ndarray,
    k: int,
    *,
    scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    n_base: int = 0,
    config: GroupingConfig = GroupingConfig(),
    seed: int = 0,
    weak: np.ndarray | None = None,
) -> Grouping:
    """Group regions into the normal slot, the n_base labeled classes and k novel groups.

    labels: per region -1 (unlabeled), 0 (labeled normal) or 1..n_base (labeled base class,
    column index). scores: anomaly scores 0..1 deciding which novel group, if any, is the normal
    slot. weak: regions that stand in for an image where nothing cleared the floor (Region.weak);
    they are assigned to the groups the others form but do not shape them, while at least two
    regions per free group are not weak. Deterministic for a seed.
    """
    features = np.asarray(features, dtype=np.float64)
    n = len(features)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    labels = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    scores = np.ones(n) if scores is None else np.asarray(scores, dtype=np.float64)
    columns = 1 + n_base + k
    coordinates = spectral_coordinates(features, config.dimensions or columns, config.neighbors, seed)
    has_normal = bool((labels == 0).any())
    # fixed clusters: the labeled normal slot (if any) and every labeled base class present
    fixed_ids = ([0] if has_normal else []) + [c for c in range(1, n_base + 1) if (labels == c).any()]
    remap = {c: i for i, c in enumerate(fixed_ids)}
    fixed = np.array([remap.get(int(v), -1) for v in labels], np.int64)
    free_count = k + (0 if has_normal else 1)  # novel groups, plus one that may turn out normal
    free_count = max(1, min(free_count, int((fixed < 0).sum()) or 1))
    active = None if weak is None else ~np.asarray(weak, bool)
    if active is not None and int((active & (fixed < 0)).sum()) < 2 * free_count:
        active = None  # too few confident regions to form the groups alone
    assigned, centres = _seeded_kmeans(coordinates, free_count, fixed, len(fixed_ids), seed, config.n_init,
                                       active=active)
    # Column of every k-means cluster: fixed ones keep theirs; free ones are ordered by mean score.
    column_of = {i: c for i, c in enumerate(fixed_ids)}
    free_clusters = list(range(len(fixed_ids), len(fixed_ids) + free_count))
    mean_score = {c: float(scores[assigned == c].mean()) if (assigned == c).any() else 1.0 for c in free_clusters}
    ordered = sorted(free_clusters, key=lambda c: mean_score[c])
    normal_found = False
    if not has_normal and len(ordered) > 1:
        weakest, next_weakest = ordered[0], ordered[1]
        if mean_score[weakest] < config.normal_score and mean_score[next_weakest] - mean_score[weakest] >= config.normal_margin:
            column_of[weakest] = 0
            normal_found = True
            ordered = ordered[1:]
    alias: dict[int, int] = {}
    if not has_normal and not normal_found and free_count > k:
        # no false-detection group: group again into k novel groups only
        assigned, centres = _seeded_kmeans(coordinates, k, fixed, len(fixed_ids), seed, config.n_init, active=active)
        ordered = list(range(len(fixed_ids), len(fixed_ids) + k))
    for position, cluster in enumerate(ordered[:k]):
        column_of[cluster] = 1 + n_base + position
    for gone, kept in alias.items():
        column_of[gone] = column_of[kept]
    # soft assignment from the distances to every centre, summed per column
    distance = ((coordinates[:, None, :] - centres[None]) ** 2).sum(-1)
    scale = config.temperature * max(float(distance.min(axis=1).mean()), 1e-6) + 1e-6
    weights = np.exp(-(distance - distance.min(axis=1, keepdims=True)) / scale)
    probabilities = np.zeros((n, columns))
    for cluster, column in column_of.items():
        probabilities[:, column] += weights[:, cluster]
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    hard = np.array([column_of[int(c)] for c in assigned], np.int64)
    labeled = labels >= 0
    hard[labeled] = labels[labeled]
    probabilities[labeled] = np.eye(columns)[labels[labeled]]
    return Grouping(labels=hard, probabilities=probabilities, coordinates=coordinates, normal_found=normal_found)


def grouped_probabilities(
    representation: str,
    embedding: np.ndarray | None,
    descriptors: np.ndarray | None,
    k: int,
    *,
    scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    base_classes: tuple[str, ...] | list[str] = (),
    include_base: bool = False,
    config: GroupingConfig = GroupingConfig(),
    seed: int = 0,
    weak: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Region probabilities in core.grouping.predict's column order from grouping on a representation.

    Columns: [base classes (with include_base)] + normal slot + K novel classes, as
    predict_regions lays them out. labels: per region -1, NORMAL (-2) or a base-class index.
    weak: regions that are assigned to the groups but do not shape them (group_regions).
    Returns (probabilities, the representation grouped on, whether a normal group was found).
    """
    features = fuse_representation(representation, embedding, descriptors, config.vit_weight)
    n_base = len(base_classes)
    region_labels = np.full(len(features), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
    # group_regions' columns: 0 normal, 1..n_base base classes, then novel groups
    internal = np.where(region_labels == LABELED_NORMAL, 0, np.where(region_labels >= 0, region_labels + 1, -1))
    grouping = group_regions(features, k, scores=scores, labels=internal, n_base=n_base, config=config, seed=seed,
                             weak=weak)
    probabilities = grouping.probabilities
    normal, base, novel = probabilities[:, :1], probabilities[:, 1:1 + n_base], probabilities[:, 1 + n_base:]
    if include_base:
        ordered = np.concatenate([base, normal, novel], axis=1)
    else:
        ordered = np.concatenate([normal, novel], axis=1)
        ordered /= np.maximum(ordered.sum(axis=1, keepdims=True), 1e-12)
    return ordered, features, grouping.normal_found


#: Label value of a region the engineer marked normal / false detection (in `grouped_probabilities`).
LABELED_NORMAL = -2
