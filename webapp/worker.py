"""The job process: `python -m webapp.worker RUN_ID` runs one queued run and records the outcome.

Kinds: "detect" (anomaly maps imported or from the built-in detector, then MEBin and the crops,
all stored for the Detection page) and "discover" (the whole pipeline through
core.pipeline.run_discovery, results written in one transaction). Progress (one forward-only bar
with a measured remaining time, webapp.progress), heartbeat and the loss history go to the
database; the cancel flag is polled there. Any error ends the run as failed with a message the
engineer can act on; the console output goes to the run's log.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from core.config import DiscoveryConfig
from core.dataset import load_dataset, load_labeled_crops
from core.decisions import Decided, decide
from core.records import NORMAL_CLUSTER_NAME, region_key
from storage import QUEUED, SOURCE_GROUND_TRUTH, AssignmentInput, ClusterInput, RunInfo, Store, environment, open_workspace
from webapp.detection_job import (
    binarization_inputs,
    compute_maps,
    latest_maps,
    save_maps,
    stored_normal_peaks,
    store_regions,
    stored_maps,
    with_search_range,
)
from webapp.classify_job import run_classify
from webapp.progress import JobCancelled, Reporter

__all__ = ["latest_maps", "execute", "main"]


# ------------------------------------------------------------------------------ maps and MEBin


#: Where the detection job's bar stands when core's stages "mebin" and "regions" start, and their spans.
DETECT_SPANS = {"mebin": (0.80, 0.05), "regions": (0.85, 0.14)}


def run_detect(store: Store, run: RunInfo, report: Reporter) -> str:
    """Maps (import or built-in detector) -> stored maps -> core's MEBin and regions chain -> stored masks and crops."""
    from core.pipeline import Stages, find_regions, prepare_maps

    project = store.get_project(run.project_id)
    config = decide(run.settings).config  # a setting it cannot use fails the job before any work
    report(0.0, "loading", project.data_root, force=True)
    manifest = load_dataset(Path(project.data_root))
    store.record_images(project.id, manifest.images)
    report.check()
    # The detector is most of a detection job: it gets most of the bar (measured on the demo).
    computed = compute_maps(store, project, manifest, config, run.settings, report, span=(0.02, 0.80))
    if computed.summary:
        report.metrics = {"detection": computed.summary}  # method, why, separation: kept with the run
    report.check()
    keys = [r.relpath for r in manifest.unlabeled if r.relpath in computed.maps]
    save_maps(store, project.id, {k: computed.maps[k] for k in keys}, computed.source, computed.normal_peaks,
              computed.separation)
    records = {r.relpath: r for r in manifest.unlabeled}
    map_set = prepare_maps([records[k] for k in keys], computed.maps, computed.normal_peaks)

    def progress(event: Any) -> None:
        start, span = DETECT_SPANS[event.stage]
        report(start + span * event.fraction, event.stage, event.message, force=event.fraction == 0.0)
        report.check()

    found = find_regions(map_set, manifest.normal, config, Stages(progress), require_anomalies=False)
    store.record_binarizations(project.id, with_search_range(
        binarization_inputs(found.binarization, config.mebin, source=config.binarizer), map_set.normalized,
        found.floor))
    store_regions(store, project.id, found.regions)
    problems = computed.problems + found.problems
    note = f"; {len(problems)} problem(s) with maps or references" if problems else ""
    return (f"{len(keys)} maps ({computed.source}), {found.with_anomalies} images with anomalies, "
            f"{len(found.regions)} regions{note}")


# ------------------------------------------------------------------------------ discovery


def _previous_run_id(store: Store, run: RunInfo) -> int | None:
    """The run whose names a retraining run carries over: its parent, else the newest done run."""
    if run.parent_run_id:
        return run.parent_run_id
    if run.settings.get("parent_run_id"):
        return int(run.settings["parent_run_id"])
    if run.settings.get("labels_from_project"):
        done = [r for r in store.list_runs(run.project_id, kind="discover", status="done") if r.id != run.id]
        return done[0].id if done else None
    return None


def with_room_for_new_classes(config: DiscoveryConfig, labeled: Any, region_labels: Mapping[str, str] | None) -> DiscoveryConfig:
    """With K = auto in a run that learns named classes, let the estimate count at least the named
    classes plus two new ones, so a retraining never fails because the estimate left no room for
    new classes (it counts every class, the named ones included)."""
    if config.classes is not None or not region_labels:
        return config
    named = set(getattr(labeled, "base_classes", None) or []) | set(region_labels.values())
    k_min = max(config.estimate.k_min, len(named) + 2)
    estimate = replace(config.estimate, k_min=k_min, k_max=max(config.estimate.k_max, k_min))
    return replace(config, estimate=estimate)


def _discovery_inputs(store: Store, run: RunInfo, project: Any, manifest: Any, config: DiscoveryConfig,
                      report: Reporter) -> dict[str, Any]:
    """The stored maps (or new ones), the labeled set and the engineer's region labels of a discovery run."""
    settings = run.settings
    keys = [r.relpath for r in manifest.unlabeled]
    maps = None if settings.get("recompute_maps") else stored_maps(store, project.id, keys)
    normal_peaks = stored_normal_peaks(store, project.id, keys)
    if maps is None:
        # core.pipeline gives the maps stage its first 10 % of the bar; the worker makes them here.
        computed = compute_maps(store, project, manifest, config, settings, report, span=(0.0, 0.097))
        maps, normal_peaks = computed.maps, computed.normal_peaks
        save_maps(store, project.id, maps, computed.source, normal_peaks, computed.separation)
    report.check()
    labeled = None
    if project.settings.get("labeled_dir") and settings.get("use_labeled_set", True):
        labeled = load_labeled_crops(project.settings["labeled_dir"])
    region_labels = None
    if settings.get("labels_from_project"):
        by_id = {info.id: region_key(info.image, info.index) for info in store.list_regions(project.id)}
        region_labels = {by_id[i]: name for i, name in store.labeled_set(project.id).items() if i in by_id}
    return {"maps": maps, "normal_peaks": normal_peaks, "labeled": labeled, "region_labels": region_labels}


def _progress(report: Reporter) -> Callable[[Any], None]:
    """core's progress events on the job's bar (up to 97 %), the loss history on the way."""
    def on_progress(event: Any) -> None:
        if report.should_cancel():
            raise JobCancelled()  # stop now rather than predict with a half-trained model
        step = getattr(event, "train", None)
        if step is not None:
            x = step.epoch + step.step / max(step.steps_per_epoch, 1)
            point = {"x": round(x, 4), "loss": float(step.loss), **{k: float(v) for k, v in step.losses.items()}}
            if step.epoch_done:
                point["epoch_done"] = True
            if step.epoch_done or not report.loss_history or report.loss_history[-1].get("x") != point["x"]:
                report.add_loss(point)
        report(0.97 * event.overall, event.stage, event.message, force=bool(step and step.epoch_done))
    return on_progress


def run_discover(store: Store, run: RunInfo, report: Reporter) -> str:
    """The whole pipeline on the project's data; clusters and assignments written atomically."""
    from core.errors import DiscoveryCancelled
    from core.pipeline import run_discovery

    project = store.get_project(run.project_id)
    decided = decide(run.settings)  # each auto decision made once, recorded with the run below
    report(0.0, "loading", project.data_root, force=True)
    manifest = load_dataset(Path(project.data_root))
    store.record_images(project.id, manifest.images)
    report.check()
    inputs = _discovery_inputs(store, run, project, manifest, decided.config, report)
    config = with_room_for_new_classes(decided.config, inputs["labeled"], inputs["region_labels"])
    overrides = store.threshold_overrides(project.id)  # the engineer's, from the Detection page
    workdir = store.project_dir(project.id) / "runs" / str(run.id)
    try:
        result = run_discovery(manifest, config, **inputs, progress=_progress(report),
                               should_cancel=report.should_cancel, workdir=workdir, thresholds=overrides)
    except DiscoveryCancelled as error:
        raise JobCancelled() from error
    if result.cancelled or report.should_cancel():
        raise JobCancelled()
    report(0.97, "saving", "writing results", force=True)
    checkpoint = _save_results(store, run, result, config, workdir)
    _finish(store, run, result, decided, report, checkpoint, overrides, inputs)
    return ""


def _save_results(store: Store, run: RunInfo, result: Any, config: DiscoveryConfig, workdir: Path) -> Path:
    """The model (first: a run whose checkpoint cannot be written fails before any result is stored),
    the masks, the regions and the clusters with their assignments."""
    from core.mgvit.checkpoint import save_checkpoint

    checkpoint = workdir / "model.pt"
    try:
        if result.train_result.model is not None:  # the descriptors representation trains none
            save_checkpoint(checkpoint, result.train_result, {"run_id": run.id, "cluster_names": result.cluster_names},
                            model_config=config.model, train_config=config.train)
    except OSError as error:
        raise RuntimeError(f"the trained model could not be saved to {checkpoint}: {error}") from error
    store.record_binarizations(run.project_id, with_search_range(
        binarization_inputs(result.binarization, config.mebin, source=config.binarizer), result.normalized_maps,
        result.floor))
    ids = store_regions(store, run.project_id, [r.region for r in result.regions])
    if (result.metrics or {}).get("region_truth"):  # COCO region truth: kept for the Evaluate page
        store.set_labels(run.project_id, {ids[r.region.key]: str(r.gt) for r in result.regions if r.gt},
                         source=SOURCE_GROUND_TRUTH)
    clusters = []
    for slot, name in enumerate(result.cluster_names):
        if slot == result.normal_cluster:
            clusters.append(ClusterInput(slot=slot, name=NORMAL_CLUSTER_NAME, is_normal=True))
        elif name in result.base_classes:
            clusters.append(ClusterInput(slot=slot, name=name))
        else:
            clusters.append(ClusterInput(slot=slot))
    assignments = [
        AssignmentInput(region_id=ids[r.key], slot=int(r.cluster), confidence=float(r.confidence),
                        umap_x=float(r.umap_x), umap_y=float(r.umap_y),
                        embedding=np.asarray(r.embedding, dtype=np.float32),
                        probabilities=np.asarray(r.probabilities, dtype=np.float32))
        for r in result.regions
    ]
    store.write_results(run.id, clusters, assignments)
    return checkpoint


def _finish(store: Store, run: RunInfo, result: Any, decided: Decided, report: Reporter, checkpoint: Path,
            overrides: Mapping[str, int], inputs: Mapping[str, Any]) -> None:
    """The run's record: metrics with what auto decided and why, timings, loss history, one message."""
    previous = _previous_run_id(store, run)
    carried = sum(1 for _ in store.carry_over_names(previous, run.id)) if previous is not None else 0
    metrics = dict(result.metrics or {})
    metrics.update({key: decision.record() for key, decision in decided.automatic().items()})
    metrics["training"] = {"epochs_done": int(result.train_result.epochs_done)}
    if result.estimate is not None:
        metrics["class_estimate"] = estimate_record(result.estimate, result.n_novel)
    history = report.loss_history or [
        {"x": i + 1, "epoch_done": True, **{k: float(v) for k, v in h.items() if isinstance(v, (int, float))}}
        for i, h in enumerate(result.train_result.history)]
    parts = [f"{len(result.regions)} regions in {result.n_novel} classes"
             + (" (estimated)" if result.estimate is not None else "")]
    parts += [f"auto chose {why}" for why in decided.lines()]
    if inputs["labeled"] is not None or inputs["region_labels"]:
        parts.append(f"{len(result.base_classes)} labeled classes")
    if overrides:
        parts.append(f"{len(overrides)} threshold override(s) from the Detection & MEBin page applied")
    if carried:
        parts.append(f"{carried} cluster(s) matched to run #{previous}")
    if result.problems:
        parts.append(f"{len(result.problems)} note(s): " + "; ".join(result.problems[:3]))
    store.finish_run(run.id, metrics=metrics, timings=dict(result.timings),
                     checkpoint_path=str(checkpoint) if checkpoint.is_file() else None,  # descriptors: no model
                     loss_history=history, message=", ".join(parts))


# ------------------------------------------------------------------------------ entry point

JOBS: dict[str, Callable[[Store, RunInfo, Reporter], str]] = {"detect": run_detect, "discover": run_discover,
                                                              "classify": run_classify}


#: Command-line options core's messages may name, rewritten in the words of the app's forms (in order).
APP_WORDS: list[tuple[str, str]] = [
    (r"(?:pass|use|give|set) --classes(?: K)?", "set the number of classes (K) on the Discover or Labels page"),
    (r"--classes (\d+)", r"K = \1"),
    (r"pass the number of classes", "set the number of classes (K)"),
    (r"--classes(?: K)?", "the number of classes (K)"),
    (r"(?:pass|use|give) --weights(?: FILE)?", "give a weights file (the 'Weights file' field)"),
    (r"--weights(?: FILE)?", "the weights file"),
    (r"(?:pass|use|give) --backbone(?: NAME)?", "choose another backbone"),
    (r"--backbone(?: NAME)?", "the backbone"),
    (r"--device(?: (?:auto|cpu|cuda))?", "the device"),
    (r"(?:pass|use|give) --maps(?: DIR)?", "import anomaly maps on the Detection & MEBin page"),
    (r"--maps(?: DIR)?", "the maps folder"),
    (r"--epochs(?: N)?", "the number of epochs"),
    (r"--ground-truth(?: FILE)?", "a ground-truth file"),
]


def app_wording(text: str) -> str:
    """A message of core in the app's words: command-line options become the fields that set them."""
    for pattern, words in APP_WORDS:
        text = re.sub(pattern, words, text)
    return text


def _describe(error: BaseException) -> str:
    text = app_wording(str(error).strip())
    if isinstance(error, (ValueError, OSError, KeyError)) or type(error).__name__.endswith("Error"):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def estimate_record(estimate: Any, n_classes: int) -> dict[str, Any]:
    """What a run records of core's class-count estimate: K (all classes, and the new ones this run
    discovers), how sure core is (confidence, word, sentence), and the evidence."""
    record: dict[str, Any] = {"k": int(estimate.k), "n_classes": int(n_classes), "method": estimate.method,
                              "table": estimate.table, "note": estimate.note}
    for name in ("confidence", "sureness"):
        value = getattr(estimate, name, None)
        if isinstance(value, (int, float, str)):
            record[name] = value
    for name in ("summary", "describe"):
        method = getattr(estimate, name, None)
        if callable(method):
            record["description" if name == "describe" else name] = app_wording(str(method()))
    return record


def execute(store: Store, run_id: int) -> str:
    """Run one queued run to its end in this process; returns its final status."""
    run = store.get_run(run_id)
    if run.status != QUEUED:
        print(f"run {run_id} is {run.status}, not queued: nothing to do", file=sys.stderr)
        return run.status
    if run.cancel_requested:
        store.mark_cancelled(run_id, "cancelled before it started")
        return "cancelled"
    job = JOBS.get(run.kind)
    if job is None:
        store.fail_run(run_id, f"unknown job kind {run.kind!r}")
        return "failed"
    run = store.mark_running(run_id, os.getpid())
    report = Reporter(store, run_id)
    try:
        message = job(store, run, report)
        if run.kind != "discover":
            store.finish_run(run_id, message=message, loss_history=report.loss_history or None,
                             metrics=report.metrics)
        return "done"
    except JobCancelled:
        store.mark_cancelled(run_id, "cancelled by the engineer")
        return "cancelled"
    except BaseException as error:  # noqa: BLE001 - every failure is recorded for the engineer
        traceback.print_exc()
        try:
            store.fail_run(run_id, _describe(error))
        except Exception:  # noqa: BLE001
            traceback.print_exc()
        if isinstance(error, KeyboardInterrupt):
            raise
        return "failed"


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m webapp.worker RUN_ID`: workspace and database from the environment."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m webapp.worker RUN_ID", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    store = open_workspace(*environment())  # the worker's one read of the environment
    print(f"worker pid {os.getpid()} running run {args[0]}", flush=True)
    try:
        status = execute(store, int(args[0]))
    finally:
        store.close()
    print(f"run {args[0]} {status}", flush=True)
    return 0 if status in ("done", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main())
