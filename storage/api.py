"""The storage API used by the app, the CLI and the job runner (no SQL outside storage/).

`open_workspace(path)` returns a `Store`; every method is one unit of work (one session, one
transaction) and returns frozen records from storage.records, never ORM objects. Engineer
edits (rename, recolor, merge, split, move, mark normal, promote, carry names) are logged in
the edit log and can be undone and redone per run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.records import ImageRecord, Region
from storage.records import (
    AssignedRegion,
    AssignmentInput,
    BinarizationInput,
    ClusterInfo,
    ClusterInput,
    ClusterMatch,
    EditInfo,
    ImageClass,
    ImageInfo,
    LabelInfo,
    MapInput,
    Page,
    ProjectInfo,
    RegionChange,
    RegionInfo,
    RunInfo,
)


def open_workspace(
    workspace: Path | str, database_url: str | None = None, *, migrate: bool = True
) -> "Store":
    """Open (creating if needed) a workspace folder and its database, upgraded to the newest schema.

    `workspace` is the folder holding crops, masks and (by default) studio.sqlite; a string
    containing "://" is taken as a database URL, with files under $STUDIO_WORKSPACE or ./workspace.
    The database is `database_url`, else $STUDIO_DATABASE_URL, else SQLite in the folder.
    """
    raise NotImplementedError


class Store:
    """A workspace: one database plus a folder of crop and mask files."""

    workspace: Path  # folder holding projects/<id>/crops, masks, maps ...
    url: str  # database URL (password hidden by str(); see .engine)

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Dispose of the engine's connections."""
        raise NotImplementedError

    def project_dir(self, project_id: int) -> Path:
        """Folder of one project's files: workspace/projects/<id>."""
        raise NotImplementedError

    # ------------------------------------------------------------ projects and images
    def create_project(self, name: str, data_root: Path | str, settings: dict[str, Any] | None = None) -> ProjectInfo:
        """Create a project for a data set folder; the name is stored exactly as given."""
        raise NotImplementedError

    def list_projects(self) -> list[ProjectInfo]:
        """All projects, oldest first."""
        raise NotImplementedError

    def get_project(self, project_id: int) -> ProjectInfo:
        """One project; NotFound if absent."""
        raise NotImplementedError

    def update_project_settings(self, project_id: int, settings: dict[str, Any]) -> ProjectInfo:
        """Replace a project's settings dict."""
        raise NotImplementedError

    def delete_project(self, project_id: int) -> None:
        """Delete a project with everything it holds (files of the workspace are kept)."""
        raise NotImplementedError

    def record_images(
        self, project_id: int, images: Sequence[ImageRecord], *, compute_hash: bool = True
    ) -> list[ImageInfo]:
        """Insert or update images by relpath (content hash = sha256 of the file, size, width, height)."""
        raise NotImplementedError

    def list_images(self, project_id: int, role: str | None = None) -> list[ImageInfo]:
        """Images of a project ordered by relpath, optionally only one role."""
        raise NotImplementedError

    def get_image(self, project_id: int, relpath: str) -> ImageInfo:
        """One image by relpath; NotFound if absent."""
        raise NotImplementedError

    # ------------------------------------------------------------ pipeline stage results
    def record_maps(self, project_id: int, maps: Sequence[MapInput]) -> int:
        """Record anomaly map files (one per image and source; re-recording replaces). Returns count."""
        raise NotImplementedError

    def list_maps(self, project_id: int) -> list[dict[str, Any]]:
        """Map records: image, source, path (absolute), stats."""
        raise NotImplementedError

    def record_binarizations(self, project_id: int, results: Sequence[BinarizationInput]) -> int:
        """Record MEBin results (threshold, count, counts per threshold, mask PNG). Returns count."""
        raise NotImplementedError

    def list_binarizations(self, project_id: int) -> list[dict[str, Any]]:
        """Binarization records: image, threshold, num_anomalies, counts, mask_path, settings."""
        raise NotImplementedError

    def record_regions(self, project_id: int, regions: Sequence[Region], *, replace: bool = True) -> list[RegionInfo]:
        """Store regions and their crop/mask PNGs under projects/<id>/crops and masks.

        With replace=True the images' previous regions (and their assignments and labels) are
        removed first, so re-extraction does not leave stale crops; returned in input order.
        """
        raise NotImplementedError

    def list_regions(self, project_id: int) -> list[RegionInfo]:
        """All regions of a project ordered by image relpath and index."""
        raise NotImplementedError

    def get_region(self, region_id: int) -> RegionInfo:
        """One region; NotFound if absent."""
        raise NotImplementedError

    def region_ids_by_key(self, project_id: int) -> dict[str, int]:
        """Map Region.key ("<relpath>#<index>") -> region id."""
        raise NotImplementedError

    # ------------------------------------------------------------ runs
    def start_run(
        self,
        project_id: int,
        kind: str,
        settings: dict[str, Any] | None = None,
        *,
        status: str = "queued",
        parent_run_id: int | None = None,
    ) -> RunInfo:
        """Create a run (queued, or running when the caller is the worker itself)."""
        raise NotImplementedError

    def mark_running(self, run_id: int, pid: int | None = None) -> RunInfo:
        """The worker took the run: status running, its pid and host, started_at."""
        raise NotImplementedError

    def update_progress(
        self,
        run_id: int,
        progress: float,
        stage: str | None = None,
        message: str | None = None,
        *,
        timings: dict[str, Any] | None = None,
        loss_history: list[Any] | None = None,
    ) -> bool:
        """Report progress (0..1) and a heartbeat; returns True when cancellation was requested."""
        raise NotImplementedError

    def finish_run(
        self,
        run_id: int,
        *,
        metrics: dict[str, Any] | None = None,
        timings: dict[str, Any] | None = None,
        checkpoint_path: str | None = None,
        loss_history: list[Any] | None = None,
        message: str | None = None,
    ) -> RunInfo:
        """Mark a run done (progress 1)."""
        raise NotImplementedError

    def fail_run(self, run_id: int, message: str) -> RunInfo:
        """Mark a run failed with a message for the engineer."""
        raise NotImplementedError

    def cancel_run(self, run_id: int) -> RunInfo:
        """Ask a run to stop: a queued run is cancelled at once, a running one gets the flag set."""
        raise NotImplementedError

    def mark_cancelled(self, run_id: int, message: str = "cancelled") -> RunInfo:
        """The worker stopped on request: status cancelled."""
        raise NotImplementedError

    def is_cancel_requested(self, run_id: int) -> bool:
        """The flag the job process polls."""
        raise NotImplementedError

    def get_run(self, run_id: int) -> RunInfo:
        """One run; NotFound if absent."""
        raise NotImplementedError

    def list_runs(self, project_id: int, kind: str | None = None, status: str | None = None) -> list[RunInfo]:
        """Runs of a project, newest first."""
        raise NotImplementedError

    def recover_stale_runs(self, stale_after_s: float = 600.0) -> list[int]:
        """Mark failed the queued/running runs whose process is gone; returns their ids.

        A run of this host whose pid no longer exists is stale at once; a run of another host
        (or without pid) is stale when its heartbeat is older than stale_after_s.
        """
        raise NotImplementedError

    def write_results(
        self, run_id: int, clusters: Sequence[ClusterInput], assignments: Sequence[AssignmentInput]
    ) -> list[ClusterInfo]:
        """Write a run's clusters and region assignments atomically (all or nothing).

        Replaces any previous result of the run. Unknown slots or region ids raise StorageError.
        """
        raise NotImplementedError

    # ------------------------------------------------------------ queries for the app
    def list_clusters(self, run_id: int, *, include_merged: bool = False) -> list[ClusterInfo]:
        """Clusters of a run with counts, ordered by slot (merged-away ones hidden by default)."""
        raise NotImplementedError

    def get_cluster(self, cluster_id: int) -> ClusterInfo:
        """One cluster with counts; NotFound if absent."""
        raise NotImplementedError

    def cluster_regions(
        self, cluster_id: int, *, offset: int = 0, limit: int = 50, order: str = "confidence"
    ) -> Page:
        """One page of a cluster's regions; order "confidence" (lowest first: most doubtful),
        "-confidence", "score" (highest first) or "image"."""
        raise NotImplementedError

    def image_regions(self, project_id: int, relpath: str, run_id: int | None = None) -> list[AssignedRegion] | list[RegionInfo]:
        """Regions of one image; with run_id, with their assignments in that run."""
        raise NotImplementedError

    def umap_points(self, run_id: int) -> pd.DataFrame:
        """One row per assigned region: region_id, image, x, y, cluster_id, cluster_name, color,
        slot, confidence, score, is_normal (region or its cluster normal), crop_path."""
        raise NotImplementedError

    def embeddings(self, run_id: int, region_ids: Sequence[int] | None = None) -> tuple[list[int], np.ndarray]:
        """Stored embeddings (region ids, N x D float32) of a run's regions that have one."""
        raise NotImplementedError

    def image_classes(self, run_id: int, tau: float = 100.0) -> list[ImageClass]:
        """Image-level classes from the current (edited) assignments by area-weighted fusion.

        Weights softmax(sqrt(area) / tau) over the image's regions; normal regions vote for
        NORMAL_CLASS; the class with the largest weight wins, its confidence is the sum of
        weight * region confidence. Images without regions are NORMAL_CLASS with confidence 1.
        """
        raise NotImplementedError

    # ------------------------------------------------------------ engineer edits (logged, undoable)
    def rename_cluster(
        self, cluster_id: int, name: str | None, *, expected_version: int | None = None, author: str | None = None
    ) -> ClusterInfo:
        """Rename a cluster (stored as given; None or "" clears the name)."""
        raise NotImplementedError

    def recolor_cluster(
        self, cluster_id: int, color: str, *, expected_version: int | None = None, author: str | None = None
    ) -> ClusterInfo:
        """Change a cluster's color ("#rrggbb")."""
        raise NotImplementedError

    def merge_clusters(
        self,
        target_id: int,
        source_ids: Sequence[int],
        *,
        expected_versions: dict[int, int] | None = None,
        author: str | None = None,
    ) -> ClusterInfo:
        """Move every region of the source clusters into the target; sources become merged_into target."""
        raise NotImplementedError

    def split_cluster(
        self,
        cluster_id: int,
        k: int,
        *,
        seed: int = 0,
        expected_version: int | None = None,
        author: str | None = None,
    ) -> list[ClusterInfo]:
        """Split a cluster into k by KMeans on the stored embeddings (UMAP x/y when none).

        The original cluster keeps the first part; k - 1 new clusters get new slots. Returns all k.
        """
        raise NotImplementedError

    def move_regions(
        self,
        run_id: int,
        region_ids: Sequence[int],
        target_cluster_id: int,
        *,
        expected_version: int | None = None,
        author: str | None = None,
    ) -> ClusterInfo:
        """Move regions to another cluster of the same run."""
        raise NotImplementedError

    def mark_regions_normal(
        self, run_id: int, region_ids: Sequence[int], normal: bool = True, *, author: str | None = None
    ) -> int:
        """Mark regions as normal / false detection (or clear the mark). Returns count changed."""
        raise NotImplementedError

    def mark_cluster_normal(
        self, cluster_id: int, normal: bool = True, *, expected_version: int | None = None, author: str | None = None
    ) -> ClusterInfo:
        """Mark a whole cluster as normal / false detection (or clear it)."""
        raise NotImplementedError

    def promote_to_labels(
        self, run_id: int, cluster_ids: Sequence[int] | None = None, *, author: str | None = None
    ) -> int:
        """Turn named clusters into engineer labels (region -> cluster name): the labeled set of
        the next run. Normal clusters and normal-marked regions are skipped. Returns label count."""
        raise NotImplementedError

    def carry_over_names(self, from_run_id: int, to_run_id: int, *, author: str | None = None) -> list[ClusterMatch]:
        """Give to_run's unnamed clusters the names (and normal flags) of their matches in from_run."""
        raise NotImplementedError

    def undo(self, run_id: int) -> EditInfo:
        """Revert the newest done edit of a run; NothingToUndo when there is none."""
        raise NotImplementedError

    def redo(self, run_id: int) -> EditInfo:
        """Re-apply the edit undone last; NothingToUndo when there is none."""
        raise NotImplementedError

    def can_undo(self, run_id: int) -> bool:
        raise NotImplementedError

    def can_redo(self, run_id: int) -> bool:
        raise NotImplementedError

    def edit_history(self, run_id: int) -> list[EditInfo]:
        """The run's edit log, oldest first."""
        raise NotImplementedError

    # ------------------------------------------------------------ labels
    def set_labels(
        self, project_id: int, labels: dict[int, str], source: str = "imported", *, author: str | None = None
    ) -> int:
        """Insert or replace labels region id -> class name for one source. Returns count."""
        raise NotImplementedError

    def list_labels(self, project_id: int, source: str | None = None) -> list[LabelInfo]:
        """Labels of a project, by region id."""
        raise NotImplementedError

    def labeled_set(self, project_id: int) -> dict[int, str]:
        """region id -> class name for training: engineer labels win over imported ones
        (ground-truth labels are for metrics and never included)."""
        raise NotImplementedError

    # ------------------------------------------------------------ run comparison
    def match_clusters(self, run_a: int, run_b: int) -> list[ClusterMatch]:
        """Match clusters across two runs of a project by shared regions (Hungarian on overlap)."""
        raise NotImplementedError

    def changed_regions(self, run_a: int, run_b: int) -> list[RegionChange]:
        """Regions whose cluster in run_b is not the match of their cluster in run_a."""
        raise NotImplementedError
