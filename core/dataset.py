"""Data sets on disk -> one manifest of image records, whatever the folder layout.

Layouts: MVTec AD (train/good/, test/<class>/, ground_truth/<class>/<stem>_mask.png) and a plain
folder of images with an optional normal/ subfolder of defect-free references. Folder names under
test/ are ground truth for metrics only; labels are carried as data on each record.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from core.errors import UserError
from core.imageio import ImageReadError, image_size, is_image_file, read_gray, read_image
from core.records import GOOD, ROLE_NORMAL, ROLE_UNLABELED, ImageRecord, LoadProblem, Manifest

NORMAL_FOLDER = "normal"


class DatasetError(UserError, ValueError):
    """A data set that cannot be used at all (missing, empty); the message names the folder."""


def detect_layout(root: Path) -> str:
    """'mvtec' when root has test/ with class subfolders, else 'folder'."""
    test = root / "test"
    if test.is_dir() and any(p.is_dir() for p in test.iterdir()):
        return "mvtec"
    return "folder"


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def _relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _mvtec_mask(root: Path, gt_class: str, image: Path) -> Path | None:
    folder = root / "ground_truth" / gt_class
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _mvtec_records(root: Path) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    train_good = root / "train" / GOOD
    if train_good.is_dir():
        records += [ImageRecord(p, _relpath(p, root), ROLE_NORMAL, GOOD) for p in _images_under(train_good)]
    for class_dir in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        gt_class = class_dir.name
        for path in _images_under(class_dir):
            mask = None if gt_class == GOOD else _mvtec_mask(root, gt_class, path)
            records.append(ImageRecord(path, _relpath(path, root), ROLE_UNLABELED, gt_class, mask))
    return records


def _folder_records(root: Path) -> list[ImageRecord]:
    normal_dir = root / NORMAL_FOLDER
    records = []
    for path in _images_under(root):
        is_normal = normal_dir in path.parents
        records.append(ImageRecord(path, _relpath(path, root), ROLE_NORMAL if is_normal else ROLE_UNLABELED))
    return records


def _probe(record: ImageRecord) -> ImageRecord | LoadProblem:
    try:
        return replace(record, size=image_size(record.path))
    except ImageReadError as error:
        return LoadProblem(record.path, error.reason)


def load_dataset(root: Path | str, *, check_images: bool = True, workers: int = 4) -> Manifest:
    """Read a data set folder into a Manifest.

    Every image is decoded once when check_images is set, so corrupt or unreadable files are
    reported by name in manifest.problems (and left out) while the rest still loads.
    Raises DatasetError for a missing folder or one without any usable image.
    """
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise DatasetError(f"{root}: data set folder does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: is not a folder")
    layout = detect_layout(root)
    records = _mvtec_records(root) if layout == "mvtec" else _folder_records(root)
    problems: list[LoadProblem] = []
    if check_images and records:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            probed = list(pool.map(_probe, records))
        records = [r for r in probed if isinstance(r, ImageRecord)]
        problems = [p for p in probed if isinstance(p, LoadProblem)]
    if not records:
        detail = f" ({len(problems)} unreadable: {problems[0]})" if problems else ""
        expected = "test/<class>/ images" if layout == "mvtec" else "image files (PNG, JPEG, BMP, TIFF)"
        raise DatasetError(f"{root}: no usable images found; expected {expected}{detail}")
    if not any(r.role == ROLE_UNLABELED for r in records):
        raise DatasetError(f"{root}: only normal reference images found; add the images to inspect")
    return Manifest(root=root, layout=layout, images=records, problems=problems)


# ------------------------------------------------------------------------------ labeled sets


@dataclass
class LabeledCrops:
    """An imported labeled set: crops with masks and class names (they become base classes)."""

    crops: list[np.ndarray]  # H x W x 3 uint8
    masks: list[np.ndarray]  # H x W uint8 0/255
    labels: np.ndarray  # int64 index into base_classes
    base_classes: list[str]


def load_labeled_crops(folder: Path | str) -> LabeledCrops:
    """Read an imported labeled set: folder/<class name>/<crop>.png, optional <crop>_mask.png.

    A crop without a mask file gets an all-foreground mask. Raises DatasetError naming the
    folder or file that cannot be used.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: labeled set folder does not exist")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{folder}: labeled set needs one subfolder of crops per class")
    crops, masks, labels, names = [], [], [], []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if is_image_file(p) and not p.stem.endswith("_mask"))
        if not files:
            continue
        names.append(class_dir.name)
        for path in files:
            try:
                crop = read_image(path)
                mask_path = path.with_name(f"{path.stem}_mask.png")
                mask = read_gray(mask_path) if mask_path.is_file() else np.full(crop.shape[:2], 255, np.uint8)
            except ImageReadError as error:
                raise DatasetError(str(error)) from error
            if mask.shape != crop.shape[:2]:
                mask = cv2.resize(mask, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_NEAREST)
            crops.append(crop)
            masks.append(np.where(mask > 127, 255, 0).astype(np.uint8))
            labels.append(len(names) - 1)
    if not crops:
        raise DatasetError(f"{folder}: no crop images found in its class subfolders")
    return LabeledCrops(crops, masks, np.asarray(labels, dtype=np.int64), names)
