"""Image-level classes of a run: its regions' stored votes, carried along the engineer's edits,
fused by core.grouping.fusion.fuse_image (the storage side of docs/method.md stage 6)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from sqlalchemy import select

from core.config import DiscoveryConfig
from core.grouping.fusion import fuse_image
from storage import models as m
from storage.maps import MapStore
from storage.records import (
    NO_ANOMALY_CLASS,
    NORMAL_CLASS,
    STATE_DEFECT,
    STATE_MARKED_NORMAL,
    STATE_NO_ANOMALY,
    STATE_NORMAL,
    ImageClass,
    display_name,
)

#: Fusion temperature of runs whose settings do not say (core's published default).
DEFAULT_TAU = DiscoveryConfig().tau


class ImageClassStore(MapStore):
    """A run's image classes from its current (edited) assignments."""

    def run_tau(self, run_id: int) -> float:
        """The fusion temperature a run was made with (its settings' tau, else core's default)."""
        tau = self.get_run(run_id).settings.get("tau")  # type: ignore[attr-defined]
        return DEFAULT_TAU if tau is None else float(tau)

    def image_classes(self, run_id: int, tau: float | None = None) -> list[ImageClass]:
        """Image-level classes from the current (edited) assignments by core.grouping.fusion.fuse_image.

        Images whose regions are all whole-image placeholders are NO_ANOMALY_CLASS (state "no
        anomaly found"), images whose regions the engineer all marked normal are NORMAL_CLASS
        (state "marked normal"); the others are fused:

        tau defaults to the run's own (run_tau). Each region votes with its stored probability
        vector, its columns carried along the engineer's edits (see _current_vote); the fused
        argmax wins (ties: the defect class with the lowest cluster id, normal last) and its
        fused probability is the confidence. Unlabeled-role images without regions are
        NORMAL_CLASS with confidence 1.
        """
        tau = self.run_tau(run_id) if tau is None else float(tau)
        with self._session() as session:
            run = self._get(session, m.Run, run_id, "run")
            images = session.execute(
                select(m.Image.id, m.Image.relpath, m.Image.gt_class, m.Image.role)
                .where(m.Image.project_id == run.project_id)
                .order_by(m.Image.relpath)
            ).all()
            clusters = {c.id: c for c in session.scalars(select(m.Cluster).where(m.Cluster.run_id == run_id))}
            rows = session.execute(
                select(
                    m.Region.image_id,
                    m.Region.area,
                    m.Assignment.cluster_id,
                    m.Assignment.original_cluster_id,
                    m.Assignment.confidence,
                    m.Assignment.probabilities,
                    m.Assignment.is_normal,
                    m.Region.weak,
                )
                .join(m.Region, m.Region.id == m.Assignment.region_id)
                .where(m.Assignment.run_id == run_id)
                .order_by(m.Region.image_id, m.Region.index)
            ).all()
        votes = _Votes(clusters)
        per_image: dict[int, list[Any]] = defaultdict(list)
        for row in rows:
            per_image[row[0]].append(row)
        out = []
        for image_id, relpath, gt_class, role in images:
            regions = per_image.get(image_id, [])
            if not regions:
                if role != "unlabeled":
                    continue
                out.append(ImageClass(image_id, relpath, None, NORMAL_CLASS, 1.0, 0, gt_class, STATE_NORMAL))
                continue
            if all(row[6] for row in regions):  # the engineer marked every region normal
                out.append(ImageClass(image_id, relpath, None, NORMAL_CLASS, 1.0, len(regions), gt_class, STATE_MARKED_NORMAL))
                continue
            if all(int(row[1]) == 0 or row[7] for row in regions):  # only the placeholder or weak spot: nothing found
                out.append(ImageClass(image_id, relpath, None, NO_ANOMALY_CLASS, 1.0, len(regions), gt_class, STATE_NO_ANOMALY))
                continue
            region_votes = [votes.of(*row[2:7]) for row in regions]
            keys = sorted({k for vote in region_votes for k in vote if k is not None}) + [None]
            matrix = np.array([[vote.get(k, 0.0) for k in keys] for vote in region_votes], dtype=np.float64)
            fused = fuse_image(matrix, [max(int(row[1]), 0) for row in regions], tau)
            best = int(np.flatnonzero(fused >= fused.max() - 1e-12)[0])
            winner = keys[best]
            name = NORMAL_CLASS if winner is None else display_name(clusters[winner].name, clusters[winner].slot)
            state = STATE_DEFECT if winner is not None else STATE_NORMAL
            out.append(ImageClass(image_id, relpath, winner, name, float(fused[best]), len(regions), gt_class, state))
        return out


class _Votes:
    """A region's probability vector over the run's classes as they are now (edits applied).

    Key None is NORMAL_CLASS, any other key a current cluster id. Columns of the stored vector
    are the run's slots; a slot's mass goes to the cluster its own cluster was merged into
    (NORMAL_CLASS when that cluster is marked normal). A region the engineer moved (or a split
    put elsewhere) votes 1 for its cluster, a region marked normal votes 1 for NORMAL_CLASS,
    and rows written before probabilities were stored vote their confidence for their cluster.
    """

    def __init__(self, clusters: dict[int, m.Cluster]) -> None:
        self.clusters = clusters
        self.by_slot = {c.slot: c.id for c in clusters.values()}

    def current(self, cluster_id: int) -> int:
        """The cluster a cluster now lives in, following merges."""
        seen = set()
        while self.clusters[cluster_id].merged_into_id is not None and cluster_id not in seen:
            seen.add(cluster_id)
            cluster_id = self.clusters[cluster_id].merged_into_id  # type: ignore[assignment]
        return cluster_id

    def key(self, cluster_id: int) -> int | None:
        current = self.current(cluster_id)
        return None if self.clusters[current].is_normal else current

    def of(
        self, cluster_id: int, original_id: int | None, confidence: float, probabilities: bytes | None, marked: bool
    ) -> dict[int | None, float]:
        if marked:
            return {None: 1.0}
        moved = original_id is None or self.current(original_id) != cluster_id
        if probabilities is None or moved:
            return {self.key(cluster_id): 1.0 if moved else float(confidence)}
        vote: dict[int | None, float] = defaultdict(float)
        for slot, p in enumerate(np.frombuffer(probabilities, dtype=np.float32)):
            if p > 0 and slot in self.by_slot:
                vote[self.key(self.by_slot[slot])] += float(p)
        return vote
