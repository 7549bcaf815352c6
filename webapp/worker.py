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

from core.config import AUTO_REPRESENTATION, AUTO_VIT, DiscoveryConfig, resolve_representation, resolve_vit_backbone
from core.dataset import load_dataset, load_labeled_crops
from core.records import region_key
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

NORMAL_CLUSTER_NAME = "normal / false detection"


# ------------------------------------------------------------------------------ maps and MEBin


def run_detect(store: Store, run: RunInfo, report: Reporter) -> str:
    """Maps (import or built-in detector) -> stored maps -> MEBin -> stored masks and crops."""
    from core.pipeline import binarize_maps, cut_regions, prepare_maps
    from core.regions.refine import references_for
    from core.regions.crops import set_floor

    project = store.get_project(run.project_id)
    settings = run.settings
    report(0.0, "loading", project.data_root, force=True)
    manifest = load_dataset(Path(project.data_root))
    store.record_images(project.id, manifest.images)
    report.check()
    # The detector is most of a detection job: it gets most of the bar (measured on the demo).
    config = DiscoveryConfig.from_settings(settings)
    maps, source, problems, normal_peaks = compute_maps(store, project, manifest, settings, report, span=(0.02, 0.80))
    report.check()
    keys = [r.relpath for r in manifest.unlabeled if r.relpath in maps]
    save_maps(store, project.id, {k: maps[k] for k in keys}, source, normal_peaks)
    report(0.80, "mebin", f"{len(keys)} maps", force=True)
    records = {r.relpath: r for r in manifest.unlabeled}
    map_set = prepare_maps([records[k] for k in keys], maps, normal_peaks)
    results = binarize_maps(map_set, config.mebin, config.binarizer)
    floor = set_floor([map_set.normalized[k] for k in map_set.keys], map_set.normal_peaks, config.regions)
    store.record_binarizations(project.id, with_search_range(
        binarization_inputs(results, config.mebin, source=config.binarizer), map_set.normalized, floor))
    report.check()
    report(0.85, "regions", "cropping", force=True)

    def progress(done: int, total: int) -> None:
        report(0.85 + 0.14 * done / total, "regions", f"{done}/{total} images")
        report.check()

    references = references_for([r.path for r in manifest.normal], config.regions)
    problems = list(problems) + (references.problems if references is not None else [])
    regions = cut_regions(map_set, results, config.regions, progress=progress, references=references, floor=floor)
    store_regions(store, project.id, regions)
    with_anomaly = sum(1 for r in results.values() if r.num_anomalies > 0)
    note = f"; {len(problems)} problem(s) with maps or references" if problems else ""
    return f"{len(keys)} maps ({source}), {with_anomaly} images with anomalies, {len(regions)} regions{note}"


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


def run_discover(store: Store, run: RunInfo, report: Reporter) -> str:
    """The whole pipeline on the project's data; clusters and assignments written atomically."""
    from core.errors import DiscoveryCancelled
    from core.pipeline import run_discovery

    project = store.get_project(run.project_id)
    settings = run.settings
    config = DiscoveryConfig.from_settings(settings)
    report(0.0, "loading", project.data_root, force=True)
    manifest = load_dataset(Path(project.data_root))
    store.record_images(project.id, manifest.images)
    report.check()

    keys = [r.relpath for r in manifest.unlabeled]
    maps = None if settings.get("recompute_maps") else stored_maps(store, project.id, keys)
    normal_peaks = stored_normal_peaks(store, project.id, keys)
    if maps is None:
        # core.pipeline gives the maps stage its first 10 % of the bar; the worker makes them here.
        maps, source, _, normal_peaks = compute_maps(store, project, manifest, settings, report, span=(0.0, 0.097))
        save_maps(store, project.id, maps, source, normal_peaks)
    report.check()

    labeled = None
    if project.settings.get("labeled_dir") and settings.get("use_labeled_set", True):
        labeled = load_labeled_crops(project.settings["labeled_dir"])
    region_labels = None
    if settings.get("labels_from_project"):
        by_id = {info.id: region_key(info.image, info.index) for info in store.list_regions(project.id)}
        region_labels = {by_id[i]: name for i, name in store.labeled_set(project.id).items() if i in by_id}
    config = with_room_for_new_classes(config, labeled, region_labels)

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

    overrides = store.threshold_overrides(project.id)  # the engineer's, from the Detection page
    workdir = store.project_dir(project.id) / "runs" / str(run.id)
    try:
        result = run_discovery(manifest, config, maps=maps, labeled=labeled, region_labels=region_labels,
                               progress=on_progress, should_cancel=report.should_cancel, workdir=workdir,
                               thresholds=overrides, normal_peaks=normal_peaks)
    except DiscoveryCancelled as error:
        raise JobCancelled() from error
    if result.cancelled or report.should_cancel():
        raise JobCancelled()

    report(0.97, "saving", "writing results", force=True)
    # The model first: a run whose checkpoint cannot be written fails before any result is stored.
    from core.mgvit.checkpoint import save_checkpoint

    checkpoint = workdir / "model.pt"
    try:
        if result.train_result.model is not None:  # the descriptors representation trains none
            save_checkpoint(checkpoint, result.train_result, {"run_id": run.id, "cluster_names": result.cluster_names},
                            model_config=config.model, train_config=config.train)
    except OSError as error:
        raise RuntimeError(f"the trained model could not be saved to {checkpoint}: {error}") from error
    store.record_binarizations(project.id, with_search_range(
        binarization_inputs(result.binarization, config.mebin, source=config.binarizer), result.normalized_maps,
        result.floor))
    ids = store_regions(store, project.id, [r.region for r in result.regions])
    if (result.metrics or {}).get("region_truth"):  # COCO region truth: kept for the Evaluate page
        store.set_labels(project.id, {ids[r.region.key]: str(r.gt) for r in result.regions if r.gt},
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

    previous = _previous_run_id(store, run)
    carried = 0
    if previous is not None:
        carried = sum(1 for _ in store.carry_over_names(previous, run.id))

    metrics = dict(result.metrics or {})
    if settings.get("backbone") == AUTO_VIT:  # what auto chose, and why, recorded with the run
        why = resolve_vit_backbone(replace(config.model, backbone=AUTO_VIT))[1]
        metrics["backbone"] = {"asked": AUTO_VIT, "used": config.model.backbone, "why": why}
    if settings.get("representation") in (None, "", AUTO_REPRESENTATION):  # and the representation auto chose
        metrics["representation"] = {"asked": AUTO_REPRESENTATION, "used": config.representation,
                                     "why": resolve_representation(AUTO_REPRESENTATION, config.model)[1]}
    if result.estimate is not None:
        metrics["class_estimate"] = estimate_record(result.estimate, result.n_novel)
    history = report.loss_history or [
        {"x": i + 1, "epoch_done": True, **{k: float(v) for k, v in h.items() if isinstance(v, (int, float))}}
        for i, h in enumerate(result.train_result.history)]
    parts = [f"{len(result.regions)} regions in {result.n_novel} classes"
             + (" (estimated)" if result.estimate is not None else "")]
    if "backbone" in metrics:
        parts.append(f"auto chose {metrics['backbone']['why']}")
    if "representation" in metrics:
        parts.append(f"auto: {metrics['representation']['why']}")
    if labeled is not None or region_labels:
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
    return ""


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
