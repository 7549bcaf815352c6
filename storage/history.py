"""The edit log of a run: how each kind of engineer edit is applied and reverted, undo and redo.

Every edit kind registers ONE pair of functions (apply, revert) taking the session and the
logged edit and returning the ids of the clusters it touched (their version is bumped).
The operations that log edits live in storage.edits and storage.labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage import models as m
from storage.records import EditConflict, EditInfo, NothingToUndo, StorageError, display_name
from storage.workspace import Workspace, aware, chunks

#: Edit states: applied, reverted by undo, dropped (a new edit after an undo drops the redo branch).
DONE_EDIT, UNDONE_EDIT, DISCARDED_EDIT = "done", "undone", "discarded"

Step = Callable[[Session, m.Edit], set[int]]


@dataclass(frozen=True)
class EditKind:
    """How one kind of edit is replayed: apply (redo) and revert (undo)."""

    apply: Step
    revert: Step


EDIT_KINDS: dict[str, EditKind] = {}


def register(kinds: Sequence[str], apply: Step, revert: Step) -> None:
    """Make edits of these kinds undoable with the given pair of functions."""
    for kind in kinds:
        EDIT_KINDS[kind] = EditKind(apply, revert)


def edit_info(row: m.Edit) -> EditInfo:
    """The record of an edit-log row."""
    return EditInfo(row.id, row.run_id, row.kind, dict(row.payload), row.state, row.author, aware(row.created_at))  # type: ignore[arg-type]


def log_edit(session: Session, run: m.Run, kind: str, payload: dict[str, Any], author: str | None) -> None:
    """Append an edit to the run's log; a new edit after undos drops the redo branch, as in any editor."""
    if kind not in EDIT_KINDS:
        raise StorageError(f"edit kind {kind!r} has no apply/revert pair registered")
    session.execute(
        update(m.Edit).where(m.Edit.run_id == run.id, m.Edit.state == UNDONE_EDIT).values(state=DISCARDED_EDIT)
    )
    session.add(m.Edit(project_id=run.project_id, run_id=run.id, kind=kind, payload=payload, author=author))


def touch(cluster: m.Cluster) -> None:
    """Bump a cluster's version: readers holding the old one get EditConflict on their next edit."""
    cluster.version = cluster.version + 1


def check_version(cluster: m.Cluster, expected: int | None) -> None:
    """EditConflict when the cluster changed since the caller read version `expected`."""
    if expected is not None and cluster.version != expected:
        shown = display_name(cluster.name, cluster.slot)
        raise EditConflict(
            f"cluster {shown!r} was changed by someone else since you loaded it "
            f"(version {expected}, now {cluster.version}); reload and try again"
        )


def move_assignments(session: Session, run_id: int, region_ids: Sequence[int], cluster_id: int) -> None:
    """Assign these regions of a run to a cluster."""
    for chunk in chunks(list(region_ids)):
        session.execute(
            update(m.Assignment)
            .where(m.Assignment.run_id == run_id, m.Assignment.region_id.in_(chunk))
            .values(cluster_id=cluster_id)
        )


class HistoryStore(Workspace):
    """Undo, redo and the edit log of a run."""

    def _replay(self, session: Session, edit: m.Edit, forward: bool) -> None:
        kind = EDIT_KINDS.get(edit.kind)
        if kind is None:  # a kind written by a newer version of the Studio
            raise StorageError(f"edit {edit.id} of unknown kind {edit.kind!r} cannot be replayed")
        touched = (kind.apply if forward else kind.revert)(session, edit)
        for cluster_id in touched:
            cluster = session.get(m.Cluster, cluster_id)
            if cluster is not None:
                touch(cluster)

    def _step(self, run_id: int, forward: bool) -> EditInfo:
        """Revert the newest done edit (forward False) or re-apply the oldest undone one."""
        state, order = (UNDONE_EDIT, m.Edit.id.asc()) if forward else (DONE_EDIT, m.Edit.id.desc())
        with self._session(write=True) as session:
            edit = session.scalar(select(m.Edit).where(m.Edit.run_id == run_id, m.Edit.state == state).order_by(order).limit(1))
            if edit is None:
                raise NothingToUndo(f"nothing to {'redo' if forward else 'undo'} in run {run_id}")
            self._replay(session, edit, forward=forward)
            edit.state = DONE_EDIT if forward else UNDONE_EDIT
            session.flush()
            return edit_info(edit)

    def undo(self, run_id: int) -> EditInfo:
        """Revert the newest done edit of a run; NothingToUndo when there is none."""
        return self._step(run_id, forward=False)

    def redo(self, run_id: int) -> EditInfo:
        """Re-apply the edit undone last; NothingToUndo when there is none."""
        return self._step(run_id, forward=True)

    def can_undo(self, run_id: int) -> bool:
        """Whether undo(run_id) has an edit to revert."""
        with self._session() as session:
            return session.scalar(select(func.count(m.Edit.id)).where(m.Edit.run_id == run_id, m.Edit.state == DONE_EDIT)) > 0  # type: ignore[operator]

    def can_redo(self, run_id: int) -> bool:
        """Whether redo(run_id) has an undone edit to re-apply."""
        with self._session() as session:
            return session.scalar(select(func.count(m.Edit.id)).where(m.Edit.run_id == run_id, m.Edit.state == UNDONE_EDIT)) > 0  # type: ignore[operator]

    def edit_history(self, run_id: int) -> list[EditInfo]:
        """The run's edit log, oldest first."""
        with self._session() as session:
            return [edit_info(e) for e in session.scalars(select(m.Edit).where(m.Edit.run_id == run_id).order_by(m.Edit.id))]
