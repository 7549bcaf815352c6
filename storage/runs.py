"""Runs: their lifecycle (queued, running, done, failed, cancelled), progress, and the lease of
the queue's workers (jobs.worker): a worker claims a run atomically (claim_run), renews its
heartbeat (heartbeat), and a run whose heartbeat is older than the lease is lost (lost_runs) and
may be claimed again, its history (events) saying so.

recover_stale_runs (a process check handed in by the caller) serves scripts that run a job in their
own process; the app and the workers no longer use it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from storage import models as m
from storage.records import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RUN_STATUSES,
    RUNNING,
    NotFound,
    RunInfo,
    StorageError,
)
from storage.workspace import Workspace, aware


def run_info(row: m.Run) -> RunInfo:
    """The record of a run row."""
    return RunInfo(
        id=row.id,
        project_id=row.project_id,
        kind=row.kind,
        settings=dict(row.settings or {}),
        status=row.status,
        progress=row.progress,
        stage=row.stage,
        message=row.message,
        created_at=aware(row.created_at),  # type: ignore[arg-type]
        started_at=aware(row.started_at),
        finished_at=aware(row.finished_at),
        heartbeat_at=aware(row.heartbeat_at),
        timings=dict(row.timings or {}),
        metrics=dict(row.metrics or {}),
        checkpoint_path=row.checkpoint_path,
        loss_history=list(row.loss_history or []),
        pid=row.pid,
        host=row.host,
        cancel_requested=bool(row.cancel_requested),
        parent_run_id=row.parent_run_id,
        queue=row.queue,
        worker=row.worker,
        device=row.device,
        attempts=int(row.attempts or 0),
        events=list(row.events or []),
    )


class RunStore(Workspace):
    """The runs of a project and their progress as the worker reports it."""

    def start_run(
        self,
        project_id: int,
        kind: str,
        settings: dict[str, Any] | None = None,
        *,
        status: str = QUEUED,
        parent_run_id: int | None = None,
        queue: str | None = None,
    ) -> RunInfo:
        """Create a run (queued, or running when the caller is the worker itself)."""
        if status not in (QUEUED, RUNNING):
            raise StorageError(f"a new run starts queued or running, not {status!r}")
        with self._session(write=True) as session:
            self._get(session, m.Project, project_id, "project")
            now = m.utcnow()
            row = m.Run(
                project_id=project_id,
                kind=kind,
                settings=dict(settings or {}),
                status=status,
                progress=0.0,
                parent_run_id=parent_run_id,
                heartbeat_at=now,
                queue=queue,
                attempts=0,
                events=[],
            )
            if status == RUNNING:
                row.started_at = now
                row.pid = os.getpid()
                row.host = socket.gethostname()
            session.add(row)
            session.flush()
            return run_info(row)

    def mark_running(self, run_id: int, pid: int | None = None) -> RunInfo:
        """The worker took the run: status running, its pid and host, started_at."""
        with self._session(write=True) as session:
            row = self._get(session, m.Run, run_id, "run")
            if row.status not in (QUEUED, RUNNING):
                raise StorageError(f"run {run_id} is {row.status}; it cannot start again")
            now = m.utcnow()
            row.status = RUNNING
            row.pid = os.getpid() if pid is None else int(pid)
            row.host = socket.gethostname()
            row.started_at = row.started_at or now
            row.heartbeat_at = now
            session.flush()
            return run_info(row)

    def claim_run(self, run_id: int, *, worker: str, device: str, lease_s: float) -> RunInfo | None:
        """A worker takes the run, atomically: a queued run, or a running one whose worker stopped
        reporting for lease_s (taken again: the run's history says so). None when it cannot be
        taken (finished, cancelled, or running on a worker that still reports)."""
        now = m.utcnow()
        with self._session(write=True) as session:
            row = self._get(session, m.Run, run_id, "run")
            lost = row.status == RUNNING and (aware(row.heartbeat_at) or now) < now - timedelta(seconds=lease_s)
            if row.status != QUEUED and not lost:
                return None
            claimed = session.execute(
                update(m.Run).where(m.Run.id == run_id, m.Run.status == row.status,
                                    m.Run.attempts == row.attempts)
                .values(status=RUNNING, attempts=m.Run.attempts + 1, worker=worker, device=device,
                        host=worker.split(":")[0], pid=None, heartbeat_at=now,
                        started_at=row.started_at or now)).rowcount
            if not claimed:  # another worker took it between our read and our write
                return None
            session.refresh(row)
            event = {"at": now.isoformat(), "event": "retried" if lost else "started", "attempt": row.attempts,
                     "worker": worker, "device": device}
            if lost:
                event["note"] = (f"the previous worker {row.events[-1]['worker'] if row.events else '?'} stopped "
                                 f"reporting during stage {row.stage!r}; taken again")
            row.events = [*(row.events or []), event]
            session.flush()
            return run_info(row)

    def heartbeat(self, run_ids: list[int], worker: str | None = None) -> list[int]:
        """A worker is alive and still running these runs (only those it still holds, when named:
        a run taken again by another worker is no longer renewed by the first); returns those
        whose cancel was requested."""
        if not run_ids:
            return []
        with self._session(write=True) as session:
            held = [m.Run.id.in_(run_ids), m.Run.status == RUNNING] + ([m.Run.worker == worker] if worker else [])
            session.execute(update(m.Run).where(*held).values(heartbeat_at=m.utcnow()))
            flagged = select(m.Run.id).where(m.Run.id.in_(run_ids), m.Run.cancel_requested.is_(True))
            return list(session.scalars(flagged))

    def lost_runs(self, lease_s: float) -> list[RunInfo]:
        """Running runs whose worker has not reported for lease_s (it died or lost the database)."""
        limit = m.utcnow() - timedelta(seconds=lease_s)
        with self._session() as session:
            rows = session.scalars(select(m.Run).where(m.Run.status == RUNNING, m.Run.heartbeat_at < limit))
            return [run_info(r) for r in rows]

    def queue_position(self, run_id: int) -> int:
        """1 for the next queued run of its queue, 2 for the one after... (0 when not queued)."""
        with self._session() as session:
            row = self._get(session, m.Run, run_id, "run")
            if row.status != QUEUED:
                return 0
            ahead = select(func.count()).select_from(m.Run).where(
                m.Run.status == QUEUED, m.Run.queue == row.queue, m.Run.id < row.id)
            return int(session.scalar(ahead) or 0) + 1

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
        with self._session(write=True) as session:
            row = self._get(session, m.Run, run_id, "run")
            row.progress = min(1.0, max(0.0, float(progress)))
            if stage is not None:
                row.stage = stage
            if message is not None:
                row.message = message
            if timings is not None:
                row.timings = {**(row.timings or {}), **timings}
            if loss_history is not None:
                row.loss_history = list(loss_history)
            row.heartbeat_at = m.utcnow()
            return bool(row.cancel_requested)

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
        with self._session(write=True) as session:
            row = self._get(session, m.Run, run_id, "run")
            row.status = DONE
            row.progress = 1.0
            now = m.utcnow()
            row.finished_at = now
            row.heartbeat_at = now
            if metrics is not None:
                row.metrics = dict(metrics)
            if timings is not None:
                row.timings = {**(row.timings or {}), **timings}
            if checkpoint_path is not None:
                row.checkpoint_path = str(checkpoint_path)
            if loss_history is not None:
                row.loss_history = list(loss_history)
            if message is not None:
                row.message = message
            session.flush()
            return run_info(row)

    def _end_run(self, run_id: int, status: str, message: str) -> RunInfo:
        with self._session(write=True) as session:
            row = self._get(session, m.Run, run_id, "run")
            row.status = status
            row.message = message
            row.finished_at = m.utcnow()
            session.flush()
            return run_info(row)

    def fail_run(self, run_id: int, message: str) -> RunInfo:
        """Mark a run failed with a message for the engineer."""
        return self._end_run(run_id, FAILED, message)

    def cancel_run(self, run_id: int) -> RunInfo:
        """Ask a run to stop: a queued run is cancelled at once, a running one gets the flag set."""
        with self._session(write=True) as session:
            row = self._get(session, m.Run, run_id, "run")
            row.cancel_requested = True
            if row.status == QUEUED:
                row.status = CANCELLED
                row.message = "cancelled before it started"
                row.finished_at = m.utcnow()
            session.flush()
            return run_info(row)

    def mark_cancelled(self, run_id: int, message: str = "cancelled") -> RunInfo:
        """The worker stopped on request: status cancelled."""
        return self._end_run(run_id, CANCELLED, message)

    def is_cancel_requested(self, run_id: int) -> bool:
        """The flag the job process polls."""
        with self._session() as session:
            flag = session.scalar(select(m.Run.cancel_requested).where(m.Run.id == run_id))
            if flag is None:
                raise NotFound(f"run {run_id} does not exist")
            return bool(flag)

    def get_run(self, run_id: int) -> RunInfo:
        """One run; NotFound if absent."""
        with self._session() as session:
            return run_info(self._get(session, m.Run, run_id, "run"))

    def list_runs(self, project_id: int, kind: str | None = None, status: str | None = None) -> list[RunInfo]:
        """Runs of a project, newest first."""
        if status is not None and status not in RUN_STATUSES:
            raise StorageError(f"unknown run status {status!r}; expected one of {RUN_STATUSES}")
        with self._session() as session:
            query = select(m.Run).where(m.Run.project_id == project_id)
            if kind is not None:
                query = query.where(m.Run.kind == kind)
            if status is not None:
                query = query.where(m.Run.status == status)
            return [run_info(r) for r in session.scalars(query.order_by(m.Run.id.desc()))]

    def recover_stale_runs(
        self, stale_after_s: float = 600.0, *, process_alive: Callable[[int], bool]
    ) -> list[int]:
        """Mark failed the queued/running runs whose process is gone; returns their ids.

        A run of this host whose pid `process_alive` says is gone is stale at once; a run of
        another host (or without pid) is stale when its heartbeat is older than stale_after_s.
        A run whose cancellation was requested ends as cancelled instead.
        """
        host = socket.gethostname()
        now = m.utcnow()
        stale: dict[int, str] = {}
        # Look first without the write lock: on SQLite a live run may hold it for a while.
        with self._session() as session:
            for row in session.scalars(select(m.Run).where(m.Run.status.in_((QUEUED, RUNNING)))):
                if row.pid is not None and row.host == host:
                    if not process_alive(row.pid):
                        stale[row.id] = f"the run's process (pid {row.pid}) ended without finishing"
                elif row.status == RUNNING or row.pid is not None:
                    beat = aware(row.heartbeat_at) or aware(row.created_at) or now
                    if (now - beat) > timedelta(seconds=stale_after_s):
                        stale[row.id] = f"no progress report for over {int(stale_after_s)} s"
                # else: queued and never launched, still waiting for the job runner
        if not stale:
            return []
        recovered = []
        with self._session(write=True) as session:
            rows = session.scalars(select(m.Run).where(m.Run.id.in_(list(stale)), m.Run.status.in_((QUEUED, RUNNING))))
            for row in rows:
                reason = stale[row.id]
                if row.cancel_requested:
                    row.status, row.message = CANCELLED, f"cancelled ({reason})"
                else:
                    during = f" during stage {row.stage!r}" if row.stage else ""
                    row.status, row.message = FAILED, f"{reason}{during}; its partial results were discarded"
                row.finished_at = now
                recovered.append(row.id)
        return sorted(recovered)
