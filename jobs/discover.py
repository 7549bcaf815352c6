"""The discover job: the whole pipeline through core.pipeline.run_discovery; the model, regions,
clusters and assignments written so that running it again replaces rather than adds (a retried run
stores its results once)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from core.config import DiscoveryConfig
from core.dataset import load_dataset, load_labeled_crops
from core.decisions import Decided, decide
from core.records import NORMAL_CLUSTER_NAME, region_key
from jobs.maps import (binarization_inputs, compute_maps, save_maps, store_regions, stored_maps, stored_normal_peaks,
                       with_search_range)
from jobs.progress import JobCancelled, Reporter
from jobs.wording import app_wording
from storage import SOURCE_GROUND_TRUTH, AssignmentInput, ClusterInput, RunInfo, Store

#: Where the pipeline's part of a discovery job's bar ends; storing the results takes the rest.
PIPELINE_END = 0.97


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
                      report: Reporter) -> tuple[dict[str, Any], float]:
    """The stored maps (or new ones), the labeled set and the engineer's region labels of a discovery run,
    and where on the bar the pipeline starts (after the maps this job made, if it made any)."""
    settings = run.settings
    keys = [r.relpath for r in manifest.unlabeled]
    maps = None if settings.get("recompute_maps") else stored_maps(store, project.id, keys)
    normal_peaks = stored_normal_peaks(store, project.id, keys)
    start = 0.0
    if maps is None:
        # the worker makes them here, on the detector's share of the bar (core.pipeline.detection_share)
        from core.pipeline import detection_share

        start = PIPELINE_END * detection_share(manifest, config)
        computed = compute_maps(store, project, manifest, config, settings, report, span=(0.0, start))
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
    return {"maps": maps, "normal_peaks": normal_peaks, "labeled": labeled, "region_labels": region_labels}, start


def _progress(report: Reporter, start: float = 0.0) -> Callable[[Any], None]:
    """core's progress events on the job's bar (from `start`, where the job's own maps ended, up to
    PIPELINE_END), the loss history on the way."""
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
        report(start + (PIPELINE_END - start) * event.overall, event.stage, event.message,
               force=bool(step and step.epoch_done))
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
    inputs, start = _discovery_inputs(store, run, project, manifest, decided.config, report)
    config = with_room_for_new_classes(decided.config, inputs["labeled"], inputs["region_labels"])
    overrides = store.threshold_overrides(project.id)  # the engineer's, from the Detection page
    workdir = store.project_dir(project.id) / "runs" / str(run.id)
    try:
        result = run_discovery(manifest, config, **inputs, progress=_progress(report, start),
                               should_cancel=report.should_cancel, workdir=workdir, thresholds=overrides)
    except DiscoveryCancelled as error:
        raise JobCancelled() from error
    if result.cancelled or report.should_cancel():
        raise JobCancelled()
    report(PIPELINE_END, "saving", "writing results", force=True)
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
