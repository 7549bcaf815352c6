"""The classify job: new images placed in a finished run's named classes (core.classify).

Settings of the job's run: source_run (the discovery run whose classes are used, under the engineer's
current labels: storage.bundles.run_bundle), images (the folder of new images), maps_dir (their maps,
when the run's maps were imported). The outputs (images.csv, regions.csv, crops/, unknown/) go to
the project folder's classifications/run-<id>/; the Classify page reads them there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CLASSIFY = "classify"

__all__ = ["CLASSIFY", "classification_dir", "run_classify"]


def classification_dir(store: Any, run: Any) -> Path:
    """Where a classify run's outputs live."""
    return store.project_dir(run.project_id) / "classifications" / f"run-{run.id}"


def run_classify(store: Any, run: Any, report: Any) -> str:
    """Bundle of the source run (current labels) -> the new images classified -> files in classification_dir."""
    from core.classify import classify_images, load_bundle, load_images
    from core.classify.outputs import write_classification
    from core.decisions import decide
    from core.device import resolve_device
    from storage.bundles import run_bundle

    settings = run.settings
    images = Path(settings["images"])
    report(0.0, "model", f"the model of run #{settings['source_run']}", force=True)
    bundle = load_bundle(run_bundle(store, int(settings["source_run"])))
    manifest = load_images(images, bundle)
    report.check()
    device = resolve_device(decide(store.get_run(int(settings["source_run"])).settings).config.device)

    def progress(stage: str, done: int, total: int) -> None:
        report(0.05 + 0.8 * done / max(total, 1), "maps", f"{stage} {done}/{total}")
        report.check()

    result = classify_images(bundle, manifest, device=str(device), maps_folder=settings.get("maps_dir") or None,
                             progress=progress)
    report(0.9, "saving", "writing the classification", force=True)
    summary = write_classification(result, bundle, images, classification_dir(store, run))
    return (f"{summary['images']} images, {summary['regions']} regions classified with run "
            f"#{settings['source_run']}'s classes; {summary['unknown_regions']} regions unknown")
