"""One run executed by a worker: claimed atomically, its body run, the outcome recorded.

The body is chosen by the run's kind (JOBS); a body raises JobCancelled when the engineer asked to
stop. Every other error ends the run failed with a message the engineer can act on. A second
worker handed the same run (a queue delivering twice, a recovery racing a slow worker) finds it
claimed and does nothing.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from jobs.classify import run_classify
from jobs.detect import run_detect
from jobs.discover import run_discover
from jobs.progress import JobCancelled, Reporter
from jobs.wording import describe_error
from storage import CANCELLED, DONE, FAILED, QUEUED, RUNNING, RunInfo, Store

JOBS: dict[str, Callable[[Store, RunInfo, Reporter], str]] = {"detect": run_detect, "discover": run_discover,
                                                              "classify": run_classify}

#: A running run whose worker has not reported for this long is lost: another worker may take it.
LEASE_S = 30.0
#: A run lost this many times ends failed instead of being taken again.
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class WorkerInfo:
    """Who runs a job: `name` is host:queue:pid (unique while it lives), `device` what it computes on."""

    name: str
    device: str
    lease_s: float = LEASE_S


def inline_worker() -> WorkerInfo:
    """This process as a worker (tests and scripts that run a job without the queue)."""
    return WorkerInfo(name=f"{socket.gethostname()}:inline:{os.getpid()}", device="auto")


def execute(store: Store, run_id: int, worker: WorkerInfo | None = None) -> str:
    """Run one run to its end in this process; returns its final status (or what it already was)."""
    worker = worker or inline_worker()
    run = store.get_run(run_id)
    if run.cancel_requested and run.status in (QUEUED, RUNNING):
        store.mark_cancelled(run_id, "cancelled before it started" if run.status == QUEUED else "cancelled")
        return CANCELLED
    job = JOBS.get(run.kind)
    if job is None:
        store.fail_run(run_id, f"unknown job kind {run.kind!r}")
        return FAILED
    if run.status == RUNNING and run.attempts >= MAX_ATTEMPTS and is_lost(run, worker.lease_s):
        return give_up(store, run)
    claimed = store.claim_run(run_id, worker=worker.name, device=worker.device, lease_s=worker.lease_s)
    if claimed is None:
        print(f"run {run_id} is {store.get_run(run_id).status} and not lost: nothing to do", file=sys.stderr)
        return store.get_run(run_id).status
    if worker.device != "auto" and claimed.settings.get("device", "auto") == "auto":
        claimed = replace(claimed, settings={**claimed.settings, "device": worker.device.split(":")[0]})
    report = Reporter(store, run_id)
    try:
        message = job(store, claimed, report)
        if store.get_run(run_id).status == RUNNING:  # a body that records more (discover) finishes the run itself
            store.finish_run(run_id, message=message, loss_history=report.loss_history or None,
                             metrics=report.metrics)
        return DONE
    except JobCancelled:
        store.mark_cancelled(run_id, "cancelled by the engineer")
        return CANCELLED
    except BaseException as error:  # noqa: BLE001 - every failure is recorded for the engineer
        traceback.print_exc()
        try:
            store.fail_run(run_id, describe_error(error))
        except Exception:  # noqa: BLE001
            traceback.print_exc()
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        return FAILED


def is_lost(run: RunInfo, lease_s: float) -> bool:
    """Whether a running run's worker has not reported for lease_s."""
    beat = run.heartbeat_at or run.started_at or run.created_at
    return (datetime.now(timezone.utc) - beat).total_seconds() > lease_s


def give_up(store: Store, run: RunInfo) -> str:
    """A run whose workers were lost MAX_ATTEMPTS times ends failed, saying where it stopped."""
    last = run.events[-1] if run.events else {}
    during = f" during stage {run.stage!r}" if run.stage else ""
    store.fail_run(run.id, f"its worker was lost {run.attempts} times (last {last.get('worker', run.host)}{during}); "
                           "it was not retried again: see the worker logs")
    return FAILED
