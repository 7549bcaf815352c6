"""A run's result: its clusters, each region's assignment, and the reads the app makes of them.

Words: a cluster's `slot` is its column in the model's output (core's `cluster` index of
`DiscoveryResult.cluster_names`); a cluster's `id` is its database row, unique over all runs.
Assignments point at cluster ids; new clusters made by a split get new slots past the model's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.orm import Session

from storage import models as m
from storage import workspace
from storage.image_classes import ImageClassStore
from storage.projects import image_row
from storage.records import (
    STATE_NO_ANOMALY,
    STATES,
    AssignedRegion,
    AssignmentInput,
    ClusterInfo,
    ClusterInput,
    ImageClass,
    NotFound,
    Page,
    StorageError,
    display_name,
    palette_color,
    region_state,
)


class ResultStore(ImageClassStore):
    """Clusters and assignments of runs: writing a result and reading it back."""

    def write_results(
        self, run_id: int, clusters: Sequence[ClusterInput], assignments: Iterable[AssignmentInput]
    ) -> list[ClusterInfo]:
        """Write a run's clusters and region assignments atomically (all or nothing).

        Replaces any previous result of the run (and its edit history). Unknown slots or region
        ids of another project raise StorageError and nothing is written.
        """
        with self._session(write=True) as session:
            run = self._get(session, m.Run, run_id, "run")
            slots = [c.slot for c in clusters]
            if len(set(slots)) != len(slots):
                raise StorageError(f"run {run_id}: cluster slots must be unique, got {slots}")
            session.execute(delete(m.Edit).where(m.Edit.run_id == run_id))
            session.execute(delete(m.Assignment).where(m.Assignment.run_id == run_id))
            session.execute(update(m.Cluster).where(m.Cluster.run_id == run_id).values(merged_into_id=None))
            session.execute(delete(m.Cluster).where(m.Cluster.run_id == run_id))
            rows = []
            for c in clusters:
                row = m.Cluster(
                    run_id=run_id,
                    slot=int(c.slot),
                    name=c.name or None,
                    color=c.color or palette_color(int(c.slot)),
                    is_normal=bool(c.is_normal),
                    engine_normal=bool(c.is_normal),
                    version=1,
                )
                session.add(row)
                rows.append(row)
            session.flush()
            by_slot = {r.slot: r.id for r in rows}
            project_regions = set(
                session.scalars(select(m.Region.id).where(m.Region.project_id == run.project_id)).all()
            )
            batch: list[dict[str, Any]] = []
            seen: set[int] = set()
            columns = sorted(by_slot)
            for a in assignments:
                if a.slot not in by_slot:
                    raise StorageError(f"run {run_id}: assignment of region {a.region_id} to unknown slot {a.slot}")
                if a.region_id not in project_regions:
                    raise StorageError(f"run {run_id}: region {a.region_id} is not a region of project {run.project_id}")
                if a.region_id in seen:
                    raise StorageError(f"run {run_id}: region {a.region_id} is assigned twice")
                seen.add(a.region_id)
                probabilities = None
                if a.probabilities is not None:
                    probabilities = np.asarray(a.probabilities, dtype=np.float32).ravel()
                    if columns != list(range(len(probabilities))):
                        raise StorageError(
                            f"run {run_id}: region {a.region_id} has {len(probabilities)} probabilities but the "
                            f"run's cluster slots are {columns} (column j must be slot j)"
                        )
                cluster_id = by_slot[a.slot]
                batch.append(
                    {
                        "run_id": run_id,
                        "region_id": int(a.region_id),
                        "cluster_id": cluster_id,
                        "original_cluster_id": cluster_id,
                        "confidence": float(a.confidence),
                        "umap_x": None if a.umap_x is None else float(a.umap_x),
                        "umap_y": None if a.umap_y is None else float(a.umap_y),
                        "embedding": None
                        if a.embedding is None
                        else np.asarray(a.embedding, dtype=np.float32).ravel().tobytes(),
                        "probabilities": None if probabilities is None else probabilities.tobytes(),
                        "is_normal": False,
                    }
                )
                if len(batch) >= workspace.INSERT_CHUNK:
                    session.execute(insert(m.Assignment), batch)
                    batch = []
            if batch:
                session.execute(insert(m.Assignment), batch)
        return self.list_clusters(run_id)

    # ------------------------------------------------------------ clusters
    def _cluster_infos(self, session: Session, where: Any, assignment_where: Any) -> list[ClusterInfo]:
        counts = (
            select(
                m.Assignment.cluster_id.label("cluster_id"),
                func.count(m.Assignment.id).label("regions"),
                func.count(func.distinct(m.Region.image_id)).label("images"),
                func.avg(m.Assignment.confidence).label("mean_confidence"),
                func.sum(case(((m.Region.area == 0) | m.Region.weak.is_(True), 1), else_=0)).label("no_anomaly"),
            )
            .join(m.Region, m.Region.id == m.Assignment.region_id)
            .where(assignment_where)
            .group_by(m.Assignment.cluster_id)
            .subquery()
        )
        rows = session.execute(
            select(m.Cluster, counts.c.regions, counts.c.images, counts.c.mean_confidence, counts.c.no_anomaly)
            .outerjoin(counts, counts.c.cluster_id == m.Cluster.id)
            .where(where)
            .order_by(m.Cluster.slot)
        ).all()
        return [
            ClusterInfo(
                id=c.id,
                run_id=c.run_id,
                slot=c.slot,
                name=c.name,
                display_name=display_name(c.name, c.slot),
                color=c.color,
                is_normal=bool(c.is_normal),
                merged_into_id=c.merged_into_id,
                version=c.version,
                region_count=int(regions or 0),
                image_count=int(images or 0),
                mean_confidence=None if mean is None else float(mean),
                no_anomaly_count=int(no_anomaly or 0),
                engine_normal=bool(c.engine_normal),
            )
            for c, regions, images, mean, no_anomaly in rows
        ]

    def list_clusters(self, run_id: int, *, include_merged: bool = False) -> list[ClusterInfo]:
        """Clusters of a run with counts, ordered by slot (merged-away ones hidden by default)."""
        with self._session() as session:
            where = m.Cluster.run_id == run_id
            if not include_merged:
                where = where & m.Cluster.merged_into_id.is_(None)
            return self._cluster_infos(session, where, m.Assignment.run_id == run_id)

    def get_cluster(self, cluster_id: int) -> ClusterInfo:
        """One cluster with counts; NotFound if absent."""
        with self._session() as session:
            found = self._cluster_infos(session, m.Cluster.id == cluster_id, m.Assignment.cluster_id == cluster_id)
            if not found:
                raise NotFound(f"cluster {cluster_id} does not exist")
            return found[0]

    # ------------------------------------------------------------ assigned regions
    def _assigned_query(self):  # type: ignore[no-untyped-def]
        return (
            select(m.Assignment, m.Region, m.Image.relpath, m.Cluster.name, m.Cluster.is_normal, m.Cluster.engine_normal)
            .join(m.Region, m.Region.id == m.Assignment.region_id)
            .join(m.Image, m.Image.id == m.Region.image_id)
            .join(m.Cluster, m.Cluster.id == m.Assignment.cluster_id)
        )

    def _assigned(
        self, a: m.Assignment, r: m.Region, relpath: str, cluster_name: str | None, cluster_normal: bool, engine_normal: bool
    ) -> AssignedRegion:
        return AssignedRegion(
            region=self._region_info(r, relpath),
            run_id=a.run_id,
            cluster_id=a.cluster_id,
            cluster_name=cluster_name,
            original_cluster_id=a.original_cluster_id,
            confidence=a.confidence,
            umap_x=a.umap_x,
            umap_y=a.umap_y,
            is_normal=bool(a.is_normal),
            state=region_state(r.area, bool(a.is_normal), bool(cluster_normal), bool(engine_normal), bool(r.weak)),
        )

    def cluster_regions(
        self, cluster_id: int, *, offset: int = 0, limit: int = 50, order: str = "confidence"
    ) -> Page:
        """One page of a cluster's regions; order "confidence" (lowest first: most doubtful),
        "-confidence", "score" (highest first) or "image"."""
        orders = {
            "confidence": (m.Assignment.confidence.asc(), m.Assignment.region_id),
            "-confidence": (m.Assignment.confidence.desc(), m.Assignment.region_id),
            "score": (m.Region.score.desc(), m.Assignment.region_id),
            "image": (m.Image.relpath, m.Region.index),
        }
        if order not in orders:
            raise StorageError(f"unknown order {order!r}; expected one of {sorted(orders)}")
        offset, limit = max(0, int(offset)), max(0, int(limit))
        with self._session() as session:
            self._get(session, m.Cluster, cluster_id, "cluster")
            total = session.scalar(select(func.count(m.Assignment.id)).where(m.Assignment.cluster_id == cluster_id))
            rows = session.execute(
                self._assigned_query()
                .where(m.Assignment.cluster_id == cluster_id)
                .order_by(*orders[order])
                .offset(offset)
                .limit(limit)
            ).all()
            return Page([self._assigned(*row) for row in rows], int(total or 0), offset, limit)

    def image_assignments(self, run_id: int, relpath: str) -> list[AssignedRegion]:
        """Regions of one image with their assignments in a run."""
        with self._session() as session:
            run = self._get(session, m.Run, run_id, "run")
            image = image_row(session, run.project_id, relpath)
            rows = session.execute(
                self._assigned_query()
                .where(m.Assignment.run_id == run_id, m.Region.image_id == image.id)
                .order_by(m.Region.index)
            ).all()
            return [self._assigned(*row) for row in rows]

    def run_assignments(self, run_id: int, state: str | None = None) -> list[AssignedRegion]:
        """Every assigned region of a run (or those of one state), ordered by image relpath and region index."""
        if state is not None and state not in STATES:
            raise StorageError(f"unknown region state {state!r}; expected one of {STATES}")
        with self._session() as session:
            self._get(session, m.Run, run_id, "run")
            rows = session.execute(
                self._assigned_query().where(m.Assignment.run_id == run_id).order_by(m.Image.relpath, m.Region.index)
            ).all()
            items = [self._assigned(*row) for row in rows]
        return items if state is None else [item for item in items if item.state == state]

    def state_counts(self, run_id: int) -> dict[str, dict[str, int]]:
        """Regions and images per state (defect, normal, marked normal, no anomaly found) in a run.

        An image counts under its image_classes state, so the image counts add up to the images.
        """
        regions = {state: 0 for state in STATES}
        for item in self.run_assignments(run_id):
            regions[item.state] += 1
        images = {state: 0 for state in STATES}
        for image in self.image_classes(run_id):
            images[image.state] += 1
        return {state: {"regions": regions[state], "images": images[state]} for state in STATES}

    def no_anomaly_images(self, run_id: int) -> list[ImageClass]:
        """Images of a run where MEBin found nothing (only the whole-image placeholder), by relpath."""
        return [image for image in self.image_classes(run_id) if image.state == STATE_NO_ANOMALY]

    def umap_points(self, run_id: int) -> pd.DataFrame:
        """One row per assigned region: region_id, image, x, y, cluster_id, cluster_name, color,
        slot, confidence, score, is_normal (region or its cluster normal), crop_path, state (region_state)."""
        with self._session() as session:
            rows = session.execute(
                select(
                    m.Assignment.region_id,
                    m.Image.relpath,
                    m.Assignment.umap_x,
                    m.Assignment.umap_y,
                    m.Assignment.cluster_id,
                    m.Cluster.name,
                    m.Cluster.color,
                    m.Cluster.slot,
                    m.Assignment.confidence,
                    m.Region.score,
                    m.Assignment.is_normal,
                    m.Cluster.is_normal,
                    m.Region.crop_path,
                    m.Region.area,
                    m.Cluster.engine_normal,
                    m.Region.weak,
                )
                .join(m.Region, m.Region.id == m.Assignment.region_id)
                .join(m.Image, m.Image.id == m.Region.image_id)
                .join(m.Cluster, m.Cluster.id == m.Assignment.cluster_id)
                .where(m.Assignment.run_id == run_id)
                .order_by(m.Assignment.region_id)
            ).all()
        columns = ["region_id", "image", "x", "y", "cluster_id", "name", "color", "slot", "confidence", "score",
                   "region_normal", "cluster_normal", "crop_path", "area", "engine_normal", "weak"]  # fmt: skip
        frame = pd.DataFrame(rows, columns=columns)
        frame["state"] = [region_state(int(row[13]), bool(row[10]), bool(row[11]), bool(row[14]), bool(row[15]))
                          for row in rows]
        frame["cluster_name"] = [display_name(row[5], row[7]) for row in rows]  # before pandas turns None into NaN
        frame["is_normal"] = frame["region_normal"].astype(bool) | frame["cluster_normal"].astype(bool)
        frame["crop_path"] = [self._absolute(row[12]) for row in rows]
        frame["x"] = frame["x"].astype(float)
        frame["y"] = frame["y"].astype(float)
        return frame[["region_id", "image", "x", "y", "cluster_id", "cluster_name", "color", "slot", "confidence",
                      "score", "is_normal", "crop_path", "state"]]  # fmt: skip

    def embeddings(self, run_id: int, region_ids: Sequence[int] | None = None) -> tuple[list[int], np.ndarray]:
        """Stored embeddings (region ids, N x D float32) of a run's regions that have one."""
        with self._session() as session:
            query = select(m.Assignment.region_id, m.Assignment.embedding).where(
                m.Assignment.run_id == run_id, m.Assignment.embedding.is_not(None)
            )
            if region_ids is not None:
                query = query.where(m.Assignment.region_id.in_(list(region_ids)))
            rows = session.execute(query.order_by(m.Assignment.region_id)).all()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [r for r, _ in rows], np.stack([np.frombuffer(e, dtype=np.float32) for _, e in rows])
