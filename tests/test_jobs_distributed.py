"""Jobs on the durable queue with real worker processes (`python -m jobs.worker`): on the real
PostgreSQL the suite starts (workers as on other machines, sharing the workspace folder as they
would over NFS) and on the SQLite default of `bash dev.sh app`."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.demo.build import DemoConfig, generate_demo
from storage import CANCELLED, DONE, RUNNING, open_workspace
from webapp import intake, job_control

from builders import TINY_DEMO, TINY_RUN, demo_maps

REPO = Path(__file__).resolve().parents[1]
# A killed worker's run is taken again after this many seconds without a heartbeat: short, with room
# for a live worker's renewals (every LEASE_S / 3) to be late on 2 busy shared cores.
LEASE_S = 10.0


class Workers:
    """Worker processes of one workspace; every one started is stopped at the end of the test."""

    def __init__(self, tmp: Path, workspace: Path, database_url: str | None) -> None:
        self.tmp, self.env = tmp, {**os.environ, "STUDIO_WORKSPACE": str(workspace), "PYTHONUNBUFFERED": "1"}
        self.env.pop("STUDIO_DATABASE_URL", None)
        if database_url:
            self.env["STUDIO_DATABASE_URL"] = database_url
        self.processes: list[subprocess.Popen] = []

    def start(self, concurrency: int = 1, queue: str = "gpu") -> subprocess.Popen:
        log = open(self.tmp / f"worker-{len(self.processes)}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "-m", "jobs.worker", "--queue", queue, "--concurrency", str(concurrency),
             "--device", "cpu", "--lease", str(LEASE_S)],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.processes.append(process)
        return process

    def wait_ready(self, process: subprocess.Popen, timeout: float = 120.0) -> None:
        """Until the worker has said it listens (its first line)."""
        log = self.tmp / f"worker-{self.processes.index(process)}.log"
        deadline = time.monotonic() + timeout
        while " at once" not in (log.read_text(errors="replace") if log.is_file() else ""):
            assert process.poll() is None and time.monotonic() < deadline, self.logs()
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("worker-*.log")))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def _setup(tmp_path: Path, database_url: str | None, projects: int = 1):
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    demo_maps(root, tmp_path / "maps")
    store = open_workspace(tmp_path / "workspace", database_url)
    summary = intake.summarize_dataset(root, tmp_path / "maps")
    infos = [intake.create_project(store, f"tiny-{n}", summary) for n in range(projects)]
    return store, infos, Workers(tmp_path, tmp_path / "workspace", database_url)


def _wait_stage(store, run_id: int, prefix: str, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = store.get_run(run_id)
        if run.status == RUNNING and (run.stage or "").startswith(prefix):
            return run
        assert run.status in job_control.ACTIVE, f"run ended early: {run.status} {run.message}"
        time.sleep(0.1)
    raise TimeoutError(f"run {run_id} never reached {prefix}")


def _pid(run) -> int:
    return int(run.worker.rsplit(":", 1)[1])


@pytest.mark.distributed
@pytest.mark.postgres
def test_two_workers_share_four_jobs_and_never_exceed_their_concurrency(tmp_path, postgres_url):
    store, infos, workers = _setup(tmp_path, postgres_url, projects=4)
    try:
        ids = [job_control.start_job(store, info.id, job_control.DETECT, {"map_source": "import"}) for info in infos]
        assert [job_control.place(store, store.get_run(i)) for i in ids][3] == "queued, 4th in line on the gpu queue"
        workers.start(), workers.start()
        runs = [job_control.wait_for(store, i, timeout=300) for i in ids]
        assert all(r.status == DONE for r in runs), ([r.message for r in runs], workers.logs())
        assert len({r.worker for r in runs}) == 2  # both workers took jobs
        assert all(r.attempts == 1 and [e["event"] for e in r.events] == ["started"] for r in runs)  # none lost
        for worker in {r.worker for r in runs}:  # one at a time on each worker
            mine = sorted((r.started_at, r.finished_at) for r in runs if r.worker == worker)
            assert all(end <= start for (_, end), (start, _) in zip(mine, mine[1:])), mine
        moments = sorted([(r.started_at, 1) for r in runs] + [(r.finished_at, -1) for r in runs])
        assert max(itertools.accumulate(step for _, step in moments)) <= 2  # never more than both at once
    finally:
        workers.stop()
        store.close()


@pytest.mark.distributed
@pytest.mark.postgres
@pytest.mark.slow
def test_a_worker_killed_mid_discovery_leaves_the_run_to_the_other_worker_which_stores_it_once(tmp_path, postgres_url):
    store, (info,), workers = _setup(tmp_path, postgres_url)
    try:
        run_id = job_control.start_job(store, info.id, job_control.DISCOVER, {**TINY_RUN, "epochs": 2})
        first = workers.start()
        taken = _wait_stage(store, run_id, "Training")
        assert _pid(taken) == first.pid and job_control.place(store, taken) == f"running on {taken.host}, cpu"
        workers.start()  # the other machine
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        run = job_control.wait_for(store, run_id, timeout=400)
        assert run.status == DONE, (run.message, workers.logs())
        assert run.attempts == 2 and [e["event"] for e in run.events] == ["started", "retried"]
        assert _pid(run) != first.pid and f"{first.pid}" in run.events[1]["note"]
        regions = store.list_regions(info.id)
        assert len({(r.image, r.index) for r in regions}) == len(regions)  # no region twice
        clusters = store.list_clusters(run_id)
        assert len(clusters) == TINY_RUN["classes"] + 1 and sum(c.region_count for c in clusters) == len(regions)
        assert len(store.umap_points(run_id)) == len(regions)  # one assignment per region
    finally:
        workers.stop()
        store.close()


@pytest.mark.distributed
@pytest.mark.postgres
def test_cancel_reaches_a_running_job_on_another_worker_process_within_10_s(tmp_path, postgres_url):
    store, (info,), workers = _setup(tmp_path, postgres_url)
    try:
        run_id = job_control.start_job(store, info.id, job_control.DISCOVER, {**TINY_RUN, "epochs": 400})
        workers.start()
        _wait_stage(store, run_id, "Training")
        asked = time.monotonic()
        job_control.cancel_job(store, run_id)
        run = job_control.wait_for(store, run_id, timeout=10, poll=0.1)
        assert run.status == CANCELLED and time.monotonic() - asked < 10
        assert store.list_clusters(run_id) == []
    finally:
        workers.stop()
        store.close()


@pytest.mark.distributed
@pytest.mark.slow
def test_the_sqlite_default_runs_a_demo_discovery_through_the_queue(tmp_path):
    store, (info,), workers = _setup(tmp_path, None)
    try:
        run_id = job_control.start_job(store, info.id, job_control.DISCOVER, TINY_RUN)
        assert job_control.place(store, store.get_run(run_id)) == "queued, 1st in line on the gpu queue"
        worker = workers.start()
        run = job_control.wait_for(store, run_id, timeout=400)
        assert run.status == DONE, (run.message, workers.logs())
        assert _pid(run) == worker.pid and run.device == "cpu" and (tmp_path / "workspace" / "jobs.sqlite").is_file()
        assert len(store.list_clusters(run_id)) == TINY_RUN["classes"] + 1
    finally:
        workers.stop()
        store.close()


@pytest.mark.distributed
@pytest.mark.slow
def test_a_classify_job_waits_for_a_cpu_worker_and_a_gpu_worker_leaves_it(tmp_path):
    from jobs import runner
    from webapp.classify_job import classification_dir, start_classification

    store, (info,), workers = _setup(tmp_path, None)
    try:
        source = store.start_run(info.id, job_control.DISCOVER, {"classes": 3, "device": "cpu", "seed": 0,
                                                          "representation": "descriptors"})
        assert runner.execute(store, source.id) == DONE, store.get_run(source.id).message
        new = generate_demo(tmp_path / "new", DemoConfig(**{**TINY_DEMO, "seed": 1}))
        demo_maps(new, tmp_path / "new_maps")
        run_id = start_classification(store, source.id, new / "test", tmp_path / "new_maps" / "test")
        assert job_control.place(store, store.get_run(run_id)) == "queued, 1st in line on the cpu queue"
        workers.wait_ready(workers.start(queue="gpu"))
        time.sleep(3)  # six polls of the queue: a gpu worker does not take a cpu job
        assert store.get_run(run_id).status == "queued"
        cpu = workers.start(queue="cpu")
        run = job_control.wait_for(store, run_id, timeout=240)
        assert run.status == DONE, (run.message, workers.logs())
        assert _pid(run) == cpu.pid and ":cpu:" in run.worker
        assert (classification_dir(store, run) / "images.csv").is_file()
    finally:
        workers.stop()
        store.close()
