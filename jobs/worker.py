"""A worker: `python -m jobs.worker --queue gpu --concurrency 1 [--device cuda]`.

It runs anywhere the workspace's database (STUDIO_DATABASE_URL, PostgreSQL for workers on other
machines) and files (STUDIO_WORKSPACE, e.g. one NFS path on every machine) can be reached, takes
jobs from one queue (DBOS Transact dequeues at most `--concurrency` at once in this process) and
runs each in a thread. A watchdog thread renews the lease of its running runs (their heartbeat)
and looks for runs whose worker stopped renewing: it hands their jobs back to the queue (DBOS
recovery of the dead executor's workflows) or, after MAX_ATTEMPTS, ends them failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

from dbos import DBOS

from jobs import engine
from jobs.runner import LEASE_S, MAX_ATTEMPTS, WorkerInfo, execute, give_up
from storage import RUNNING, Store, environment, open_workspace


class _Worker:
    """This process's store, identity and running runs (the workflow below reads them)."""

    store: Store
    info: WorkerInfo
    running: set[int] = set()
    lock = threading.Lock()
    stop = threading.Event()


@DBOS.workflow(name=engine.WORKFLOW, max_recovery_attempts=MAX_ATTEMPTS + 2)
def studio_run(run_id: int) -> str:
    """The job of one run (no DBOS steps: a job taken again starts over, and the job bodies
    store their results so that a second pass replaces rather than adds)."""
    with _Worker.lock:
        _Worker.running.add(run_id)
    try:
        return execute(_Worker.store, run_id, _Worker.info)
    finally:
        with _Worker.lock:
            _Worker.running.discard(run_id)


def renew_and_recover(store: Store, info: WorkerInfo) -> None:
    """One watchdog pass: renew our runs' lease; hand lost runs back to the queue or fail them."""
    with _Worker.lock:
        mine = sorted(_Worker.running)
    store.heartbeat(mine, worker=info.name)
    for run in store.lost_runs(info.lease_s):
        if run.id in mine or run.status != RUNNING:
            continue
        if run.attempts >= MAX_ATTEMPTS:
            give_up(store, run)
            DBOS.cancel_workflow(engine.workflow_id(run.id))
        elif run.worker and run.worker != info.name:
            DBOS._recover_pending_workflows([run.worker])  # re-enqueued on its own queue, taken by one worker


def watchdog(store: Store, info: WorkerInfo) -> None:
    """Every third of the lease until the worker stops; an error is printed, not fatal."""
    while not _Worker.stop.wait(info.lease_s / 3):
        try:
            renew_and_recover(store, info)
        except Exception as error:  # noqa: BLE001 - a database hiccup must not stop the worker
            print(f"watchdog: {type(error).__name__}: {error}", file=sys.stderr, flush=True)


def device_name(requested: str) -> str:
    """The device this worker states and computes on: 'cpu' or 'cuda:0' (auto: cuda when present)."""
    from core.device import resolve_device

    device = resolve_device(requested)
    return f"{device.type}:{device.index or 0}" if device.type == "cuda" else device.type


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", default=engine.GPU, help="the queues to take jobs from: gpu, cpu or gpu,cpu")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once by this worker")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda: what this worker computes on")
    parser.add_argument("--lease", type=float, default=LEASE_S,
                        help="seconds without a heartbeat after which a run's worker counts as lost")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, got {args.concurrency}")
    return args


#: What a job imports on its first run (torch models, timm, the detectors, UMAP).
WARM_MODULES = ("core.pipeline", "core.detection.detector", "core.grouping.predict")


def warm_up() -> None:
    """Import WARM_MODULES and compile UMAP's code on a tiny map, in a background thread while the
    worker already takes jobs, so its first job does not pay for them (measured on 2 cores: 3.3 s
    of imports before a first detection moved its bar, 8.7 s of UMAP compiling in a first discovery).
    $STUDIO_WORKER_WARM_UP=0 skips it."""
    if os.environ.get("STUDIO_WORKER_WARM_UP", "1") == "0":
        return
    import importlib

    try:
        for name in WARM_MODULES:
            importlib.import_module(name)
        import numpy as np

        from core.grouping.predict import embed_2d

        embed_2d(np.random.default_rng(0).random((40, 8), dtype=np.float32), n_neighbors=10)
    except Exception as error:  # noqa: BLE001 - a job importing it later says what is wrong
        print(f"warm-up: {type(error).__name__}: {error}", file=sys.stderr, flush=True)


def _stop(signum: int, _frame: Any) -> None:
    _Worker.stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    """Workspace and database from the environment (the worker's one read of it)."""
    args = parse(argv)
    workspace, database_url = environment()
    store = open_workspace(workspace, database_url)
    name = f"{socket.gethostname()}:{args.queue.replace(',', '+')}:{os.getpid()}"
    info = WorkerInfo(name=name, device=device_name(args.device), lease_s=args.lease)
    _Worker.store, _Worker.info = store, info
    system_url = engine.system_database_url(workspace, str(store.engine.url.render_as_string(hide_password=False)))
    DBOS(config=engine.config(system_url, executor_id=name))  # type: ignore[arg-type]
    queues = [q.strip() for q in args.queue.split(",") if q.strip()]
    DBOS.listen_queues(queues)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    DBOS.launch()
    for queue in queues:
        DBOS.register_queue(queue, worker_concurrency=args.concurrency, polling_interval_sec=0.5,
                            on_conflict="always_update")
    print(f"worker {name} on {info.device}: queue {','.join(queues)}, {args.concurrency} at once", flush=True)
    thread = threading.Thread(target=watchdog, args=(store, info), name="watchdog", daemon=True)
    thread.start()
    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    try:
        _Worker.stop.wait()
    finally:
        DBOS.destroy(workflow_completion_timeout_sec=0)
        store.close()
    print(f"worker {name} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
