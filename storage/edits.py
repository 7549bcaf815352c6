"""The engineer's edits of a run's clusters: rename, recolor, mark normal, merge, split, move,
mark regions normal and carry names over from an earlier run.

Each edit is one transaction, checked against the cluster versions the caller read, logged in
the run's edit log; below each operation sits its one (apply, revert) pair for undo and redo.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.grouping.clustering import split_by_kmeans
from storage import models as m
from storage.history import check_version, log_edit, move_assignments, register, touch
from storage.records import ClusterInfo, ClusterMatch, NotFound, StorageError, display_name, palette_color
from storage.image_classes import ImageClassStore
from storage.workspace import chunks


def set_region_normal(session: Session, run_id: int, region_ids: Sequence[int], value: bool) -> None:
    """Set or clear the engineer's "normal" mark on these regions of a run."""
    for chunk in chunks(list(region_ids)):
        session.execute(
            update(m.Assignment)
            .where(m.Assignment.run_id == run_id, m.Assignment.region_id.in_(chunk))
            .values(is_normal=value)
        )


# ---------------------------------------------------------------- apply/revert, one pair per kind


def _set_field(forward: bool):  # type: ignore[no-untyped-def]
    def step(session: Session, edit: m.Edit) -> set[int]:
        p = edit.payload
        setattr(session.get(m.Cluster, p["cluster_id"]), p["field"], p["after"] if forward else p["before"])
        return {p["cluster_id"]}

    return step


def _merge(forward: bool):  # type: ignore[no-untyped-def]
    def step(session: Session, edit: m.Edit) -> set[int]:
        p = edit.payload
        for source in p["sources"]:
            cluster = session.get(m.Cluster, source["cluster_id"])
            assert cluster is not None
            cluster.merged_into_id = p["target_id"] if forward else None
            move_assignments(session, edit.run_id, source["region_ids"], p["target_id"] if forward else source["cluster_id"])  # type: ignore[arg-type]
        return {p["target_id"], *(s["cluster_id"] for s in p["sources"])}

    return step


def _apply_split(session: Session, edit: m.Edit) -> set[int]:
    # Redo recreates the new clusters with the same ids, so later edits that name them still apply.
    p = edit.payload
    for part in p["parts"]:
        session.add(m.Cluster(id=part["cluster_id"], run_id=edit.run_id, slot=part["slot"], name=None,
                              color=part["color"], is_normal=False, version=1))  # fmt: skip
        session.flush()
        move_assignments(session, edit.run_id, part["region_ids"], part["cluster_id"])  # type: ignore[arg-type]
    return {p["cluster_id"]}


def _revert_split(session: Session, edit: m.Edit) -> set[int]:
    p = edit.payload
    for part in p["parts"]:
        move_assignments(session, edit.run_id, part["region_ids"], p["cluster_id"])  # type: ignore[arg-type]
        session.execute(delete(m.Cluster).where(m.Cluster.id == part["cluster_id"]))
    return {p["cluster_id"]}


def _apply_move(session: Session, edit: m.Edit) -> set[int]:
    p = edit.payload
    move_assignments(session, edit.run_id, [mv["region_id"] for mv in p["moves"]], p["target_id"])  # type: ignore[arg-type]
    return {p["target_id"], *(mv["from"] for mv in p["moves"])}


def _revert_move(session: Session, edit: m.Edit) -> set[int]:
    p = edit.payload
    by_source: dict[int, list[int]] = defaultdict(list)
    for mv in p["moves"]:
        by_source[mv["from"]].append(mv["region_id"])
    for source_id, ids in by_source.items():
        move_assignments(session, edit.run_id, ids, source_id)  # type: ignore[arg-type]
    return {p["target_id"], *by_source}


def _mark_regions(forward: bool):  # type: ignore[no-untyped-def]
    def step(session: Session, edit: m.Edit) -> set[int]:
        p = edit.payload
        set_region_normal(session, edit.run_id, p["region_ids"], p["after"] if forward else not p["after"])  # type: ignore[arg-type]
        return set(
            session.scalars(
                select(m.Assignment.cluster_id).where(
                    m.Assignment.run_id == edit.run_id, m.Assignment.region_id.in_(p["region_ids"])
                )
            )
        )

    return step


def _carry_names(forward: bool):  # type: ignore[no-untyped-def]
    def step(session: Session, edit: m.Edit) -> set[int]:
        touched = set()
        for change in edit.payload["changes"]:
            cluster = session.get(m.Cluster, change["cluster_id"])
            assert cluster is not None
            cluster.name = change["name_after" if forward else "name_before"]
            cluster.is_normal = change["normal_after" if forward else "normal_before"]
            touched.add(change["cluster_id"])
        return touched

    return step


register(("rename", "recolor", "mark_cluster_normal"), _set_field(True), _set_field(False))
register(("merge",), _merge(True), _merge(False))
register(("split",), _apply_split, _revert_split)
register(("move",), _apply_move, _revert_move)
register(("mark_regions_normal",), _mark_regions(True), _mark_regions(False))
register(("carry_names",), _carry_names(True), _carry_names(False))


# ---------------------------------------------------------------- the operations


class EditStore(ImageClassStore):
    """Engineer edits of a run's clusters and assignments (logged, undoable)."""

    def _cluster_for_edit(self, session: Session, cluster_id: int, expected: int | None) -> m.Cluster:
        cluster = self._get(session, m.Cluster, cluster_id, "cluster")
        check_version(cluster, expected)
        if cluster.merged_into_id is not None:
            raise StorageError(f"cluster {cluster_id} was merged into cluster {cluster.merged_into_id}; edit that one")
        return cluster

    def _set_cluster_field(
        self, kind: str, field: str, cluster_id: int, value: Any, expected: int | None, author: str | None
    ) -> ClusterInfo:
        with self._session(write=True) as session:
            cluster = self._cluster_for_edit(session, cluster_id, expected)
            before = getattr(cluster, field)
            if before != value:
                setattr(cluster, field, value)
                touch(cluster)
                run = session.get(m.Run, cluster.run_id)
                payload = {"cluster_id": cluster_id, "field": field, "before": before, "after": value}
                log_edit(session, run, kind, payload, author)  # type: ignore[arg-type]
        return self.get_cluster(cluster_id)

    def rename_cluster(
        self, cluster_id: int, name: str | None, *, expected_version: int | None = None, author: str | None = None
    ) -> ClusterInfo:
        """Rename a cluster (stored as given; None or "" clears the name)."""
        if name is not None and not isinstance(name, str):
            raise StorageError("a cluster name must be text")
        return self._set_cluster_field("rename", "name", cluster_id, name or None, expected_version, author)

    def recolor_cluster(
        self, cluster_id: int, color: str, *, expected_version: int | None = None, author: str | None = None
    ) -> ClusterInfo:
        """Change a cluster's color ("#rrggbb")."""
        text = str(color).strip()
        if not (len(text) in (4, 7) and text.startswith("#") and all(ch in "0123456789abcdefABCDEF" for ch in text[1:])):
            raise StorageError(f"color {color!r} is not a #rrggbb color")
        return self._set_cluster_field("recolor", "color", cluster_id, text.lower(), expected_version, author)

    def mark_cluster_normal(
        self, cluster_id: int, normal: bool = True, *, expected_version: int | None = None, author: str | None = None
    ) -> ClusterInfo:
        """Mark a whole cluster as normal / false detection (or clear it)."""
        return self._set_cluster_field("mark_cluster_normal", "is_normal", cluster_id, bool(normal), expected_version, author)

    def _region_ids_of(self, session: Session, cluster_id: int) -> list[int]:
        return list(
            session.scalars(
                select(m.Assignment.region_id).where(m.Assignment.cluster_id == cluster_id).order_by(m.Assignment.region_id)
            )
        )

    def merge_clusters(
        self,
        target_id: int,
        source_ids: Sequence[int],
        *,
        expected_versions: dict[int, int] | None = None,
        author: str | None = None,
    ) -> ClusterInfo:
        """Move every region of the source clusters into the target; sources become merged_into target."""
        expected_versions = expected_versions or {}
        sources = [s for s in dict.fromkeys(source_ids) if s != target_id]
        if not sources:
            raise StorageError("choose at least one other cluster to merge")
        with self._session(write=True) as session:
            target = self._cluster_for_edit(session, target_id, expected_versions.get(target_id))
            moved = []
            for source_id in sources:
                source = self._cluster_for_edit(session, source_id, expected_versions.get(source_id))
                if source.run_id != target.run_id:
                    raise StorageError(f"clusters {target_id} and {source_id} belong to different runs")
                region_ids = self._region_ids_of(session, source_id)
                move_assignments(session, target.run_id, region_ids, target_id)
                source.merged_into_id = target_id
                touch(source)
                moved.append({"cluster_id": source_id, "region_ids": region_ids})
            touch(target)
            run = session.get(m.Run, target.run_id)
            log_edit(session, run, "merge", {"target_id": target_id, "sources": moved}, author)  # type: ignore[arg-type]
        return self.get_cluster(target_id)

    def split_cluster(
        self,
        cluster_id: int,
        k: int,
        *,
        seed: int = 0,
        expected_version: int | None = None,
        author: str | None = None,
    ) -> list[ClusterInfo]:
        """Split a cluster into k by k-means (core.grouping.clustering) on the stored embeddings (UMAP x/y when none).

        The original cluster keeps the largest part; k - 1 new clusters get new slots. Returns all
        k. Undo removes the new clusters again.
        """
        k = int(k)
        if k < 2:
            raise StorageError("a split needs k >= 2")
        with self._session(write=True) as session:
            cluster = self._cluster_for_edit(session, cluster_id, expected_version)
            rows = session.execute(
                select(m.Assignment.region_id, m.Assignment.embedding, m.Assignment.umap_x, m.Assignment.umap_y)
                .where(m.Assignment.cluster_id == cluster_id)
                .order_by(m.Assignment.region_id)
            ).all()
            if len(rows) < k:
                raise StorageError(f"cluster {display_name(cluster.name, cluster.slot)!r} has {len(rows)} regions; cannot split into {k}")
            if all(r[1] is not None for r in rows):
                features = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            elif all(r[2] is not None and r[3] is not None for r in rows):
                features = np.array([[r[2], r[3]] for r in rows], dtype=np.float32)
            else:
                raise StorageError("this run stored neither embeddings nor UMAP coordinates for all regions; cannot split")
            parts = split_by_kmeans(features, k, seed)
            region_ids = np.array([r[0] for r in rows])
            next_slot = (session.scalar(select(func.max(m.Cluster.slot)).where(m.Cluster.run_id == cluster.run_id)) or 0) + 1
            logged = []
            for offset, part in enumerate(parts[1:]):
                slot = next_slot + offset
                new = m.Cluster(run_id=cluster.run_id, slot=slot, name=None, color=palette_color(slot), is_normal=False, version=1)
                session.add(new)
                session.flush()
                members = [int(x) for x in region_ids[part]]
                move_assignments(session, cluster.run_id, members, new.id)
                logged.append({"cluster_id": new.id, "slot": slot, "color": new.color, "region_ids": members})
            touch(cluster)
            run = session.get(m.Run, cluster.run_id)
            log_edit(session, run, "split", {"cluster_id": cluster_id, "k": k, "parts": logged}, author)  # type: ignore[arg-type]
            ids = [cluster_id] + [p["cluster_id"] for p in logged]
        return [self.get_cluster(i) for i in ids]

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
        with self._session(write=True) as session:
            run = self._get(session, m.Run, run_id, "run")
            target = self._cluster_for_edit(session, target_cluster_id, expected_version)
            if target.run_id != run_id:
                raise StorageError(f"cluster {target_cluster_id} is not a cluster of run {run_id}")
            current = dict(
                session.execute(
                    select(m.Assignment.region_id, m.Assignment.cluster_id).where(
                        m.Assignment.run_id == run_id, m.Assignment.region_id.in_(list(region_ids))
                    )
                ).all()
            )
            missing = [r for r in region_ids if r not in current]
            if missing:
                raise NotFound(f"region {missing[0]} has no assignment in run {run_id}")
            moves = [{"region_id": r, "from": c} for r, c in current.items() if c != target_cluster_id]
            if not moves:
                return self._cluster_infos(session, m.Cluster.id == target_cluster_id, m.Assignment.cluster_id == target_cluster_id)[0]
            move_assignments(session, run_id, [mv["region_id"] for mv in moves], target_cluster_id)
            for source_id in {mv["from"] for mv in moves}:
                touch(session.get(m.Cluster, source_id))  # type: ignore[arg-type]
            touch(target)
            log_edit(session, run, "move", {"target_id": target_cluster_id, "moves": moves}, author)
        return self.get_cluster(target_cluster_id)

    def mark_regions_normal(
        self, run_id: int, region_ids: Sequence[int], normal: bool = True, *, author: str | None = None
    ) -> int:
        """Mark regions as normal / false detection (or clear the mark). Returns count changed."""
        with self._session(write=True) as session:
            run = self._get(session, m.Run, run_id, "run")
            rows = session.execute(
                select(m.Assignment.region_id, m.Assignment.cluster_id).where(
                    m.Assignment.run_id == run_id,
                    m.Assignment.region_id.in_(list(region_ids)),
                    m.Assignment.is_normal.is_(not normal),
                )
            ).all()
            changed = sorted(r[0] for r in rows)
            if changed:
                set_region_normal(session, run_id, changed, bool(normal))
                for cluster_id in {r[1] for r in rows}:
                    touch(session.get(m.Cluster, cluster_id))  # type: ignore[arg-type]
                log_edit(session, run, "mark_regions_normal", {"region_ids": changed, "after": bool(normal)}, author)
            return len(changed)

    def carry_over_names(self, from_run_id: int, to_run_id: int, *, author: str | None = None) -> list[ClusterMatch]:
        """Give to_run's unnamed clusters the names (and normal flags) of their matches in from_run."""
        matches = self.match_clusters(from_run_id, to_run_id)  # type: ignore[attr-defined]
        with self._session(write=True) as session:
            run = self._get(session, m.Run, to_run_id, "run")
            changes = []
            for match in matches:
                source = session.get(m.Cluster, match.cluster_a_id)
                target = session.get(m.Cluster, match.cluster_b_id)
                assert source is not None and target is not None
                if target.name is not None or (source.name is None and not source.is_normal):
                    continue
                changes.append(
                    {
                        "cluster_id": target.id,
                        "name_before": target.name,
                        "name_after": source.name,
                        "normal_before": bool(target.is_normal),
                        "normal_after": bool(target.is_normal or source.is_normal),
                    }
                )
                target.name = source.name
                target.is_normal = bool(target.is_normal or source.is_normal)
                touch(target)
            if changes:
                log_edit(session, run, "carry_names", {"from_run_id": from_run_id, "changes": changes}, author)
        return matches
