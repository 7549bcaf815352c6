"""Region labels (engineer, imported, ground truth) and the labeled set a retraining run learns.

`promote_to_labels` turns a run's named clusters and the regions marked normal into engineer
labels; it is an edit of the run, undoable like the cluster edits.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import models as m
from storage.history import log_edit, register
from storage.records import (
    NORMAL_CLASS,
    SOURCE_ENGINEER,
    SOURCE_GROUND_TRUTH,
    SOURCE_IMPORTED,
    STATE_DEFECT,
    STATE_MARKED_NORMAL,
    LabelInfo,
    NotFound,
    StorageError,
    region_state,
)
from storage.workspace import Workspace, aware, chunks

LABEL_SOURCES = (SOURCE_ENGINEER, SOURCE_IMPORTED, SOURCE_GROUND_TRUTH)


def apply_labels(
    session: Session, project_id: int, labels: dict[int, str | None], source: str, author: str | None
) -> None:
    """Set (or with None remove) one label per region for one source."""
    existing: dict[int, m.Label] = {}
    for chunk in chunks(list(labels)):
        for row in session.scalars(select(m.Label).where(m.Label.source == source, m.Label.region_id.in_(chunk))):
            existing[row.region_id] = row
    now = m.utcnow()
    for region_id, class_name in labels.items():
        row = existing.get(region_id)
        if class_name is None:
            if row is not None:
                session.delete(row)
        elif row is None:
            session.add(
                m.Label(project_id=project_id, region_id=region_id, class_name=class_name, source=source, author=author, created_at=now)
            )
        else:
            row.class_name, row.author, row.created_at = class_name, author, now


def _promote(forward: bool):  # type: ignore[no-untyped-def]
    def step(session: Session, edit: m.Edit) -> set[int]:
        key = "after" if forward else "before"
        labels = {c["region_id"]: c[key] for c in edit.payload["changes"]}
        apply_labels(session, edit.project_id, labels, SOURCE_ENGINEER, edit.author)
        return set()

    return step


register(("promote",), _promote(True), _promote(False))


class LabelStore(Workspace):
    """Labels per region and source, and the labeled set for training."""

    def set_labels(
        self, project_id: int, labels: dict[int, str], source: str = SOURCE_IMPORTED, *, author: str | None = None
    ) -> int:
        """Insert or replace labels region id -> class name for one source. Returns count."""
        if source not in LABEL_SOURCES:
            raise StorageError(f"unknown label source {source!r}; expected one of {LABEL_SOURCES}")
        with self._session(write=True) as session:
            self._get(session, m.Project, project_id, "project")
            known = set(session.scalars(select(m.Region.id).where(m.Region.project_id == project_id)))
            unknown = sorted(set(labels) - known)
            if unknown:
                raise NotFound(f"region {unknown[0]} is not a region of project {project_id}")
            apply_labels(session, project_id, dict(labels), source, author)
            return len(labels)

    def list_labels(self, project_id: int, source: str | None = None) -> list[LabelInfo]:
        """Labels of a project, by region id."""
        with self._session() as session:
            query = select(m.Label).where(m.Label.project_id == project_id)
            if source is not None:
                query = query.where(m.Label.source == source)
            return [
                LabelInfo(r.id, r.region_id, r.class_name, r.source, r.author, aware(r.created_at))  # type: ignore[arg-type]
                for r in session.scalars(query.order_by(m.Label.region_id, m.Label.source))
            ]

    def labeled_set(self, project_id: int) -> dict[int, str]:
        """region id -> class name for training: engineer labels win over imported ones
        (ground-truth labels are for metrics and never included). NORMAL_CLASS means labeled
        normal: the engine trains those regions as its normal class."""
        out: dict[int, str] = {}
        for label in self.list_labels(project_id, SOURCE_IMPORTED):
            out[label.region_id] = label.class_name
        for label in self.list_labels(project_id, SOURCE_ENGINEER):
            out[label.region_id] = label.class_name
        return out

    def promote_to_labels(
        self, run_id: int, cluster_ids: Sequence[int] | None = None, *, author: str | None = None
    ) -> int:
        """Turn the engineer's verdicts of a run into engineer labels: the labeled set of the next run.

        A region of a named defect cluster gets the cluster's name; a region the engineer marked
        normal, or one of a cluster the engineer marked normal, gets NORMAL_CLASS so the next run
        learns it as normal. Left out: the engine's own normal slot (a prediction, not a verdict),
        unnamed clusters, and whole-image placeholders (no anomaly found) not marked normal.
        With cluster_ids only those clusters' regions. Returns the label count.
        """
        with self._session(write=True) as session:
            run = self._get(session, m.Run, run_id, "run")
            query = (
                select(m.Assignment.region_id, m.Assignment.is_normal, m.Region.area, m.Cluster.name,
                       m.Cluster.is_normal, m.Cluster.engine_normal, m.Region.weak)  # fmt: skip
                .join(m.Cluster, m.Cluster.id == m.Assignment.cluster_id)
                .join(m.Region, m.Region.id == m.Assignment.region_id)
                .where(m.Assignment.run_id == run_id, m.Cluster.merged_into_id.is_(None))
            )
            if cluster_ids is not None:
                query = query.where(m.Cluster.id.in_(list(cluster_ids)))
            wanted: dict[int, str] = {}
            for region_id, marked, area, name, cluster_normal, engine_normal, weak in session.execute(query):
                state = region_state(int(area), bool(marked), bool(cluster_normal), bool(engine_normal), bool(weak))
                if state == STATE_MARKED_NORMAL:
                    wanted[region_id] = NORMAL_CLASS
                elif state == STATE_DEFECT and name is not None:
                    wanted[region_id] = name
            if not wanted:
                return 0
            before: dict[int, str] = {}
            for chunk in chunks(list(wanted)):
                before.update(
                    session.execute(
                        select(m.Label.region_id, m.Label.class_name).where(
                            m.Label.source == SOURCE_ENGINEER, m.Label.region_id.in_(chunk)
                        )
                    ).all()
                )
            changes = [
                {"region_id": r, "before": before.get(r), "after": name} for r, name in wanted.items() if before.get(r) != name
            ]
            apply_labels(session, run.project_id, dict(wanted), SOURCE_ENGINEER, author)
            log_edit(session, run, "promote", {"changes": changes}, author)
            return len(wanted)
