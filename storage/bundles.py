"""Model bundles of the app's runs: one per run and state of the engineer's labels, written once.

A bundle (core.classify.bundle) is made from a finished discovery run's stored regions under the class
each region has now (core's export rule, storage.export.region_class: names, merges, moves, regions
marked normal) and kept under the project folder as bundles/run-<id>-<digest of those classes>/. The
same labels find the same bundle; a relabel makes a new one and the old one stays, like the run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from core.records import NORMAL_CLASS, Region, region_key
from storage.records import StorageError

__all__ = ["final_classes", "run_bundle"]


def final_classes(store, run_id: int) -> dict[str, str]:
    """Region key -> the class it has now in the run (the exports' class)."""
    from storage.export import region_class

    clusters = {c.id: c for c in store.list_clusters(run_id, include_merged=True)}
    return {region_key(a.region.image, a.region.index): region_class(a, clusters)
            for a in store.run_assignments(run_id)}


def _regions(store, run_id: int) -> list[Region]:
    from core.imageio import read_gray, read_image

    regions = []
    for info in store.run_regions(run_id):
        if not info.crop_path or not info.mask_path:
            raise StorageError(f"run {run_id}: region {info.image}#{info.index} has no crop file")
        regions.append(Region(info.image, info.index, tuple(info.box), read_image(info.crop_path),
                              read_gray(info.mask_path), int(info.area), float(info.score), bool(info.weak)))
    return regions


def run_bundle(store, run_id: int) -> Path:
    """The bundle of a finished discovery run under its current labels (written on first use).

    Raises StorageError when the run is not a finished discovery or its files are gone.
    """
    from core.classify import BundleSource, write_bundle
    from core.decisions import decide
    from core.dataset import load_dataset

    run = store.get_run(run_id)
    if run.kind != "discover" or run.status != "done":
        raise StorageError(f"run {run_id} is a {run.status} {run.kind} run; only a finished discovery has named "
                           "classes")
    classes = final_classes(store, run_id)
    digest = hashlib.sha256("\n".join(f"{k}\t{v}" for k, v in sorted(classes.items())).encode()).hexdigest()[:12]
    folder = store.project_dir(run.project_id) / "bundles" / f"run-{run_id}-{digest}"
    if (folder / "bundle.json").is_file():
        return folder
    project = store.get_project(run.project_id)
    manifest = load_dataset(Path(project.data_root))
    regions = [r for r in _regions(store, run_id) if r.key in classes]
    settings = {k: v for k, v in run.settings.items() if k not in ("weights", "ground_truth", "detector_weights")}
    maps_dir = run.settings.get("maps_dir") or project.settings.get("maps_dir")
    source = BundleSource(
        regions=regions, classes=[classes[r.key] for r in regions],
        images={r.relpath: r.path for r in manifest.unlabeled}, config=decide(settings).config,
        references=[r.path for r in manifest.normal],
        maps_imported=(run.settings.get("map_source") or ("import" if maps_dir else "builtin")) == "import",
        run=f"project {project.name!r}, run {run_id}",
        detection_cache=store.project_dir(project.id) / "detection_cache",
        model_file=Path(run.checkpoint_path) if run.checkpoint_path else None,
        normal_class=NORMAL_CLASS)
    return write_bundle(folder, source)
