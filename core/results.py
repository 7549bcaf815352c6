"""What the discovery pipeline's stages hand on and what a run produces: plain result records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.grouping.estimate import ClassEstimate
from core.regions.mebin import MEBinResult
from core.records import Region

if TYPE_CHECKING:
    from core.mgvit.heads import DiscoveryModel
    from core.mgvit.train import TrainProgress, TrainResult

__all__ = [
    "DiscoveryResult",
    "ImageResult",
    "LabelPlan",
    "MapSet",
    "PipelineProgress",
    "Prediction",
    "RegionResult",
]


@dataclass
class MapSet:
    """The inspected images with their anomaly maps on one global 0..255 scale (the maps stage's output)."""

    keys: list[str]  # image relpaths, in manifest order
    images: dict[str, np.ndarray]  # H x W x 3 uint8 RGB by key
    normalized: dict[str, np.ndarray]  # uint8 map at the image's size, normalized over the whole set
    normal_peaks: list[float] = field(default_factory=list)  # held-out normal images' map maxima, on that scale


@dataclass
class LabelPlan:
    """Which classes are known before training: an imported labeled set and user-given region labels."""

    base_classes: list[str]  # imported classes first, then names given to regions
    region_labels: dict[str, str]  # region key -> class name, only for regions that exist
    region_label_index: np.ndarray  # int64 per region: index into base_classes, -1 = unlabeled
    problems: list[str]  # labels that were ignored, with the reason

    @property
    def include_base(self) -> bool:
        """Named regions exist, so prediction also covers the base classes."""
        return bool(self.region_labels)


@dataclass
class Prediction:
    """Predicted classes of every region and, fused by area, of every image."""

    regions: list[RegionResult]
    images: list[ImageResult]
    cluster_names: list[str]  # names of the probability columns
    normal_cluster: int  # column of the normal class
    notes: list[str]  # how prediction had to deviate (e.g. why the 2-D map is PCA, not UMAP)


@dataclass
class PipelineProgress:
    """One progress report: the stage, how far it is, how far the whole run is."""

    stage: str  # one of core.progress.STAGES
    fraction: float  # 0..1 within the stage
    overall: float  # 0..1 over the whole run
    message: str = ""
    train: TrainProgress | None = None  # while training


@dataclass
class RegionResult:
    """One anomaly region with its predicted class and coordinates in the 2-D map."""

    region: Region  # crop, mask, box, area, score
    cluster: int  # column of `DiscoveryResult.cluster_names`
    confidence: float  # probability of that cluster
    probabilities: np.ndarray  # over DiscoveryResult.cluster_names, sums to 1
    embedding: np.ndarray  # L2-normalized CLS feature
    umap_x: float
    umap_y: float
    gt: str | None = None  # ground-truth class of the region's image, when known
    label: str | None = None  # class given by the user for this region, if any

    @property
    def key(self) -> str:
        return self.region.key

    @property
    def image(self) -> str:
        return self.region.image


@dataclass
class ImageResult:
    """One inspected image, classified by fusing its regions."""

    image: str  # relpath (the image's key)
    cluster: int
    confidence: float
    probabilities: np.ndarray
    n_regions: int
    gt: str | None  # ground-truth class, when the layout has one
    threshold: int  # binarization threshold on the normalized map's scale
    num_anomalies: int  # MEBin's estimated anomaly count
    score: float  # largest region score (0..1)


@dataclass
class DiscoveryResult:
    """Everything a discovery run produced."""

    regions: list[RegionResult]
    images: list[ImageResult]
    cluster_names: list[str]  # names of the probability columns
    normal_cluster: int  # column of the normal class (the reserved normal / false-detection slot)
    n_novel: int  # K, novel defect classes (without the normal slot)
    base_classes: list[str]
    binarization: dict[str, MEBinResult]  # image key -> MEBin (or Otsu) result
    normalized_maps: dict[str, np.ndarray]  # image key -> the uint8 map MEBin ran on (global scale)
    metrics: dict[str, Any] | None  # metrics.json as docs/architecture.md's output files say; None without ground truth
    timings: dict[str, float]  # seconds per stage
    estimate: ClassEstimate | None  # how K was estimated (None when given)
    model: DiscoveryModel | None  # None: the descriptors representation trains no model
    train_result: TrainResult  # history, epochs_done
    cancelled: bool = False  # training was cancelled; predictions come from the partial model
    problems: list[str] = field(default_factory=list)  # files left out, labels ignored, deviations: with reasons
    floor: float = 0.0  # the components cut's floor on the maps' 0..255 scale (core.regions.crops.set_floor)
