"""Records returned by the storage API (frozen dataclasses, never ORM objects) and its errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

# The one name of the normal / false-detection class (exports, image classes, labels meaning
# "labeled normal"), core's.
from core.records import NORMAL_CLASS

# Run status values.
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
RUN_STATUSES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
# Label sources.
SOURCE_ENGINEER, SOURCE_IMPORTED, SOURCE_GROUND_TRUTH = "engineer", "imported", "ground_truth"
#: Class name of whole-image placeholders: images where MEBin found nothing (region area 0).
NO_ANOMALY_CLASS = "no anomaly found"
# The state of a region (and an image) in a run; three kinds of "not a defect" kept apart.
STATE_DEFECT = "defect"  # a defect class
STATE_NORMAL = "normal"  # predicted normal: in the engine's normal slot
STATE_MARKED_NORMAL = "marked normal"  # the engineer marked the region or its cluster normal
STATE_NO_ANOMALY = NO_ANOMALY_CLASS  # MEBin found nothing: the whole-image placeholder
STATES = (STATE_DEFECT, STATE_NORMAL, STATE_MARKED_NORMAL, STATE_NO_ANOMALY)


def region_state(area: int, marked_normal: bool, cluster_normal: bool, engine_normal: bool, weak: bool = False) -> str:
    """A region's state: the engineer's mark first, then "no anomaly found" (area 0, or a weak region:
    nothing in its image cleared the floor and its strongest spot stands in), then its cluster's."""
    if marked_normal:
        return STATE_MARKED_NORMAL
    if area == 0 or weak:
        return STATE_NO_ANOMALY
    if cluster_normal:
        return STATE_NORMAL if engine_normal else STATE_MARKED_NORMAL
    return STATE_DEFECT


#: Cluster colors by slot (D3 category10 then its light variants): distinct on a scatter plot.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip


def palette_color(slot: int) -> str:
    """The color a new cluster of a slot gets (stored with it; the engineer can recolor it)."""
    return PALETTE[slot % len(PALETTE)]


def display_name(name: str | None, slot: int) -> str:
    """A cluster's name, or "cluster <slot>" while it has none (also its class name in exports)."""
    return name if name else f"cluster {slot}"


class StorageError(Exception):
    """Base of the errors the storage API raises; messages are meant for the engineer."""


class NotFound(StorageError):
    """A project, run, cluster, region or image id that does not exist."""


class EditConflict(StorageError):
    """Someone else changed the same cluster since it was read; reload and retry."""


class NothingToUndo(StorageError):
    """Undo or redo asked for with an empty history."""


# ---------------------------------------------------------------- records returned


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    name: str
    data_root: str
    settings: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class ImageInfo:
    id: int
    project_id: int
    relpath: str
    content_hash: str | None
    file_size: int | None
    width: int | None
    height: int | None
    role: str
    gt_class: str | None


@dataclass(frozen=True)
class MapInput:
    """An anomaly map file already written by the caller, with its statistics."""

    relpath: str  # image relpath the map belongs to
    path: str  # map file (absolute, or relative to the workspace folder)
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. min, max, mean
    source: str = "imported"  # "imported" or the detector name


@dataclass(frozen=True)
class BinarizationInput:
    relpath: str  # image relpath
    threshold: int
    num_anomalies: int
    counts: Sequence[int] = ()
    mask: np.ndarray | None = None  # written as PNG under the workspace when given
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegionInfo:
    id: int
    image_id: int
    image: str  # image relpath
    index: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1/y1 exclusive)
    area: int
    score: float
    crop_path: str | None  # absolute path of the crop PNG
    mask_path: str | None  # absolute path of the mask PNG
    weak: bool = False  # its image had nothing above the floor: the map's strongest spot stands in

    @property
    def no_anomaly(self) -> bool:
        """No anomaly found in its image: the whole-image placeholder (no mask pixel) or the weak strongest spot."""
        return self.area == 0 or self.weak


@dataclass(frozen=True)
class RunInfo:
    id: int
    project_id: int
    kind: str
    settings: dict[str, Any]
    status: str
    progress: float
    stage: str | None
    message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    timings: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint_path: str | None
    loss_history: list[Any]
    pid: int | None
    host: str | None
    cancel_requested: bool
    parent_run_id: int | None
    queue: str | None = None
    worker: str | None = None
    device: str | None = None
    attempts: int = 0
    events: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class ClusterInput:
    """One cluster of a run's result, as the pipeline writes it."""

    slot: int  # the cluster's column in the model output (0..C-1, core's cluster index); normal slot: is_normal
    name: str | None = None
    color: str = ""  # "#rrggbb"; empty -> a palette color by slot
    is_normal: bool = False


@dataclass(frozen=True)
class AssignmentInput:
    """One region's place in a run's result."""

    region_id: int
    slot: int  # cluster slot (ClusterInput.slot)
    confidence: float
    umap_x: float | None = None
    umap_y: float | None = None
    embedding: np.ndarray | None = None  # 1-D float; stored as float32 bytes
    probabilities: np.ndarray | None = None  # 1-D, column j = cluster slot j (sums to 1); for fusion


@dataclass(frozen=True)
class ClusterInfo:
    """A cluster of a run: `id` the database id edits refer to, `slot` its model output column."""

    id: int
    run_id: int
    slot: int
    name: str | None
    display_name: str  # name, or "cluster <slot>" when unnamed
    color: str
    is_normal: bool
    merged_into_id: int | None
    version: int  # pass back as expected_version to detect concurrent edits
    region_count: int  # every assigned region, placeholders included
    image_count: int
    mean_confidence: float | None
    no_anomaly_count: int = 0  # of region_count: whole-image placeholders (no anomaly found)
    engine_normal: bool = False  # the engine's normal slot (is_normal alone may be the engineer's mark)


@dataclass(frozen=True)
class AssignedRegion:
    """A region with its assignment in one run."""

    region: RegionInfo
    run_id: int
    cluster_id: int
    cluster_name: str | None
    original_cluster_id: int | None
    confidence: float
    umap_x: float | None
    umap_y: float | None
    is_normal: bool  # the region itself is marked normal / false detection
    state: str = STATE_DEFECT  # region_state(): defect, normal, marked normal or no anomaly found


@dataclass(frozen=True)
class Page:
    items: list[AssignedRegion]
    total: int
    offset: int
    limit: int


@dataclass(frozen=True)
class ImageClass:
    image_id: int
    image: str  # relpath
    cluster_id: int | None  # None when the image is normal, has no region or no anomaly was found
    class_name: str  # cluster display name, NORMAL_CLASS or NO_ANOMALY_CLASS
    confidence: float
    region_count: int
    gt_class: str | None
    state: str = STATE_DEFECT  # defect, normal, marked normal (all its regions) or no anomaly found


@dataclass(frozen=True)
class LabelInfo:
    id: int
    region_id: int
    class_name: str
    source: str
    author: str | None
    created_at: datetime


@dataclass(frozen=True)
class EditInfo:
    id: int
    run_id: int | None
    kind: str
    payload: dict[str, Any]
    state: str  # "done", "undone" or "discarded" (a new edit after an undo drops the redo branch)
    author: str | None
    created_at: datetime


@dataclass(frozen=True)
class ClusterMatch:
    """A cluster of run B matched to a cluster of run A by shared regions (Hungarian)."""

    cluster_a_id: int
    cluster_b_id: int
    overlap: int  # regions in both


@dataclass(frozen=True)
class RegionChange:
    region_id: int
    image: str
    cluster_a_id: int
    cluster_a_name: str
    cluster_b_id: int
    cluster_b_name: str
