"""Progress the engineer can trust, measured on real jobs: the demo and DeepPCB, each a detection run
then a discovery run with the app's default settings, run by the job runner (jobs.runner.execute) in
this process on a fresh SQLite workspace, after the warm-up a queue worker does when it starts
(jobs.worker.warm_up). Every progress write the page would read is recorded
(bar, stage, remaining time) and judged against when the run really finished:

- longest stand-still: the longest time the bar did not move (up to the finish), as a share of the job;
- remaining time: the worst ratio (either way) of the shown estimate to the real time left, over the
  writes after the first 10 % of the bar with at least MIN_LEFT_S left (below that the page shows
  seconds, and any ratio is noise), and the share of those writes within a factor of 2.

    .venv/bin/python -m benchmarks.progress [--sets demo,deeppcb] [--demo-size full] [--save traces.json]

Targets (issue 24): no stand-still over ~10 % of the job; the estimate within a factor of 2 after 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from jobs.runner import execute
from jobs.worker import warm_up
from storage import DONE, QUEUED, Store, open_workspace
from webapp import intake

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
#: Writes with less real time left than this are not judged (the page shows whole seconds).
MIN_LEFT_S = 5.0
#: What the Detection page's form sends with its defaults (built-in detector, auto everywhere).
DETECT_DEFAULTS = {"map_source": "builtin", "detector_method": "auto", "detector_backbone": "auto", "device": "auto",
                   "detector_weights": None}


@dataclass
class Trace:
    """The progress writes of one run: (seconds since its start, bar, stage, remaining estimate)."""

    writes: list[tuple[float, float, str, float | None]] = field(default_factory=list)
    total_s: float = 0.0
    status: str = ""
    messages: list[str] = field(default_factory=list)

    def stand_still(self) -> tuple[float, str]:
        """The longest time the bar stood still (the last stretch ends at the finish), and its stage."""
        longest, stage = 0.0, ""
        moved_at, bar, where = 0.0, 0.0, ""
        for t, value, name, _ in self.writes + [(self.total_s, 1.0, "finished", None)]:
            if value > bar + 1e-9:
                if t - moved_at > longest:
                    longest, stage = t - moved_at, where
                moved_at, bar = t, value
            where = name
        return longest, stage

    def estimate_ratios(self) -> list[float]:
        """estimate / truth or truth / estimate (>= 1) for each judged write."""
        ratios = []
        for t, bar, _, remaining in self.writes:
            left = self.total_s - t
            if remaining is None or bar < 0.10 or left < MIN_LEFT_S:
                continue
            shown = max(remaining, 1.0)  # the page shows at least "1 s"
            ratios.append(max(shown / left, left / shown))
        return ratios


def traced_run(store: Store, project_id: int, kind: str, settings: dict) -> Trace:
    """Run one job of `kind` to its end with every progress write recorded."""
    trace = Trace()
    run = store.start_run(project_id, kind, settings, status=QUEUED)
    original = store.update_progress
    began = time.monotonic()

    def recording(run_id, progress, stage=None, message=None, *, timings=None, loss_history=None):
        remaining = (timings or {}).get("remaining_s")
        trace.writes.append((time.monotonic() - began, float(progress), stage or "", remaining))
        trace.messages.append(message or "")
        return original(run_id, progress, stage, message, timings=timings, loss_history=loss_history)

    store.update_progress = recording  # type: ignore[method-assign]
    try:
        trace.status = execute(store, run.id)
    finally:
        del store.update_progress
    trace.total_s = time.monotonic() - began
    if trace.status != DONE:
        raise RuntimeError(f"{kind} run {run.id} ended {trace.status}: {store.get_run(run.id).message}")
    return trace


def project_for(store: Store, name: str, demo_size: str) -> int:
    if name == "demo":
        os.environ[intake.DEMO_SIZE_ENV] = demo_size
        return intake.create_demo_project(store).id
    root = DATASETS / name
    if not root.is_dir():
        raise SystemExit(f"{root}: the {name} data set is not there (see ../shared/datasets)")
    return intake.create_project(store, name, intake.summarize_dataset(root)).id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="demo,deeppcb", help="demo and/or folders of ../shared/datasets")
    parser.add_argument("--demo-size", default="full", choices=sorted(intake.DEMO_SIZES))
    parser.add_argument("--save", type=Path, help="write every run's progress writes to this JSON file")
    args = parser.parse_args()
    rows = []
    began = time.monotonic()
    warm_up()  # as a queue worker does when it starts, before its first job
    print(f"  worker warm-up (imports, UMAP compiled): {time.monotonic() - began:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        store = open_workspace(Path(folder) / "ws")
        try:
            for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
                project_id = project_for(store, name, args.demo_size)
                for kind, settings in (("detect", DETECT_DEFAULTS), ("discover", {})):
                    trace = traced_run(store, project_id, kind, dict(settings))
                    rows.append((name, kind, trace))
                    print(f"  {name} {kind}: {trace.total_s:.0f} s, {len(trace.writes)} writes", flush=True)
        finally:
            store.close()
    if args.save:
        args.save.write_text(json.dumps([{"set": name, "job": kind, "total_s": trace.total_s, "writes": trace.writes,
                                          "messages": trace.messages} for name, kind, trace in rows], indent=1))
    print(f"{'set':10} {'job':9} {'time s':>7} {'writes':>6} {'still s':>7} {'still %':>7} {'still in stage':32} "
          f"{'worst ratio':>11} {'within 2x':>9}")
    worst_share, worst_ratio = 0.0, 1.0
    for name, kind, trace in rows:
        still, stage = trace.stand_still()
        ratios = trace.estimate_ratios()
        share = still / max(trace.total_s, 1e-9)
        worst = max(ratios, default=float("nan"))
        within = sum(r <= 2.0 for r in ratios) / len(ratios) if ratios else float("nan")
        worst_share, worst_ratio = max(worst_share, share), max(worst_ratio, worst if ratios else 1.0)
        print(f"{name:10} {kind:9} {trace.total_s:7.1f} {len(trace.writes):6d} {still:7.1f} {100 * share:7.1f} "
              f"{stage[:32]:32} {worst:11.2f} {100 * within:8.0f}%")
    print(f"(estimate judged after 10 % of the bar with >= {MIN_LEFT_S:g} s really left; cores: {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f} at the end)")
    print(f"longest stand-still: {100 * worst_share:.1f} % of a job; worst remaining-time ratio: {worst_ratio:.2f}")


if __name__ == "__main__":
    main()
