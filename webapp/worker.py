"""The job process: `python -m webapp.worker RUN_ID` runs one queued run and records the outcome.

Kinds: "detect" (anomaly maps imported or from the built-in detector, then MEBin and the crops,
all stored for the Review page) and "discover" (the whole pipeline through
core.pipeline.run_discovery, results written in one transaction). Progress, heartbeat and the
loss history go to the database through Store.update_progress; the cancel flag is polled there.
Any error ends the run as failed with its message; the console output goes to the run's log.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.dataset import load_dataset
from core.imageio import read_image
from core.maps import normalize_global
from core.mebin import MEBinConfig, binarize
from core.records import Manifest, Region
from core.regions import RegionConfig, extract_regions
from storage import (
    QUEUED,
    BinarizationInput,
    ClusterInput,
    AssignmentInput,
    MapInput,
    ProjectInfo,
    RunInfo,
    Store,
    open_workspace,
)

#: Friendly names of the stages shown on the progress bar.
STAGE_LABELS = {
    "loading": "Reading the data set",
    "maps": "Anomaly maps",
    "mebin": "MEBin binarization",
    "regions": "Cropping anomaly regions",
    "estimate": "Estimating the number of classes",
    "training": "Training the mask-guided ViT",
    "prediction": "Predicting classes and the 2-D map",
    "metrics": "Computing metrics",
    "saving": "Saving results",
}
#: Most points kept in a run's loss history (older points are thinned out).
MAX_LOSS_POINTS = 1500
#: Shortest interval between two progress writes to the database, seconds.
PROGRESS_INTERVAL_S = 0.5
NORMAL_CLUSTER_NAME = "normal / false detection"


class JobCancelled(Exception):
    """The engineer asked the run to stop."""


class Reporter:
    """Throttled progress writes plus the cancel flag the pipeline polls."""

    def __init__(self, store: Store, run_id: int, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.store = store
        self.run_id = run_id
        self.interval_s = interval_s
        self.cancelled = False
        self.loss_history: list[dict[str, Any]] = []
        self._last_write = 0.0
        self._last_stage: str | None = None
        self._last_poll = 0.0
        self.metrics: dict[str, Any] | None = None  # a job's results to keep with the run (detect)

    def __call__(self, progress: float, stage: str, message: str = "", *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and stage == self._last_stage and now - self._last_write < self.interval_s:
            return
        self._last_write = self._last_poll = now
        self._last_stage = stage
        label = STAGE_LABELS.get(stage, stage)
        self.cancelled = bool(self.store.update_progress(
            self.run_id, float(min(max(progress, 0.0), 1.0)), label, message or None,
            loss_history=self.loss_history or None,
        )) or self.cancelled

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if not self.cancelled and now - self._last_poll >= self.interval_s:
            self._last_poll = now
            self.cancelled = self.store.is_cancel_requested(self.run_id)
        return self.cancelled

    def check(self) -> None:
        if self.should_cancel():
            raise JobCancelled()

    def add_loss(self, point: dict[str, Any]) -> None:
        self.loss_history.append(point)
        if len(self.loss_history) > MAX_LOSS_POINTS:
            # keep every epoch-end point and thin the per-step ones
            self.loss_history = [p for i, p in enumerate(self.loss_history) if p.get("epoch_done") or i % 2 == 0]


# ------------------------------------------------------------------------------ maps and MEBin


def _map_file(store: Store, project_id: int, relpath: str, source: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in source.lower()).strip("-") or "maps"
    return store.project_dir(project_id) / "maps" / slug / Path(relpath).with_suffix(".npy")


def latest_maps(store: Store, project_id: int) -> dict[str, dict[str, Any]]:
    """The newest map record of every image (a later import or detection replaces older ones)."""
    latest: dict[str, dict[str, Any]] = {}
    for record in store.list_maps(project_id):
        if record["image"] not in latest or record["id"] > latest[record["image"]]["id"]:
            latest[record["image"]] = record
    return latest


def stored_maps(store: Store, project_id: int, relpaths: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The project's recorded raw maps for every given image, or None when any is missing."""
    records = latest_maps(store, project_id)
    if not relpaths or any(r not in records for r in relpaths):
        return None
    maps = {}
    for relpath in relpaths:
        path = Path(records[relpath]["path"])
        if not path.is_file():
            return None
        maps[relpath] = np.load(path, allow_pickle=False).astype(np.float32, copy=False)
    return maps


def compute_maps(store: Store, project: ProjectInfo, manifest: Manifest, settings: Mapping[str, Any],
                 report: Reporter) -> tuple[dict[str, np.ndarray], str, list[str]]:
    """Raw maps of the images to inspect: imported from the maps folder or from the built-in detector.

    Returns (maps by relpath, source name, problems by file).
    """
    maps_dir = settings.get("maps_dir") or project.settings.get("maps_dir")
    source = settings.get("map_source") or ("import" if maps_dir else "builtin")
    if source == "import":
        if not maps_dir:
            raise ValueError("no maps folder is set for this project: choose the built-in detector")
        from core.detection.importer import import_maps

        report(0.02, "maps", f"importing maps from {maps_dir}", force=True)
        imported = import_maps(manifest.unlabeled, Path(maps_dir), strict=False)
        missing = [r.relpath for r in manifest.unlabeled if r.relpath not in imported.maps]
        if not imported.maps:
            raise ValueError(f"{maps_dir}: no usable anomaly map; "
                             + "; ".join(str(p) for p in imported.problems[:3]))
        if missing:
            raise ValueError(f"{len(missing)} image(s) have no usable map ({', '.join(missing[:3])} ...); "
                             + "; ".join(str(p) for p in imported.problems[:3]))
        return imported.maps, "imported", [str(p) for p in imported.problems]

    from core.detection import DetectorConfig, detect
    from core.device import resolve_device

    config = detector_config(settings)
    if not manifest.normal and config.method == "patchcore":
        config = replace(config, method="zero-shot")
    device = resolve_device(str(settings.get("device", "auto")))

    from core.detection.progress import OverallProgress

    overall = OverallProgress()  # one share for all the detector's stages: the bar never goes back

    def progress(stage: str, done: int, total: int) -> None:
        report(0.1 * overall(stage, done, total), "maps", f"{stage} {done}/{total}")
        report.check()

    detection = detect(manifest, config, device, progress=progress,
                       cache_dir=store.project_dir(project.id) / "detection_cache")
    if isinstance(report, Reporter):  # method, backbone, why, separation: kept with the run
        report.metrics = {"detection": detection.summary()}
    return dict(detection.maps), f"built-in {config.method}", []


def detector_config(settings: Mapping[str, Any]) -> Any:
    """DetectorConfig from run settings (method, detector backbone and weights)."""
    from core.detection import DetectorConfig

    values: dict[str, Any] = {}
    if settings.get("detector_method"):
        values["method"] = settings["detector_method"]
    if settings.get("detector_backbone"):
        values["backbone"] = settings["detector_backbone"]
    if settings.get("detector_weights"):
        values["weights"] = Path(settings["detector_weights"])
    if settings.get("seed") is not None:
        values["seed"] = int(settings["seed"])
    return DetectorConfig(**values)


def save_maps(store: Store, project_id: int, maps: Mapping[str, np.ndarray], source: str) -> None:
    """Write raw maps as .npy under the project folder and record them with the set's global range."""
    low = min(float(np.min(a)) for a in maps.values())
    high = max(float(np.max(a)) for a in maps.values())
    inputs = []
    for relpath, array in maps.items():
        path = _map_file(store, project_id, relpath, source)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.asarray(array, dtype=np.float32))
        stats = {"min": float(np.min(array)), "max": float(np.max(array)), "mean": float(np.mean(array)),
                 "global_min": low, "global_max": high}
        inputs.append(MapInput(relpath=relpath, path=str(path), stats=stats, source=source))
    store.record_maps(project_id, inputs)


def mebin_config(settings: Mapping[str, Any]) -> MEBinConfig:
    known = {f.name for f in fields(MEBinConfig)}
    return MEBinConfig(**{k.removeprefix("mebin_"): settings[k] for k in settings
                          if k.startswith("mebin_") and k.removeprefix("mebin_") in known})


def binarization_inputs(results: Mapping[str, Any], config: MEBinConfig, source: str = "mebin") -> list[BinarizationInput]:
    """MEBin results -> storage records with the evidence the Review page plots."""
    inputs = []
    for relpath, result in results.items():
        interval = getattr(result, "interval", None)
        sweep = getattr(result, "sweep_thresholds", None)
        settings = {
            "sample_rate": config.sample_rate, "min_interval_len": config.min_interval_len,
            "erode": config.erode, "kernel_size": config.kernel_size, "source": source,
            "interval": None if interval is None else [int(interval[0]), int(interval[1])],
            "sweep": None if sweep is None else [int(t) for t in sweep],
        }
        counts = [int(c) for c in getattr(result, "counts", [])]
        inputs.append(BinarizationInput(relpath=relpath, threshold=int(result.threshold),
                                        num_anomalies=int(result.num_anomalies), counts=counts,
                                        mask=result.mask, settings=settings))
    return inputs


def with_search_range(inputs: list[BinarizationInput], uint8_maps: Mapping[str, np.ndarray]) -> list[BinarizationInput]:
    """Add MEBin's search range (s_min, s_max of the per-map maxima) so one map can be re-cropped."""
    maxima = [int(m.max()) for m in uint8_maps.values()]
    s_min, s_max = (min(maxima), max(maxima)) if maxima else (0, 0)
    return [replace(i, settings={**i.settings, "s_min": s_min, "s_max": s_max}) for i in inputs]


def region_key(relpath: str, index: int) -> str:
    return f"{relpath}#{index}"


def store_regions(store: Store, project_id: int, regions: Sequence[Region]) -> dict[str, int]:
    """Record regions, keeping the ids (and with them labels and older runs) of unchanged images.

    An image whose crop boxes are exactly those already stored keeps its regions; only images
    whose regions changed are re-recorded. Returns region key -> id for every given region.
    """
    existing: dict[str, list[Any]] = {}
    for info in store.list_regions(project_id):
        existing.setdefault(info.image, []).append(info)
    by_image: dict[str, list[Region]] = {}
    for region in regions:
        by_image.setdefault(region.image, []).append(region)
    ids: dict[str, int] = {}
    changed: list[Region] = []
    for image, new in by_image.items():
        old = existing.get(image, [])
        if sorted((r.index, tuple(r.box)) for r in new) == sorted((o.index, tuple(o.box)) for o in old):
            ids.update({region_key(image, o.index): o.id for o in old})
        else:
            changed += new
    if changed:
        for info in store.record_regions(project_id, changed, replace=True):
            ids[region_key(info.image, info.index)] = info.id
    return ids


def run_detect(store: Store, run: RunInfo, report: Reporter) -> str:
    """Maps (import or built-in detector) -> stored maps -> MEBin -> stored masks and crops."""
    project = store.get_project(run.project_id)
    settings = run.settings
    report(0.0, "loading", project.data_root, force=True)
    manifest = load_dataset(Path(project.data_root))
    store.record_images(project.id, manifest.images)
    report.check()
    maps, source, problems = compute_maps(store, project, manifest, settings, report)
    report.check()
    keys = [r.relpath for r in manifest.unlabeled if r.relpath in maps]
    save_maps(store, project.id, {k: maps[k] for k in keys}, source)
    report(0.15, "mebin", f"{len(keys)} maps", force=True)
    config = mebin_config(settings)
    normalized = dict(zip(keys, normalize_global([maps[k] for k in keys])))
    results = dict(zip(keys, binarize(list(normalized.values()), sample_rate=config.sample_rate,
                                      min_interval_len=config.min_interval_len, erode=config.erode,
                                      kernel_size=config.kernel_size)))
    store.record_binarizations(project.id, with_search_range(binarization_inputs(results, config), normalized))
    report.check()
    report(0.6, "regions", "cropping", force=True)
    records = {r.relpath: r for r in manifest.unlabeled}
    regions: list[Region] = []
    for index, key in enumerate(keys):
        result = results[key]
        regions += extract_regions(key, read_image(records[key].path), result.normalized, result.mask,
                                   result.num_anomalies, RegionConfig())
        report(0.6 + 0.35 * (index + 1) / len(keys), "regions", f"{index + 1}/{len(keys)} images")
        report.check()
    store_regions(store, project.id, regions)
    with_anomaly = sum(1 for r in results.values() if r.num_anomalies > 0)
    note = f"; {len(problems)} map problem(s)" if problems else ""
    return f"{len(keys)} maps ({source}), {with_anomaly} images with anomalies, {len(regions)} regions{note}"


# ------------------------------------------------------------------------------ discovery


def discovery_config(settings: Mapping[str, Any]) -> Any:
    """DiscoveryConfig from the Discover page's settings (missing keys keep the defaults)."""
    from core.mgvit import MGViTConfig
    from core.pipeline import DiscoveryConfig
    from core.train import TrainConfig

    model: dict[str, Any] = {}
    if settings.get("backbone"):
        model["backbone"] = settings["backbone"]
    if settings.get("weights"):
        model["weights"] = Path(settings["weights"])
    if settings.get("pretrained") is not None:
        model["pretrained"] = bool(settings["pretrained"])
    if settings.get("image_size"):
        model["input_size"] = int(settings["image_size"])
    train: dict[str, Any] = {}
    for key, cast in (("epochs", int), ("batch_size", int), ("seed", int)):
        if settings.get(key) is not None:
            train[key] = cast(settings[key])
    train_fields = {f.name for f in fields(TrainConfig)}
    if settings.get("lr"):  # one learning rate for whichever optimizer the run uses
        train["lr"] = float(settings["lr"])
        if "adamw_lr" in train_fields:
            train["adamw_lr"] = float(settings["lr"])
    if settings.get("optimizer") and "optimizer" in train_fields:
        train["optimizer"] = settings["optimizer"]
    if settings.get("guided") is not None:
        train["guided"] = bool(settings["guided"])
    classes = settings.get("classes", "auto")
    values: dict[str, Any] = dict(
        model=MGViTConfig(**model), train=TrainConfig(**train),
        classes=None if classes in (None, "auto", "") else int(classes),
        detector=detector_config(settings), mebin=mebin_config(settings),
        device=str(settings.get("device", "auto")),
    )
    if settings.get("tau") is not None:
        values["tau"] = float(settings["tau"])
    if settings.get("seed") is not None:
        values["seed"] = int(settings["seed"])
    if settings.get("binarizer"):
        values["binarizer"] = settings["binarizer"]
    return DiscoveryConfig(**values)


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


def threshold_overrides(store: Store, project_id: int) -> dict[str, int]:
    """Thresholds the engineer set by hand on the Review page, by image relpath."""
    return {b["image"]: int(b["threshold"]) for b in store.list_binarizations(project_id)
            if (b.get("settings") or {}).get("source") == "override"}


def run_discover(store: Store, run: RunInfo, report: Reporter) -> str:
    """The whole pipeline on the project's data; clusters and assignments written atomically."""
    from core.pipeline import DiscoveryCancelled, load_labeled_crops, run_discovery

    project = store.get_project(run.project_id)
    settings = run.settings
    config = discovery_config(settings)
    report(0.0, "loading", project.data_root, force=True)
    manifest = load_dataset(Path(project.data_root))
    store.record_images(project.id, manifest.images)
    report.check()

    keys = [r.relpath for r in manifest.unlabeled]
    maps = None if settings.get("recompute_maps") else stored_maps(store, project.id, keys)
    if maps is None:
        maps, source, _ = compute_maps(store, project, manifest, settings, report)
        save_maps(store, project.id, maps, source)
    report.check()

    labeled = None
    if project.settings.get("labeled_dir") and settings.get("use_labeled_set", True):
        labeled = load_labeled_crops(project.settings["labeled_dir"])
    region_labels = None
    if settings.get("labels_from_project"):
        by_id = {info.id: region_key(info.image, info.index) for info in store.list_regions(project.id)}
        region_labels = {by_id[i]: name for i, name in store.labeled_set(project.id).items() if i in by_id}

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

    overrides = threshold_overrides(store, project.id)
    workdir = store.project_dir(project.id) / "runs" / str(run.id)
    try:
        result = run_discovery(manifest, config, maps=maps, labeled=labeled, region_labels=region_labels,
                               progress=on_progress, should_cancel=report.should_cancel, workdir=workdir,
                               thresholds=overrides)
    except DiscoveryCancelled as error:
        raise JobCancelled() from error
    if result.cancelled or report.should_cancel():
        raise JobCancelled()

    report(0.97, "saving", "writing results", force=True)
    bin_config = config.mebin
    uint8 = dict(zip(keys, normalize_global([maps[k] for k in keys])))
    store.record_binarizations(project.id, with_search_range(
        binarization_inputs(result.binarization, bin_config, source=config.binarizer), uint8))
    ids = store_regions(store, project.id, [r.region for r in result.regions])
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
                        embedding=np.asarray(r.embedding, dtype=np.float32))
        for r in result.regions
    ]
    store.write_results(run.id, clusters, assignments)

    checkpoint = None
    try:
        from core.train import save_checkpoint

        checkpoint = workdir / "model.pt"
        save_checkpoint(checkpoint, result.model, {"run_id": run.id, "cluster_names": result.cluster_names})
    except Exception as error:  # noqa: BLE001 - a missing checkpoint must not lose the results
        print(f"checkpoint not saved: {error}", file=sys.stderr)
        checkpoint = None

    previous = _previous_run_id(store, run)
    carried = 0
    if previous is not None:
        carried = sum(1 for _ in store.carry_over_names(previous, run.id))

    metrics = dict(result.metrics or {})
    if result.estimate is not None:
        metrics["class_estimate"] = {"k": result.estimate.k, "method": result.estimate.method,
                                     "table": result.estimate.table, "note": result.estimate.note}
    history = report.loss_history or [
        {"x": i + 1, "epoch_done": True, **{k: float(v) for k, v in h.items() if isinstance(v, (int, float))}}
        for i, h in enumerate(result.train_result.history)]
    parts = [f"{len(result.regions)} regions in {result.n_classes} classes"
             + (" (estimated)" if result.estimate is not None else "")]
    if labeled is not None or region_labels:
        parts.append(f"{len(result.base_classes)} labeled classes")
    if overrides:
        parts.append(f"{len(overrides)} threshold override(s) from the Review page applied")
    if carried:
        parts.append(f"{carried} cluster(s) matched to run #{previous}")
    if result.problems:
        parts.append(f"{len(result.problems)} note(s): " + "; ".join(result.problems[:3]))
    store.finish_run(run.id, metrics=metrics, timings=dict(result.timings),
                     checkpoint_path=None if checkpoint is None else str(checkpoint),
                     loss_history=history, message=", ".join(parts))
    return ""


# ------------------------------------------------------------------------------ entry point

JOBS: dict[str, Callable[[Store, RunInfo, Reporter], str]] = {"detect": run_detect, "discover": run_discover}


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, (ValueError, OSError, KeyError)) or type(error).__name__.endswith("Error"):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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
    workspace = os.environ.get("STUDIO_WORKSPACE") or "workspace"
    store = open_workspace(Path(workspace), os.environ.get("STUDIO_DATABASE_URL") or None)
    print(f"worker pid {os.getpid()} running run {args[0]}", flush=True)
    try:
        status = execute(store, int(args[0]))
    finally:
        store.close()
    print(f"run {args[0]} {status}", flush=True)
    return 0 if status in ("done", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main())
