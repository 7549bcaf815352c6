"""Project intake: check a data set folder (and its optional maps and labeled set) into a summary
the engineer reads before creating a project, create the project, and make the demo project.

Calls core (data set loading, map import, demo generator) and storage; holds no algorithm and no
`st.*`, so tests and scripts use it directly.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.dataset import DatasetError, load_dataset
from core.detection.template import pair_by_name
from core.evaluation.coco import find_annotations
from core.imageio import is_image_file
from core.records import GOOD, Manifest
from storage import ProjectInfo, Store

DEMO_SIZE_ENV = "STUDIO_DEMO_SIZE"  # "tiny" (tests), "small" or "full" (default)

#: Demo data set sizes (core.demo.build.DemoConfig fields) selected by STUDIO_DEMO_SIZE.
DEMO_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(image_size=64, n_train_good=6, n_test_good=2, n_per_class=3,
                 defect_types=("scratch", "hole", "stain")),
    "small": dict(image_size=128, n_train_good=16, n_test_good=6, n_per_class=8),
    "full": {},
}
DEMO_PROJECT_NAME = "Demo: machined flanges"


@dataclass
class DataSummary:
    """What a data set folder holds and what it lacks, for the engineer before creating a project."""

    root: Path
    layout: str  # "mvtec" or "folder"
    n_images: int  # usable images, all roles
    n_normal: int  # defect-free references (train/good, normal/)
    n_unlabeled: int  # images to discover in
    sizes: dict[str, int]  # "W x H" -> image count
    gt_classes: dict[str, int]  # ground-truth class -> image count (MVTec layout only)
    n_gt_masks: int  # images with a ground-truth mask
    problems: list[str] = field(default_factory=list)  # unreadable files, bad maps, by name
    missing: list[str] = field(default_factory=list)  # what is absent and what that means
    maps_dir: Path | None = None
    n_maps: int = 0  # maps matched to images
    labeled_dir: Path | None = None
    labeled_classes: dict[str, int] = field(default_factory=dict)  # class -> crop count
    manifest: Manifest | None = None
    annotations: Path | None = None  # COCO region-level ground truth (core.evaluation.coco.find_annotations)
    n_paired: int = 0  # images with their own reference (<id>_test with normal/<id>_temp): template comparison

    @property
    def templates(self) -> bool:
        """Every image has its own reference: the detector's auto choice is the template comparison."""
        return bool(self.n_unlabeled) and self.n_paired == self.n_unlabeled

    @property
    def has_ground_truth(self) -> bool:
        """Image classes (MVTec layout) or region-level annotations: the runs get quality metrics."""
        return bool(self.gt_classes) or self.annotations is not None

    @property
    def detector_mode(self) -> str:
        """How anomaly maps will be made, as the detector's auto choice decides (core.detection)."""
        if self.n_maps:
            return "imported maps"
        if self.templates:
            return "built-in detector (template comparison: each image against its own reference)"
        if self.n_normal:
            return f"built-in detector (learns what normal looks like from the {self.n_normal} normal images)"
        return "built-in detector (zero-shot)"


def labeled_set_classes(folder: Path) -> dict[str, int]:
    """A labeled set is a folder per class of crops; returns class -> number of crops.

    Raises DatasetError naming the folder when it is missing or holds no class folder with images.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: labeled set folder does not exist")
    classes = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        crops = [p for p in class_dir.iterdir() if is_image_file(p)]
        if crops:
            classes[class_dir.name] = len(crops)
    if not classes:
        raise DatasetError(f"{folder}: no class folders with crop images (expected <class>/<crop>.png)")
    return classes


def summarize_dataset(root: Path | str, maps_dir: Path | str | None = None,
                      labeled_dir: Path | str | None = None) -> DataSummary:
    """Read a data set folder (and the optional maps and labeled set) into a DataSummary.

    Raises DatasetError for a folder that cannot be used at all; problems with single files,
    maps or the labeled set are listed in the summary instead.
    """
    manifest = load_dataset(Path(root))
    sizes = Counter(f"{r.size[1]} x {r.size[0]}" for r in manifest.images if r.size)
    gt = Counter(r.gt_class for r in manifest.unlabeled if r.gt_class is not None)
    summary = DataSummary(
        root=manifest.root,
        layout=manifest.layout,
        n_images=len(manifest.images),
        n_normal=len(manifest.normal),
        n_unlabeled=len(manifest.unlabeled),
        sizes=dict(sizes.most_common()),
        gt_classes=dict(sorted(gt.items())),
        n_gt_masks=sum(1 for r in manifest.unlabeled if r.gt_mask_path is not None),
        problems=[str(p) for p in manifest.problems],
        manifest=manifest,
    )
    if maps_dir:
        summary.maps_dir = Path(maps_dir).expanduser().resolve()
        from core.detection.importer import import_maps  # imported lazily: loads the map readers

        imported = import_maps(manifest.unlabeled, summary.maps_dir, strict=False)
        summary.n_maps = len(imported.maps)
        summary.problems += [str(p) for p in imported.problems]
    if labeled_dir:
        summary.labeled_dir = Path(labeled_dir).expanduser().resolve()
        try:
            summary.labeled_classes = labeled_set_classes(summary.labeled_dir)
        except DatasetError as error:
            summary.problems.append(str(error))
    summary.annotations = find_annotations(manifest.root)
    summary.n_paired = len(pair_by_name(manifest.unlabeled, manifest.normal)) if manifest.normal else 0
    summary.missing = _missing_notes(summary)
    return summary


def _missing_notes(summary: DataSummary) -> list[str]:
    notes = []
    if not summary.n_maps:
        if summary.templates:
            notes.append(f"No anomaly maps: the built-in detector compares each of the {summary.n_unlabeled} images "
                         "with its own reference (template comparison).")
        elif summary.n_normal:
            notes.append("No anomaly maps: the built-in detector learns from the "
                         f"{summary.n_normal} normal images.")
        else:
            notes.append("No anomaly maps and no normal images: the built-in detector runs in "
                         "zero-shot mode (each image is compared with the others).")
    elif summary.maps_dir and summary.n_maps < summary.n_unlabeled:
        notes.append(f"Maps were found for {summary.n_maps} of {summary.n_unlabeled} images; "
                     "the others are listed under problems.")
    if summary.annotations is not None and not summary.gt_classes:
        notes.append(f"Ground truth: {summary.annotations.name} annotates defect regions; quality metrics (NMI, "
                     "ARI, F1) are computed on regions.")
    elif not summary.gt_classes:
        notes.append("No ground-truth classes: discovery works, but no quality metrics (NMI, ARI, F1).")
    elif not summary.n_gt_masks:
        notes.append("No ground-truth masks: pixel-level detector scores cannot be computed.")
    if summary.gt_classes and set(summary.gt_classes) <= {GOOD}:
        notes.append("Only 'good' images in test/: there is nothing defective to discover.")
    if not summary.labeled_classes:
        notes.append("No labeled set: discovery starts unsupervised; name clusters later to "
                     "teach the next run.")
    if len(summary.sizes) > 1:
        notes.append(f"Images come in {len(summary.sizes)} different sizes; crops are resized for "
                     "training, so that is fine.")
    return notes


def create_project(store: Store, name: str, summary: DataSummary) -> ProjectInfo:
    """Create a project for a checked data set and record its images (one call per step)."""
    name = name.strip()
    if not name:
        raise ValueError("Give the project a name.")
    if summary.manifest is None:
        raise ValueError("Check the data set folder first.")
    settings: dict[str, Any] = {
        "layout": summary.layout,
        "maps_dir": str(summary.maps_dir) if summary.maps_dir and summary.n_maps else None,
        "labeled_dir": str(summary.labeled_dir) if summary.labeled_classes else None,
        "labeled_classes": summary.labeled_classes,
        "n_normal": summary.n_normal,
        "n_unlabeled": summary.n_unlabeled,
        "has_ground_truth": summary.has_ground_truth,
        "problems": summary.problems[:200],
    }
    project = store.create_project(name, str(summary.root), settings)
    store.record_images(project.id, summary.manifest.images)
    return project


# ------------------------------------------------------------------------------ demo project


def demo_size() -> str:
    """$STUDIO_DEMO_SIZE ("tiny", "small" or "full"; default full); ValueError for anything else."""
    size = (os.environ.get(DEMO_SIZE_ENV) or "full").strip().lower()
    if size not in DEMO_SIZES:
        raise ValueError(f"{DEMO_SIZE_ENV}={size!r}: expected one of {sorted(DEMO_SIZES)}")
    return size


def demo_settings() -> dict[str, Any]:
    """DemoConfig overrides for $STUDIO_DEMO_SIZE."""
    return DEMO_SIZES[demo_size()]


def create_demo_project(store: Store, name: str = DEMO_PROJECT_NAME) -> ProjectInfo:
    """Generate the synthetic demo data set into the workspace and make a project of it."""
    from core.demo.build import DemoConfig, generate_demo

    overrides = demo_settings()
    root = demo_root(store)
    if not (root / "README.txt").is_file():
        generate_demo(root, DemoConfig(**overrides), overwrite=True)
    summary = summarize_dataset(root)
    return create_project(store, name, summary)


def demo_root(store: Store) -> Path:
    """Where the demo data set of the current $STUDIO_DEMO_SIZE lives in the workspace."""
    return Path(store.workspace) / "demo" / demo_size()


def existing_demo_projects(store: Store) -> list[ProjectInfo]:
    """Projects made from the workspace's demo data set (so the app can offer to open one)."""
    root = demo_root(store).resolve()
    return [p for p in store.list_projects() if Path(p.data_root).resolve() == root]


def check_maps_folder(folder: str | Path) -> str | None:
    """Why a maps folder cannot be imported (missing, not a folder, no map file), or None.

    Checked before a detection job starts so the engineer hears it at once, not from a failed run.
    """
    from core.detection.importer import map_files

    text = str(folder).strip()
    if not text:
        return "Enter the maps folder first."
    path = Path(text).expanduser()
    if not path.exists():
        return f"{path}: the maps folder does not exist."
    if not path.is_dir():
        return f"{path}: this is a file, not a folder of maps."
    if not map_files(path):
        return f"{path}: no map files in it (expected .npy, .tif or .png named like the images)."
    return None
