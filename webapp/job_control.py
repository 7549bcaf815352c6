"""The app's side of the jobs: enqueue a run, cancel it, say where it stands. No `st.*` here.

Long work (detection, discovery) runs in workers (`python -m jobs.worker`, one started by
`bash dev.sh app`, more on other machines) that take jobs from the durable queue in the
workspace's database (jobs.engine). `start_job` records a queued run and enqueues its job; the
worker writes progress, loss history and results to the database and pages poll it. Cancelling
sets the flag the worker polls (and takes a queued job out of the queue).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jobs import engine
from storage import CANCELLED, DONE, FAILED, QUEUED, RUNNING, RunInfo, Store

#: Kinds of job the workers run (jobs.runner.JOBS); engine.QUEUE_OF routes each to its queue.
DISCOVER, DETECT, CLASSIFY = "discover", "detect", "classify"
JOB_KINDS = (DISCOVER, DETECT, CLASSIFY)
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED)

_CLIENTS: dict[str, engine.JobClient] = {}


def client(store: Store) -> engine.JobClient:
    """The queue's client for this store's workspace (one per system database, kept)."""
    url = engine.system_database_url(Path(store.workspace), store.engine.url.render_as_string(hide_password=False))
    if url not in _CLIENTS:
        _CLIENTS[url] = engine.JobClient(url)
    return _CLIENTS[url]


def start_job(store: Store, project_id: int, kind: str, settings: dict[str, Any] | None = None, *,
              parent_run_id: int | None = None) -> int:
    """Record a queued run of `kind` and put its job in the queue; returns the run id."""
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}; known: {', '.join(JOB_KINDS)}")
    run = store.start_run(project_id, kind, dict(settings or {}), status=QUEUED, parent_run_id=parent_run_id,
                          queue=engine.queue_of(kind))
    try:
        client(store).enqueue(run.id, kind)
    except Exception as error:  # noqa: BLE001 - the run says why it will never start
        store.fail_run(run.id, f"could not put the job in the queue: {type(error).__name__}: {error}")
    return run.id


def cancel_job(store: Store, run_id: int) -> RunInfo:
    """Ask a run to stop; a queued run is cancelled at once, a running one at its next step."""
    run = store.cancel_run(run_id)
    if run.status == CANCELLED:
        try:
            client(store).cancel(run_id)
        except Exception as error:  # noqa: BLE001 - a worker that takes it finds it cancelled anyway
            print(f"run {run_id}: could not take its job out of the queue: {error}")
    return run


def active_runs(store: Store, project_id: int, kind: str | None = None) -> list[RunInfo]:
    """Queued or running runs of a project, newest first."""
    return [r for r in store.list_runs(project_id, kind=kind) if r.status in ACTIVE]


def latest_run(store: Store, project_id: int, kind: str) -> RunInfo | None:
    """The newest run of a kind (any status), or None."""
    runs = store.list_runs(project_id, kind=kind)
    return runs[0] if runs else None


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def place(store: Store, run: RunInfo) -> str:
    """Where a run stands for the run page: 'running on gpu-2, cuda:0' or 'queued, 3rd in line'."""
    if run.status == RUNNING:
        retried = f" (attempt {run.attempts})" if run.attempts > 1 else ""
        return f"running on {run.host or '?'}, {run.device or '?'}{retried}"
    if run.status == QUEUED:
        return f"queued, {_ordinal(store.queue_position(run.id))} in line on the {run.queue or 'gpu'} queue"
    return ""


#: A queued run whose job is not in the queue after this long will never start.
ABANDONED_AFTER_S = 300.0
#: A running run whose worker was lost and that no worker took again within this long is failed.
LOST_AFTER_S = 900.0


def _age_s(moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - moment).total_seconds()


def fail_abandoned(store: Store, older_than_s: float = ABANDONED_AFTER_S, lost_after_s: float = LOST_AFTER_S) -> list[int]:
    """Fail runs that can never end on their own: queued for older_than_s with no job in the queue
    (a run merely waiting in line is left alone), or running with no heartbeat for lost_after_s
    (its worker died and no worker took it again). Called on app start and by stalled monitors.
    Returns the ids failed."""
    failed = []
    for project in store.list_projects():
        for run in store.list_runs(project.id, status=QUEUED):
            if _age_s(run.created_at) > older_than_s and client(store).status(run.id) is None:
                store.fail_run(run.id, "its job is not in the queue (it could not be queued); start it again")
                failed.append(run.id)
        for run in store.list_runs(project.id, status=RUNNING):
            if _age_s(run.heartbeat_at or run.started_at) > lost_after_s:
                store.fail_run(run.id, f"its worker {run.worker or run.host} stopped reporting and no worker took the "
                                       f"run again within {int(lost_after_s)} s; start it again")
                failed.append(run.id)
    return failed


def wait_for(store: Store, run_id: int, timeout: float = 300.0, poll: float = 0.25,
             until: tuple[str, ...] = FINISHED) -> RunInfo:
    """Block until the run reaches one of `until` (for tests and scripts); TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        run = store.get_run(run_id)
        if run.status in until:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {run.status} ({run.stage}) after {timeout:.0f} s")
        time.sleep(poll)


def log_path(store: Store) -> Path:
    """The log of the worker `bash dev.sh app` starts (workers elsewhere log where they run)."""
    return Path(store.workspace) / "jobs" / "worker.log"


def read_log_tail(store: Store, run: RunInfo, max_chars: int = 6000) -> str:
    """The end of the local worker's log, or '' when there is none (the run's lines are marked 'run N')."""
    path = log_path(store)
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - max_chars))
        return handle.read().decode("utf-8", errors="replace")
