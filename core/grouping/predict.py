"""Prediction (docs/method.md stage 6): region probabilities, classes, confidences and a 2-D map.

Region probabilities are softmax(logits / 0.1) over the novel classes only (the paper's
protocol); the first novel slot is the reserved "normal / false detection" class. When the user
has named classes by labelling regions (they become base classes), prediction may cover base
classes as well (`include_base`), so named classes keep receiving regions after retraining.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.config import PredictConfig
from core.records import NORMAL_CLUSTER_NAME

if TYPE_CHECKING:
    from core.regions.mebin import MEBinResult
    from core.records import Region
    from core.results import ImageResult, RegionResult

__all__ = [
    "assemble_results",
    "PredictConfig",
    "Predictions",
    "class_names",
    "Map2D",
    "embed_2d",
    "predict_regions",
    "region_probabilities",
]



@dataclass
class Predictions:
    """Per-region outcome of prediction; columns of `probabilities` follow `names`."""

    probabilities: np.ndarray  # [N, C] float64, rows sum to 1
    classes: np.ndarray  # [N] int64 column index of the most probable class
    confidence: np.ndarray  # [N] float64 probability of that class
    names: list[str]  # C class names; index `normal_class` is the reserved normal slot
    normal_class: int  # column of "normal / false detection"
    coordinates: np.ndarray  # [N, 2] float32 UMAP (or PCA) coordinates of the embeddings
    notes: list[str] = field(default_factory=list)  # deviations, e.g. why the map is PCA's


def _softmax(values: np.ndarray) -> np.ndarray:
    values = values - values.max(axis=1, keepdims=True)
    exp = np.exp(values)
    return exp / exp.sum(axis=1, keepdims=True)


def region_probabilities(
    logits: np.ndarray, n_base: int, temperature: float = 0.1, include_base: bool = False
) -> np.ndarray:
    """softmax(logits[:, n_base:] / temperature) (or over all columns with include_base); float64."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [regions, classes], got shape {logits.shape}")
    if not 0 <= n_base < logits.shape[1]:
        raise ValueError(f"n_base={n_base} leaves no novel class among {logits.shape[1]} logits")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    columns = logits if include_base else logits[:, n_base:]
    return _softmax(columns / temperature)


def class_names(n_novel: int, base_classes: Sequence[str] = (), include_base: bool = False) -> list[str]:
    """Names of the probability columns: [base names...] + normal slot + "class 1".."class K"."""
    if n_novel < 1:
        raise ValueError("there must be at least the reserved normal novel class")
    novel = [NORMAL_CLUSTER_NAME] + [f"class {i}" for i in range(1, n_novel)]
    return (list(base_classes) if include_base else []) + novel


def _pca_2d(features: np.ndarray) -> np.ndarray:
    n = features.shape[0]
    out = np.zeros((n, 2), dtype=np.float32)
    if n < 2:
        return out
    centred = features - features.mean(axis=0, keepdims=True)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    take = min(2, vt.shape[0])
    out[:, :take] = (centred @ vt[:take].T).astype(np.float32)
    return out


@dataclass
class Map2D:
    """2-D coordinates of embeddings and how they were made."""

    coordinates: np.ndarray  # [N, 2] float32
    method: str  # "umap" or "pca"
    note: str = ""  # why PCA stands in for UMAP, when it does


def embed_2d(
    features: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0, min_points: int = 5
) -> Map2D:
    """2-D coordinates of embeddings [N, D] with umap-learn, seeded; PCA below `min_points`.

    n_neighbors is clamped to N - 1 and spectral initialisation is avoided on tiny sets, so any
    N >= 1 gives an [N, 2] float32 answer. Deterministic for a given seed. When UMAP cannot run
    (too few points, degenerate input) the map is PCA's and the note says why.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {features.shape}")
    n = features.shape[0]
    needed = max(min_points, 4)
    if n < needed:
        return Map2D(_pca_2d(features), "pca", f"2-D map by PCA: {n} region(s), UMAP needs at least {needed}")
    import umap  # imported lazily: it pulls numba-compiled code that is slow to load

    neighbors = int(max(2, min(n_neighbors, n - 1)))
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=neighbors,
        min_dist=min_dist,
        random_state=seed,
        init="spectral" if n > 3 * neighbors else "random",
        n_jobs=1,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coordinates = reducer.fit_transform(features)
    except (ValueError, TypeError) as error:  # degenerate inputs (e.g. all points identical)
        return Map2D(_pca_2d(features), "pca", f"2-D map by PCA: UMAP failed on these embeddings ({error})")
    coordinates = np.asarray(coordinates, dtype=np.float32)
    if not np.isfinite(coordinates).all():
        return Map2D(_pca_2d(features), "pca", "2-D map by PCA: UMAP gave non-finite coordinates")
    return Map2D(coordinates, "umap")


def predict_regions(
    features: np.ndarray,
    logits: np.ndarray,
    n_base: int,
    base_classes: Sequence[str] = (),
    config: PredictConfig = PredictConfig(),
    seed: int = 0,
    probabilities: np.ndarray | None = None,
) -> Predictions:
    """Probabilities, class, confidence and 2-D coordinates of every region.

    probabilities: given by a grouping on another representation (core.grouping.spectral), in the same
    column order; None = softmax of the heads' logits (the paper).
    """
    logits = np.asarray(logits)
    if len(features) != len(logits):
        raise ValueError(f"{len(features)} feature rows but {len(logits)} logit rows")
    if len(base_classes) != n_base:
        raise ValueError(f"{n_base} base classes expected, {len(base_classes)} names given")
    if probabilities is None:
        probabilities = region_probabilities(logits, n_base, config.temperature, config.include_base)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n_novel = logits.shape[1] - n_base
    names = class_names(n_novel, base_classes, config.include_base)
    classes = probabilities.argmax(axis=1).astype(np.int64)
    confidence = probabilities[np.arange(len(classes)), classes]
    embedding = embed_2d(
        features,
        n_neighbors=config.umap_neighbors,
        min_dist=config.umap_min_dist,
        seed=seed,
        min_points=config.umap_min_points,
    )
    return Predictions(
        probabilities=probabilities,
        classes=classes,
        confidence=confidence,
        names=names,
        normal_class=n_base if config.include_base else 0,
        coordinates=embedding.coordinates,
        notes=[embedding.note] if embedding.note else [],
    )


def assemble_results(
    regions: Sequence[Region],
    image_keys: Sequence[str],
    binarization: Mapping[str, MEBinResult],
    predictions: Predictions,
    embedding: np.ndarray,
    region_labels: Mapping[str, str],
    tau: float,
    ground_truth: Mapping[str, str | None],
    region_truth: Mapping[str, str],
) -> tuple[list[RegionResult], list[ImageResult]]:
    """One result per region (class, confidence, probabilities, 2-D position, truth, label) and
    one per image, its class fused from its regions' probabilities (core.grouping.fusion.fuse_image, tau).
    An image whose only region is a weak stand-in or the whole-image placeholder (nothing cleared the
    floor: "no anomaly found") is normal at image level, whatever group its stand-in region joined.

    A region's truth is its region-level annotation (COCO) when there is one, else its image's.
    """
    from core.grouping.fusion import fuse_image
    from core.results import ImageResult, RegionResult

    region_results = [
        RegionResult(
            region=region,
            cluster=int(predictions.classes[index]),
            confidence=float(predictions.confidence[index]),
            probabilities=predictions.probabilities[index],
            embedding=embedding[index],
            umap_x=float(predictions.coordinates[index, 0]),
            umap_y=float(predictions.coordinates[index, 1]),
            gt=region_truth.get(region.key, ground_truth.get(region.image)),
            label=region_labels.get(region.key),
        )
        for index, region in enumerate(regions)
    ]
    by_image: dict[str, list[int]] = {}
    for index, region in enumerate(regions):
        by_image.setdefault(region.image, []).append(index)
    image_results = []
    for key in image_keys:
        rows = by_image.get(key, [])
        if any(regions[i].area > 0 and not regions[i].weak for i in rows):
            fused = fuse_image(predictions.probabilities[rows], [regions[i].area for i in rows], tau)
        else:  # nothing rose above what normal images reach: no anomaly found, never a defect class
            fused = np.eye(len(predictions.names))[predictions.normal_class]
        cluster = int(fused.argmax())
        image_results.append(ImageResult(
            image=key, cluster=cluster, confidence=float(fused[cluster]), probabilities=fused,
            n_regions=len(rows), gt=ground_truth.get(key), threshold=int(binarization[key].threshold),
            num_anomalies=int(binarization[key].num_anomalies),
            score=float(max(regions[i].score for i in rows)),
        ))
    return region_results, image_results
