"""The reads behind the Explore page's plot, fast at 50,000 regions and more.

A run's points split in two: what never changes after the run (each region's UMAP position,
image, confidence, score, crop and mask files: `umap_geometry`, read once per run) and what the
engineer's edits change (each region's cluster and normal mark, the clusters' names and colors:
read per revision by `umap_points`). Both are read with SQLAlchemy Core, column-wise, without ORM
objects; `cluster_versions` is the light fingerprint of a run's edited state.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sqlalchemy import select

from storage import models as m
from storage.records import display_name, region_state
from storage.results import ResultStore

GEOMETRY_COLUMNS = ["region_id", "image", "x", "y", "confidence", "score", "crop_path", "mask_path", "area", "weak"]
POINT_COLUMNS = ["region_id", "image", "x", "y", "cluster_id", "cluster_name", "color", "slot", "confidence", "score",
                 "is_normal", "crop_path", "mask_path", "state"]


def _columns(rows: list, names: list[str]) -> dict[str, list]:
    """Rows -> one list per column (empty lists without rows)."""
    return {n: list(c) for n, c in zip(names, zip(*rows))} if rows else {n: [] for n in names}


def _state_table() -> dict[int, str]:
    """region_state of each combination of (no area or weak, marked, cluster normal, engine normal), by a
    4-bit code, so a frame's states are looked up instead of computed region by region."""
    table = {}
    for code in range(16):
        empty, marked, cluster_normal, engine_normal = (bool(code & bit) for bit in (8, 4, 2, 1))
        table[code] = region_state(0 if empty else 1, marked, cluster_normal, engine_normal)
    return table


_STATES = _state_table()


class PointStore(ResultStore):
    def umap_geometry(self, run_id: int) -> pd.DataFrame:
        """What a run's points keep whatever the edits: region_id, image, x, y, confidence, score,
        crop_path, mask_path (absolute), area, weak; one row per assigned region, by region id."""
        with self._session() as session:
            rows = session.connection().execute(
                select(m.Assignment.region_id, m.Image.relpath, m.Assignment.umap_x, m.Assignment.umap_y,
                       m.Assignment.confidence, m.Region.score, m.Region.crop_path, m.Region.mask_path,
                       m.Region.area, m.Region.weak)
                .join(m.Region, m.Region.id == m.Assignment.region_id)
                .join(m.Image, m.Image.id == m.Region.image_id)
                .where(m.Assignment.run_id == run_id)
                .order_by(m.Assignment.region_id)
            ).all()
        data = _columns(rows, GEOMETRY_COLUMNS)
        data["crop_path"] = self._absolute_many(data["crop_path"])
        data["mask_path"] = self._absolute_many(data["mask_path"])
        frame = pd.DataFrame(data, columns=GEOMETRY_COLUMNS)
        for column in ("x", "y", "confidence", "score"):
            frame[column] = frame[column].astype(float)
        frame["weak"] = frame["weak"].astype(bool)
        return frame

    def cluster_versions(self, run_id: int) -> tuple[tuple[int, int], ...]:
        """(cluster id, version) of every cluster of a run, merged ones included: each edit, undo and
        redo bumps the versions it touches, so this changes exactly when the run's state does."""
        with self._session() as session:
            return tuple((int(i), int(v)) for i, v in session.connection().execute(
                select(m.Cluster.id, m.Cluster.version).where(m.Cluster.run_id == run_id).order_by(m.Cluster.id)))

    def umap_points(self, run_id: int, geometry: pd.DataFrame | None = None) -> pd.DataFrame:
        """One row per assigned region: region_id, image, x, y, cluster_id, cluster_name, color, slot,
        confidence, score, is_normal (region or its cluster normal), crop_path, mask_path, state
        (region_state). `geometry` is this run's umap_geometry when the caller keeps it."""
        geometry = self.umap_geometry(run_id) if geometry is None else geometry
        with self._session() as session:
            connection = session.connection()
            live = connection.execute(
                select(m.Assignment.region_id, m.Assignment.cluster_id, m.Assignment.is_normal)
                .where(m.Assignment.run_id == run_id).order_by(m.Assignment.region_id)).all()
            clusters = connection.execute(
                select(m.Cluster.id, m.Cluster.name, m.Cluster.color, m.Cluster.slot, m.Cluster.is_normal,
                       m.Cluster.engine_normal).where(m.Cluster.run_id == run_id)).all()
        assigned = _columns(live, ["region_id", "cluster_id", "marked"])
        if assigned["region_id"] != geometry["region_id"].tolist():
            raise ValueError(f"run {run_id}: the geometry given is not this run's")
        ids = pd.Series(np.asarray(assigned["cluster_id"], dtype=np.int64))
        frame = geometry[["region_id", "image", "x", "y"]].copy()
        frame["cluster_id"] = ids.to_numpy()
        for column, of in (("cluster_name", lambda c: display_name(c[1], c[3])), ("color", lambda c: c[2]),
                           ("slot", lambda c: c[3])):
            frame[column] = ids.map({c[0]: of(c) for c in clusters}).to_numpy()
        frame["confidence"], frame["score"] = geometry["confidence"], geometry["score"]
        marked = np.asarray(assigned["marked"], dtype=bool)
        cluster_normal = ids.map({c[0]: bool(c[4]) for c in clusters}).to_numpy(bool)
        engine_normal = ids.map({c[0]: bool(c[5]) for c in clusters}).to_numpy(bool)
        frame["is_normal"] = marked | cluster_normal
        frame["crop_path"], frame["mask_path"] = geometry["crop_path"], geometry["mask_path"]
        empty = (geometry["area"].to_numpy() == 0) | geometry["weak"].to_numpy(bool)
        codes = empty * 8 + marked * 4 + cluster_normal * 2 + engine_normal * 1
        frame["state"] = np.array([_STATES[c] for c in range(16)], dtype=object)[codes]
        return frame[POINT_COLUMNS]
