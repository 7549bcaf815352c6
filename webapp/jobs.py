"""The job runner: long work (detection, discovery) runs in its own process, never in Streamlit.

`start_job` records a queued run and launches `python -m webapp.worker RUN_ID` in a new session,
so the job survives page reloads and a restart of the app server and blocks no other user. The
worker writes progress, loss history and results to the database; pages poll it. Cancelling sets
a flag the worker polls. No `st.*` here: the module is usable from tests and scripts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from storage import (CANCELLED, DATABASE_URL_ENV, DONE, FAILED, QUEUED, RUNNING, WORKSPACE_ENV, RunInfo, StorageError,
                     Store)

#: Kinds of job the worker runs.
DISCOVER, DETECT, CLASSIFY = "discover", "detect", "classify"
JOB_KINDS = (DISCOVER, DETECT, CLASSIFY)
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED)

#: Repository root: the worker runs with it as working directory so `webapp` and `core` import.
REPO_ROOT = Path(__file__).resolve().parents[1]


def log_path(store: Store, run: RunInfo) -> Path:
    """Where a run's worker writes its console output (for the engineer's 'details')."""
    return store.project_dir(run.project_id) / "jobs" / f"run-{run.id}.log"


def _database_url(store: Store) -> str:
    """The store's URL with its password (kept out of the command line: passed by environment)."""
    engine = getattr(store, "engine", None)
    if engine is not None:
        return engine.url.render_as_string(hide_password=False)
    return str(store.url)


def worker_environment(store: Store) -> dict[str, str]:
    """Environment of a worker process: the same workspace and database as the app."""
    env = dict(os.environ)
    env[WORKSPACE_ENV] = str(Path(store.workspace).resolve())
    env[DATABASE_URL_ENV] = _database_url(store)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still runs; a zombie (killed, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):  # no /proc (macOS) or an unreadable line: kill(0) said it exists
        return True


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def watch_worker(store: Store, run_id: int, process: subprocess.Popen) -> None:
    """Wait for a worker and fail its run if the process ended without recording an outcome.

    Covers what the worker cannot report itself: a crash while importing, a segfault, the
    out-of-memory killer. Also reaps the child, so no zombie lingers in the app server.
    """
    code = process.wait()
    try:
        run = store.get_run(run_id)
        if run.status in ACTIVE:
            lines = [line for line in read_log_tail(store, run, 2000).splitlines() if line.strip()]
            last = f": {lines[-1].strip()}" if lines else ""
            store.fail_run(run_id, f"the worker process ended unexpectedly ({_describe_exit(code)}){last}")
    except (StorageError, OSError) as error:
        # Said, not swallowed: the run stays active until recover() finds its dead pid. Any other
        # error ends this daemon thread through threading.excepthook (printed), not the app.
        print(f"run {run_id}: could not record the worker's end ({_describe_exit(code)}): {error}", file=sys.stderr)


def launch_worker(store: Store, run: RunInfo, *, watch: bool = True) -> subprocess.Popen:
    """Start the worker process of a queued run (new session: it outlives the page and the app).

    With watch, a daemon thread waits for it and records a failure the worker could not record.
    """
    path = log_path(store, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "webapp.worker", str(run.id)],
            cwd=str(REPO_ROOT), env=worker_environment(store),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    if watch:
        threading.Thread(target=watch_worker, args=(store, run.id, process), name=f"watch-run-{run.id}",
                         daemon=True).start()
    return process


def start_job(store: Store, project_id: int, kind: str, settings: dict[str, Any] | None = None, *,
              parent_run_id: int | None = None) -> int:
    """Record a queued run of `kind` and launch its worker process; returns the run id."""
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}; known: {', '.join(JOB_KINDS)}")
    run = store.start_run(project_id, kind, dict(settings or {}), status=QUEUED, parent_run_id=parent_run_id)
    try:
        launch_worker(store, run)
    except OSError as error:
        store.fail_run(run.id, f"could not start the worker process: {error}")
    return run.id


def cancel_job(store: Store, run_id: int) -> RunInfo:
    """Ask a run to stop; a queued run is cancelled at once, a running one at its next step."""
    return store.cancel_run(run_id)


def active_runs(store: Store, project_id: int, kind: str | None = None) -> list[RunInfo]:
    """Queued or running runs of a project, newest first."""
    return [r for r in store.list_runs(project_id, kind=kind) if r.status in ACTIVE]


def latest_run(store: Store, project_id: int, kind: str) -> RunInfo | None:
    """The newest run of a kind (any status), or None."""
    runs = store.list_runs(project_id, kind=kind)
    return runs[0] if runs else None


#: A queued run whose worker has not reported within this many seconds never got one.
ABANDONED_AFTER_S = 300.0


def fail_abandoned(store: Store, older_than_s: float = ABANDONED_AFTER_S) -> list[int]:
    """Fail queued runs whose worker never started (e.g. it crashed while importing).

    Workers mark their run running within seconds; storage's recover_stale_runs leaves queued
    runs without a pid alone (they might wait for a runner), but this runner launches every run
    at once, so such a run is lost. Returns the ids failed.
    """
    failed = []
    now = datetime.now(timezone.utc)
    for project in store.list_projects():
        for run in store.list_runs(project.id, status=QUEUED):
            created = run.created_at if run.created_at.tzinfo else run.created_at.replace(tzinfo=timezone.utc)
            if run.pid is None and (now - created).total_seconds() > older_than_s:
                store.fail_run(run.id, f"no worker picked the run up within {int(older_than_s)} s; "
                                       "see the worker log and start it again")
                failed.append(run.id)
    return failed


def recover(store: Store) -> list[int]:
    """Fail runs whose worker died or never started (called on app start and by stalled monitors)."""
    return sorted(store.recover_stale_runs(process_alive=pid_alive) + fail_abandoned(store))


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


def read_log_tail(store: Store, run: RunInfo, max_chars: int = 6000) -> str:
    """The end of a run's worker log, or '' when there is none."""
    path = log_path(store, run)
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - max_chars))
        return handle.read().decode("utf-8", errors="replace")
