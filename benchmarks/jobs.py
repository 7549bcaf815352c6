"""Jobs on the queue (jobs.worker, DBOS Transact) against the runner they replaced (one
`python -m webapp.worker RUN_ID` process per run: webapp/jobs.py of OLD_REF), in one run:

- enqueue-to-start: from the run's record to its worker marking it running (started_at - created_at),
  a run that fails at once (its data folder is gone) so only the start is timed;
- a progress update (what the job's Reporter writes) and a lease renewal (the queue worker's heartbeat);
- the same short demo discovery end to end through each runner (created_at -> finished_at).

    .venv/bin/python -m benchmarks.jobs [--starts 5] [--epochs 1] [--no-discovery] [--old-ref 243c6b8]

The old runner runs from `git archive OLD_REF` (the last main before the queue) in a temporary
folder, its own modules first on the path (`python -c` in that folder), on its own SQLite workspace.
STUDIO_TEST_POSTGRES_URL (source .ci/postgres.sh) adds the queue on PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from core.demo.build import DemoConfig, generate_demo
from storage import open_workspace
from tests.builders import TINY_DEMO, TINY_RUN, demo_maps

REPO = Path(__file__).resolve().parents[1]
#: The last main whose runner launched one worker process per run (webapp/jobs.py, webapp/worker.py).
OLD_REF = "243c6b8"
#: The old runner's benchmark, run in a checkout of OLD_REF.
OLD_RUNNER = r"""
import json, sys, time
from storage import open_workspace
import webapp
from webapp import intake, jobs
assert webapp.__file__.startswith(sys.path[0] or __import__("os").getcwd()), webapp.__file__  # the old tree's
workspace, data, maps, starts, discover = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
store = open_workspace(workspace)
bad = store.create_project("gone", workspace + "/no-such-folder")
out = {"start_s": []}
for _ in range(starts):
    run = jobs.wait_for(store, jobs.start_job(store, bad.id, jobs.DETECT, {}), timeout=120)
    out["start_s"].append((run.started_at - run.created_at).total_seconds())
began = time.perf_counter()
for _ in range(100):
    store.update_progress(run.id, 0.5, "Training", "epoch 1/2")
out["progress_ms"] = 10 * (time.perf_counter() - began)
if discover:
    info = intake.create_project(store, "tiny", intake.summarize_dataset(data, maps))
    run = jobs.wait_for(store, jobs.start_job(store, info.id, jobs.DISCOVER, json.loads(sys.argv[6])), timeout=900)
    out["discovery_s"] = (run.finished_at - run.created_at).total_seconds()
    out["discovery_status"] = run.status
print("RESULT " + json.dumps(out))
"""


def old_runner(tmp: Path, data: Path, maps: Path, starts: int, discover: bool, settings: dict, ref: str) -> dict:
    tree = tmp / "old"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    env = dict(os.environ)
    env.pop("STUDIO_DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-c", OLD_RUNNER, str(tmp / "old-ws"), str(data), str(maps), str(starts),
                           "1" if discover else "0", json.dumps(settings)],
                          cwd=tree, env=env, check=True, capture_output=True, text=True)
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def new_runner(tmp: Path, data: Path, maps: Path, starts: int, discover: bool, settings: dict,
               database_url: str | None) -> dict:
    from webapp import intake, job_control

    workspace = tmp / f"new-ws-{uuid.uuid4().hex[:6]}"
    store = open_workspace(workspace, database_url)
    env = {**os.environ, "STUDIO_WORKSPACE": str(workspace)}
    env.pop("STUDIO_DATABASE_URL", None)
    if database_url:
        env["STUDIO_DATABASE_URL"] = database_url
    worker = subprocess.Popen([sys.executable, "-m", "jobs.worker", "--queue", "gpu", "--device", "cpu"], cwd=REPO,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict = {"start_s": []}
    try:
        bad = store.create_project("gone", str(workspace / "no-such-folder"))
        job_control.wait_for(store, job_control.start_job(store, bad.id, job_control.DETECT, {}), timeout=300)  # the worker is up
        for _ in range(starts):
            run = job_control.wait_for(store, job_control.start_job(store, bad.id, job_control.DETECT, {}), timeout=120, poll=0.02)
            out["start_s"].append((run.started_at - run.created_at).total_seconds())
        out["progress_ms"] = _timed(lambda: store.update_progress(run.id, 0.5, "Training", "epoch 1/2"))
        out["heartbeat_ms"] = _timed(lambda: store.heartbeat([run.id]))
        if discover:
            info = intake.create_project(store, "tiny", intake.summarize_dataset(data, maps))
            run = job_control.wait_for(store, job_control.start_job(store, info.id, job_control.DISCOVER, settings), timeout=900)
            out["discovery_s"] = (run.finished_at - run.created_at).total_seconds()
            out["discovery_status"] = run.status
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        job_control.client(store).close()
        store.close()
    return out


def _timed(call, n: int = 100) -> float:
    began = time.perf_counter()
    for _ in range(n):
        call()
    return 1000 * (time.perf_counter() - began) / n


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


#: A job's Reporter writes progress at most every 0.5 s; a queue worker renews its lease every LEASE/3 = 10 s.
WRITES_PER_S, BEATS_PER_S = 2.0, 0.1


def _overhead(row: dict) -> str:
    """The most reporting can take of a job's time: progress writes (and lease renewals) per second x their cost."""
    ms = WRITES_PER_S * row["progress_ms"] + BEATS_PER_S * row.get("heartbeat_ms", 0.0)
    return f"{ms / 10:.2f}"  # ms per s -> %


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=TINY_RUN["epochs"], help="MGViT epochs of the discovery")
    parser.add_argument("--old-ref", default=OLD_REF, help="the commit of the old runner")
    parser.add_argument("--no-discovery", action="store_true")
    args = parser.parse_args()
    discover, settings = not args.no_discovery, {**TINY_RUN, "epochs": args.epochs}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        data = generate_demo(tmp / "demo", DemoConfig(**TINY_DEMO))
        maps = demo_maps(data, tmp / "maps")
        rows = {"old runner (process per run), SQLite": old_runner(tmp, data, maps, args.starts, discover, settings,
                                                                  args.old_ref),
                "queue (DBOS), SQLite": new_runner(tmp, data, maps, args.starts, discover, settings, None)}
        postgres = os.environ.get("STUDIO_TEST_POSTGRES_URL")
        if postgres:
            rows["queue (DBOS), PostgreSQL"] = new_runner(tmp, data, maps, args.starts, discover, settings, postgres)
    print(f"{'runner':38} {'start median s':>14} {'start max s':>11} {'progress ms':>11} {'lease ms':>8} "
          f"{'report %':>8} {'discovery s':>14}")
    for name, row in rows.items():
        beat = f"{row['heartbeat_ms']:.1f}" if "heartbeat_ms" in row else "none"
        found = f"{row['discovery_s']:.1f} {row['discovery_status']}" if "discovery_s" in row else "-"
        print(f"{name:38} {_median(row['start_s']):14.2f} {max(row['start_s']):11.2f} {row['progress_ms']:11.1f} "
              f"{beat:>8} {_overhead(row):>8} {found:>14}")
    print(f"(report %: the most progress writes ({WRITES_PER_S:g}/s) and lease renewals ({BEATS_PER_S:g}/s) take of a "
          f"job's time; discovery: {args.epochs} epoch(s) on the tiny demo, created -> finished)")
    print(f"(cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
