"""The queue engine: DBOS Transact, a library whose queues live in a database we already have.

One system database per workspace carries every job: on the SQLite default, `jobs.sqlite` beside
the Studio's own database file; with STUDIO_DATABASE_URL on PostgreSQL, the same database (DBOS
keeps its tables in the schema `dbos`), so workers on other machines share the queue. A run's job
is the workflow `studio_run(run_id)` with workflow id `run-<id>`, enqueued on the queue its kind is
routed to (QUEUE_OF). The app enqueues and cancels through a DBOSClient (it never executes jobs);
a worker (jobs.worker) launches DBOS, listens to one queue and executes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

#: The DBOS application every process of the Studio belongs to, and its one version: workers
#: only dequeue jobs of their own version, so the app and every worker must agree.
APP_NAME = "defect-discovery-studio"
APP_VERSION = "studio-jobs-1"
#: The workflow a run becomes (registered by jobs.worker under this name).
WORKFLOW = "studio_run"
#: Which queue each kind of job waits in: the heavy work where the GPU is, cheap work anywhere.
GPU, CPU = "gpu", "cpu"
QUEUE_OF = {"detect": GPU, "discover": GPU, "classify": CPU}
#: The system database file of the SQLite default, in the workspace.
SQLITE_FILE = "jobs.sqlite"


def queue_of(kind: str) -> str:
    """The queue a kind of job is routed to (jobs of an unknown kind wait on the cpu queue)."""
    return QUEUE_OF.get(kind, CPU)


def workflow_id(run_id: int) -> str:
    """The job of a run: one workflow per run, so enqueueing a run twice queues it once."""
    return f"run-{int(run_id)}"


def system_database_url(workspace: Path, database_url: str) -> str:
    """Where the queue lives: PostgreSQL's own database (schema dbos), else a SQLite file in the workspace."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        return url.set(drivername="postgresql").render_as_string(hide_password=False)
    return f"sqlite:///{(Path(workspace) / SQLITE_FILE).resolve().as_posix()}"


def config(system_url: str, executor_id: str) -> dict[str, Any]:
    """The DBOS configuration of a worker: no admin server (nothing listens), quiet logs."""
    return {"name": APP_NAME, "system_database_url": system_url, "executor_id": executor_id,
            "application_version": APP_VERSION, "run_admin_server": False, "log_level": "WARNING"}


class JobClient:
    """What the app does with the queue: enqueue a run, cancel it, ask whether it is in the queue.

    Opened lazily; opening creates the queue's tables when no worker has made them yet.
    """

    def __init__(self, system_url: str) -> None:
        self.system_url = system_url
        self._client: Any = None

    def _open(self) -> Any:
        if self._client is None:
            from dbos import DBOS, DBOSClient

            DBOS.migrate(self.system_url)  # the queue's tables, when no worker has made them yet
            self._client = DBOSClient(system_database_url=self.system_url, application_name=APP_NAME)
        return self._client

    def enqueue(self, run_id: int, kind: str) -> str:
        """Put a run's job in its queue; returns the queue's name."""
        queue = queue_of(kind)
        self._open().enqueue({"workflow_name": WORKFLOW, "queue_name": queue, "workflow_id": workflow_id(run_id),
                              "app_version": APP_VERSION}, int(run_id))
        return queue

    def cancel(self, run_id: int) -> None:
        """Take a run's job out of the queue (a running job stops at the cancel flag it polls)."""
        self._open().cancel_workflow(workflow_id(run_id))

    def status(self, run_id: int) -> str | None:
        """The queue's word on a run's job (ENQUEUED, PENDING, SUCCESS, ...), None when it has none."""
        found = self._open().list_workflows(workflow_ids=[workflow_id(run_id)])
        return str(found[0].status) if found else None

    def close(self) -> None:
        if self._client is not None:
            self._client.destroy()
            self._client = None
