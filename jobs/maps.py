"""Anomaly maps, MEBin results and regions of a project as the jobs store them.

Maps come from a folder (imported) or the built-in detector and are saved as .npy with the set's
global range; MEBin's results are recorded with the evidence the Detection page plots; regions
are recorded keeping the ids of images whose crops did not change. Used by the worker process
and read by the Detection & MEBin page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.config import DiscoveryConfig, MEBinConfig
from core.detection.maps import global_range
from core.regions.mebin import search_range
from core.records import Manifest, Region, region_key
from storage import BinarizationInput, MapInput, ProjectInfo, Store
from jobs.progress import Reporter, StepSpan


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


def stored_normal_peaks(store: Store, project_id: int, relpaths: Sequence[str]) -> list[float]:
    """The held-out normal images' map peaks recorded with the newest maps of these images ([]: none,
    e.g. imported maps): the regions' floor (core.regions.crops.set_floor)."""
    records = latest_maps(store, project_id)
    found = [records[r] for r in relpaths if r in records]
    return [float(v) for v in (found[0].get("stats") or {}).get("normal_peaks", [])] if found else []


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


@dataclass
class ComputedMaps:
    """Raw maps of the images to inspect, where they came from, and the detector's record of them."""

    maps: dict[str, np.ndarray]  # by relpath
    source: str  # "imported" or "built-in <method>"
    problems: list[str] = field(default_factory=list)  # by file
    normal_peaks: list[float] = field(default_factory=list)  # the held-out normal images' map peaks
    separation: dict[str, Any] | None = None  # core.detection.separation's report on these maps
    summary: dict[str, Any] = field(default_factory=dict)  # the built-in detector's: method, why, separation


def _imported(manifest: Manifest, maps_dir: str, report: Reporter, start: float) -> ComputedMaps:
    from core.detection.importer import import_maps
    from core.stages import detection_record

    report(start, "maps", f"importing maps from {maps_dir}", force=True)
    imported = import_maps(manifest.unlabeled, Path(maps_dir), strict=False)
    missing = [r.relpath for r in manifest.unlabeled if r.relpath not in imported.maps]
    if not imported.maps:
        raise ValueError(f"{maps_dir}: no usable anomaly map; " + "; ".join(str(p) for p in imported.problems[:3]))
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no usable map ({', '.join(missing[:3])} ...); "
                         + "; ".join(str(p) for p in imported.problems[:3]))
    record = detection_record(Path(maps_dir))  # `python -m core detect` wrote one beside its maps
    return ComputedMaps(imported.maps, "imported", [str(p) for p in imported.problems] + record.problems,
                        record.normal_peaks, record.separation)


def map_source(project: ProjectInfo, settings: Mapping[str, Any]) -> str:
    """"import" (a maps folder) or "builtin" (the detector): as asked, else import when the project has a folder."""
    maps_dir = settings.get("maps_dir") or project.settings.get("maps_dir")
    return settings.get("map_source") or ("import" if maps_dir else "builtin")


def compute_maps(store: Store, project: ProjectInfo, manifest: Manifest, config: DiscoveryConfig,
                 settings: Mapping[str, Any], report: Reporter, span: tuple[float, float]) -> ComputedMaps:
    """Raw maps of the images to inspect: imported from the maps folder or from the built-in detector
    (config.detector), reported on the part `span` of the job's progress bar."""
    maps_dir = settings.get("maps_dir") or project.settings.get("maps_dir")
    if map_source(project, settings) == "import":
        if not maps_dir:
            raise ValueError("no maps folder is set for this project: choose the built-in detector")
        return _imported(manifest, maps_dir, report, span[0])

    from core.device import resolve_device
    from core.pipeline import detector_for, run_detection

    from core.detection.plan import step_shares

    detector = detector_for(manifest, config.detector, config.seed)
    steps = StepSpan(*span, step_shares(manifest, detector))  # the detector's phases on one forward-only part of the bar

    def progress(stage: str, done: int, total: int) -> None:
        report(steps.position(stage, done, total), "maps", f"{stage} {done}/{total}")
        report.check()

    summary: dict[str, Any] = {}  # method and backbone as run, why, separation: kept with the run
    maps = run_detection(manifest, detector, resolve_device(config.device), progress=progress,
                         cache_dir=store.project_dir(project.id) / "detection_cache", summary=summary)
    return ComputedMaps(maps, f"built-in {summary.get('method', detector.method)}", [],
                        list(summary.get("normal_peaks", [])), summary.get("separation"), summary)


def save_maps(store: Store, project_id: int, maps: Mapping[str, np.ndarray], source: str,
              normal_peaks: Sequence[float] = (), separation: Mapping[str, Any] | None = None) -> None:
    """Write raw maps as .npy under the project folder and record them with the set's global range,
    the detector's held-out normal peaks (stored_normal_peaks) and its separation report (stored_separation)."""
    low, high = global_range(list(maps.values()))
    inputs = []
    for relpath, array in maps.items():
        path = _map_file(store, project_id, relpath, source)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.asarray(array, dtype=np.float32))
        stats = {"min": float(np.min(array)), "max": float(np.max(array)), "mean": float(np.mean(array)),
                 "global_min": low, "global_max": high, "normal_peaks": [float(v) for v in normal_peaks],
                 "separation": None if separation is None else dict(separation)}
        inputs.append(MapInput(relpath=relpath, path=str(path), stats=stats, source=source))
    store.record_maps(project_id, inputs)


def stored_separation(store: Store, project_id: int) -> dict[str, Any] | None:
    """The separation report (core.detection.separation) of the project's newest maps; None when they
    have none (imported without a detection record, or fewer normal images than a hold-out needs).

    Maps stored before the report was kept with them: the newest finished detection job's report."""
    records = list(latest_maps(store, project_id).values())
    if not records:
        return None
    stats = records[0].get("stats") or {}
    if "separation" in stats:
        return stats["separation"]
    if not str(records[0].get("source", "")).startswith("built-in"):
        return None
    done = next((r for r in store.list_runs(project_id, kind="detect") if r.status == "done"), None)
    return (((done.metrics or {}).get("detection") or {}).get("separation")) if done is not None else None


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


def with_search_range(inputs: list[BinarizationInput], uint8_maps: Mapping[str, np.ndarray],
                      floor: float) -> list[BinarizationInput]:
    """Add MEBin's search range (s_min, s_max of the per-map maxima) and the floor the run's
    components cut used (core.regions.crops.set_floor) so one map can be re-cropped as the run cut it."""
    s_min, s_max = search_range(list(uint8_maps.values())) if uint8_maps else (0, 0)
    return [replace(i, settings={**i.settings, "s_min": s_min, "s_max": s_max, "noise_floor": floor}) for i in inputs]


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
