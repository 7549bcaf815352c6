"""Plain record types shared by the engine stages, storage and the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Role of an image in a data set.
ROLE_NORMAL = "normal"  # defect-free reference (MVTec train/good, plain folder normal/)
ROLE_UNLABELED = "unlabeled"  # an image to discover defect classes in

#: Ground-truth class name meaning "no defect" (MVTec convention; the folder name test/good).
GOOD = "good"

#: THE name of the normal class: the reserved normal / false-detection cluster of a run, and the
#: label value meaning "labeled normal".
NORMAL_CLASS = "normal"

#: THE display name of a run's reserved normal / false-detection cluster (its slot in the predictions).
NORMAL_CLUSTER_NAME = "normal / false detection"


def region_key(image: str, index: int) -> str:
    """Stable identifier of a region within a data set: "<image relpath>#<index>"."""
    return f"{image}#{index}"


@dataclass(frozen=True)
class ImageRecord:
    """One image of a data set, as found on disk."""

    path: Path  # absolute path of the image file
    relpath: str  # path relative to the data set root, POSIX separators; the image's key
    role: str  # ROLE_NORMAL or ROLE_UNLABELED
    gt_class: str | None = None  # ground-truth class from the layout, used only for metrics
    gt_mask_path: Path | None = None  # ground-truth defect mask, when the layout has one
    size: tuple[int, int] | None = None  # (height, width) in pixels, when known


@dataclass(frozen=True)
class LoadProblem:
    """A file that could not be used, with the reason, reported instead of crashing."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Manifest:
    """Every image of a data set plus the files that could not be read."""

    root: Path
    layout: str  # "mvtec" or "folder"
    images: list[ImageRecord]
    problems: list[LoadProblem] = field(default_factory=list)

    @property
    def normal(self) -> list[ImageRecord]:
        return [r for r in self.images if r.role == ROLE_NORMAL]

    @property
    def unlabeled(self) -> list[ImageRecord]:
        return [r for r in self.images if r.role == ROLE_UNLABELED]

    def has_ground_truth(self) -> bool:
        return any(r.gt_class is not None for r in self.unlabeled)


@dataclass
class Region:
    """An anomaly-centred square crop of one image (docs/method.md stage 3)."""

    image: str  # relpath of the image it comes from
    index: int  # 0-based rank within its image (largest box first)
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels, x1/y1 exclusive
    image_crop: np.ndarray  # H x W x 3 uint8 RGB patch
    mask_crop: np.ndarray  # H x W uint8 patch, 0 or 255
    area: int  # mask pixels inside the box
    score: float  # max of the normalized anomaly map inside the box / 255, in 0..1
    weak: bool = False  # nothing in its image cleared the floor: the map's strongest spot stands in (core.regions.crops.peak_box)

    @property
    def key(self) -> str:
        """Stable identifier of the region within a data set (see region_key)."""
        return region_key(self.image, self.index)
