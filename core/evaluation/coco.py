"""Region-level ground truth from COCO annotations: boxes or polygons with category names.

A discovered region takes the class of the annotation it overlaps most; a region overlapping
none is a false detection (NORMAL_CLASS). Overlap is counted in region mask pixels inside the
annotation's shape; a region without mask pixels (the whole-image placeholder) uses its box.
The same file can be turned into a labeled set of named crops for the next run.

Bad input does not stop the rest: images the file names that are not in the data set, boxes
(partly) outside their image, unknown category ids and malformed entries are collected into
`CocoTruth.problems` (summarized by `problem_summary` in one message); only a file that cannot
be read at all, or holds no usable annotation, raises CocoError.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from core.errors import UserError
from core.records import NORMAL_CLASS, Region

__all__ = [
    "ANNOTATIONS_FILE",
    "Annotation",
    "CocoError",
    "CocoTruth",
    "RegionMatch",
    "find_annotations",
    "labeled_crops_from_coco",
    "load_coco",
    "match_regions",
    "region_coverage",
]

#: File name looked for at the data-set root when no --ground-truth file is given.
ANNOTATIONS_FILE = "annotations.json"


class CocoError(UserError):
    """A COCO file that cannot be used at all; the message names the file and the problem."""


@dataclass(frozen=True)
class Annotation:
    """One annotated defect of one image, in image pixels."""

    id: int
    image: str  # relpath of the image in the data set (the manifest key)
    category: str  # category name
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), clipped to the image
    polygons: tuple[np.ndarray, ...] = ()  # each [P, 2] float32 x, y; empty = the box is the shape

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The annotation's shape as a bool mask of the image's (height, width)."""
        out = np.zeros(shape, np.uint8)
        if self.polygons:
            cv2.fillPoly(out, [np.round(p).astype(np.int32) for p in self.polygons], 1)
        else:
            x0, y0, x1, y1 = self.box
            out[y0:y1, x0:x1] = 1
        return out.astype(bool)


@dataclass
class CocoTruth:
    """Annotations by image key, the category names in file order, and what was left out."""

    source: Path
    categories: list[str]
    by_image: dict[str, list[Annotation]]
    problems: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # keys of every image the file lists, annotated or not

    @property
    def annotations(self) -> list[Annotation]:
        return [a for rows in self.by_image.values() for a in rows]

    def problem_summary(self) -> str:
        """One message naming the file and every kind of problem found (empty when none)."""
        if not self.problems:
            return ""
        return f"{self.source}: " + "; ".join(self.problems)


@dataclass(frozen=True)
class RegionMatch:
    """The ground truth of one region: the annotation it overlaps most, or normal."""

    region: str  # region key
    gt: str  # category name, or NORMAL_CLASS for a false detection
    annotation: int | None  # id of the matched annotation
    overlap: int  # overlapping pixels with it


def find_annotations(root: Path | str, explicit: Path | str | None = None) -> Path | None:
    """The COCO file to use: the explicit one (must exist), else root/annotations.json if present."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise CocoError(f"{path}: ground-truth file does not exist")
        return path
    candidate = Path(root) / ANNOTATIONS_FILE
    return candidate if candidate.is_file() else None


def _shown(items: Sequence[Any], limit: int = 3) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _image_index(image_sizes: Mapping[str, tuple[int, int]]) -> dict[str, str]:
    """Lookup from relpath, file name and stem to the manifest key (ambiguous names dropped)."""
    index: dict[str, str] = {}
    ambiguous: set[str] = set()
    for key in image_sizes:
        path = PurePosixPath(key)
        for alias in (path.name, path.stem):
            if alias in index and index[alias] != key:
                ambiguous.add(alias)
            index.setdefault(alias, key)
    for alias in ambiguous:
        index.pop(alias, None)
    index.update({key: key for key in image_sizes})
    return index


def _polygons(segmentation: Any) -> tuple[np.ndarray, ...]:
    if not isinstance(segmentation, list):
        return ()  # RLE or absent: the box is the shape
    polygons = []
    for flat in segmentation:
        if isinstance(flat, list) and len(flat) >= 6 and len(flat) % 2 == 0:
            polygons.append(np.asarray(flat, dtype=np.float32).reshape(-1, 2))
    return tuple(polygons)


def _read_coco_json(path: Path) -> dict[str, Any]:
    """The file's JSON object; CocoError naming the file when it is unreadable or not COCO."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CocoError(f"{path}: cannot read the ground-truth file ({error})") from error
    if not text.strip():
        raise CocoError(f"{path}: the ground-truth file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CocoError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise CocoError(f"{path}: not a COCO file (needs 'images', 'annotations' and 'categories' lists)")
    return data


def _matched_images(data: dict[str, Any], image_sizes: Mapping[str, tuple[int, int]]) -> tuple[dict[Any, str], list[str]]:
    """COCO image id -> manifest key, and the names of the listed images not in the data set."""
    index = _image_index(image_sizes)
    images: dict[Any, str] = {}
    missing: list[str] = []
    for entry in data.get("images") or []:
        if not isinstance(entry, dict) or "id" not in entry:
            continue
        name = str(entry.get("file_name", ""))
        posix = PurePosixPath(name.replace("\\", "/"))
        key = index.get(posix.as_posix()) or index.get(posix.name) or index.get(posix.stem)
        if key is None:
            missing.append(name or f"id {entry['id']}")
        else:
            images[entry["id"]] = key
    return images, missing


def _xywh(entry: dict[str, Any], polygons: tuple[np.ndarray, ...]) -> tuple[float, float, float, float]:
    """An annotation's box as x, y, w, h: its bbox, else its polygons' bounds; ValueError without."""
    bbox = entry.get("bbox")
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
        x, y, w, h = (float(v) for v in bbox)
        return x, y, w, h
    if polygons:
        points = np.concatenate(polygons)
        x, y = points.min(axis=0)
        w, h = points.max(axis=0) - (x, y)
        return float(x), float(y), float(w), float(h)
    raise ValueError("no bbox")


@dataclass
class _LeftOut:
    """The annotations load_coco left out (or clipped), by reason, for its problem messages."""

    missing_images: list[str] = field(default_factory=list)
    unknown_category: list[Any] = field(default_factory=list)
    unknown_image: list[Any] = field(default_factory=list)
    outside: list[Any] = field(default_factory=list)
    malformed: list[Any] = field(default_factory=list)

    def messages(self) -> list[str]:
        out = []
        if self.missing_images:
            out.append(f"{len(self.missing_images)} image(s) named in the file are not in the data set "
                       f"({_shown(self.missing_images)}); their annotations were left out")
        if self.unknown_category:
            out.append(f"{len(self.unknown_category)} annotation(s) with unknown category ids "
                       f"({_shown(sorted(set(map(str, self.unknown_category))))}) were left out")
        if self.unknown_image:
            out.append(f"{len(self.unknown_image)} annotation(s) of images not in the data set were left out")
        if self.outside:
            out.append(f"{len(self.outside)} annotation box(es) reach outside their image (ids {_shown(self.outside)}); "
                       "clipped to the image, dropped when nothing was left")
        if self.malformed:
            out.append(f"{len(self.malformed)} malformed annotation(s) without a usable bbox "
                       f"(ids {_shown(self.malformed)}) were left out")
        return out


def load_coco(path: Path | str, image_sizes: Mapping[str, tuple[int, int]]) -> CocoTruth:
    """Read a COCO file against the data set's images (relpath -> (height, width)).

    Images are matched by relative path, then by file name, then by stem. A box given only as a
    polygon gets the polygon's bounding box. Raises CocoError when the file is unreadable, not
    COCO, or leaves no usable annotation; every other problem is listed in `problems`.
    """
    path = Path(path)
    data = _read_coco_json(path)
    categories = {}
    for entry in data.get("categories") or []:
        if isinstance(entry, dict) and "id" in entry:
            categories[entry["id"]] = str(entry.get("name", entry["id"]))
    images, missing = _matched_images(data, image_sizes)
    left_out = _LeftOut(missing_images=missing)
    by_image: dict[str, list[Annotation]] = {}
    for number, entry in enumerate(data["annotations"]):
        if not isinstance(entry, dict):
            left_out.malformed.append(f"#{number}")
            continue
        ident = entry.get("id", number)
        if entry.get("category_id") not in categories:
            left_out.unknown_category.append(entry.get("category_id"))
            continue
        if entry.get("image_id") not in images:
            left_out.unknown_image.append(ident)
            continue
        key = images[entry["image_id"]]
        height, width = image_sizes[key]
        polygons = _polygons(entry.get("segmentation"))
        try:
            x, y, w, h = _xywh(entry, polygons)
        except (TypeError, ValueError):
            left_out.malformed.append(ident)
            continue
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        x1, y1 = int(np.ceil(x + w)), int(np.ceil(y + h))
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            left_out.outside.append(ident)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x1 <= x0 or y1 <= y0:
            continue  # entirely outside (counted above): nothing left to match
        by_image.setdefault(key, []).append(
            Annotation(int(ident), key, categories[entry["category_id"]], (x0, y0, x1, y1), polygons))
    problems = left_out.messages()
    if not by_image:
        detail = "; ".join(problems) if problems else "it lists no annotations"
        raise CocoError(f"{path}: no usable annotation ({detail})")
    used = sorted({a.category for rows in by_image.values() for a in rows})
    names = [n for n in dict.fromkeys(categories.values()) if n in used]
    return CocoTruth(source=path, categories=names, by_image=by_image, problems=problems,
                     images=sorted(set(images.values())))


def _region_mask(region: Region, shape: tuple[int, int]) -> np.ndarray:
    """The region's mask pixels placed in the image; the whole box when it has none."""
    out = np.zeros(shape, bool)
    x0, y0, x1, y1 = region.box
    mask = np.asarray(region.mask_crop) > 0
    if mask.any() and mask.shape == (y1 - y0, x1 - x0):
        out[y0:y1, x0:x1] = mask
    else:
        out[y0:y1, x0:x1] = True
    return out


def match_regions(regions: Iterable[Region], truth: CocoTruth,
                  image_sizes: Mapping[str, tuple[int, int]]) -> list[RegionMatch]:
    """Each region's class: the annotation with the most overlapping pixels; none = NORMAL_CLASS."""
    masks: dict[int, np.ndarray] = {}
    out = []
    for region in regions:
        best: tuple[int, Annotation | None] = (0, None)
        shape = image_sizes.get(region.image)
        for annotation in truth.by_image.get(region.image, []):
            if shape is None:
                break
            ax0, ay0, ax1, ay1 = annotation.box
            rx0, ry0, rx1, ry1 = region.box
            if ax1 <= rx0 or rx1 <= ax0 or ay1 <= ry0 or ry1 <= ay0:
                continue
            if id(annotation) not in masks:
                masks[id(annotation)] = annotation.mask(shape)
            overlap = int(np.count_nonzero(masks[id(annotation)] & _region_mask(region, shape)))
            if overlap > best[0]:
                best = (overlap, annotation)
        overlap, annotation = best
        out.append(RegionMatch(region.key, annotation.category if annotation else NORMAL_CLASS,
                               annotation.id if annotation else None, overlap))
    return out


def region_coverage(matches: Sequence[RegionMatch], truth: CocoTruth,
                    images: Iterable[str] | None = None) -> dict[str, Any]:
    """Recall (share of annotations some region matched) and precision (share of regions matched)."""
    keys = set(truth.by_image) if images is None else set(images)
    annotations = [a for key in keys for a in truth.by_image.get(key, [])]
    found = {m.annotation for m in matches if m.annotation is not None}
    covered = sum(1 for a in annotations if a.id in found)
    by_class: dict[str, dict[str, int]] = {}
    for a in annotations:
        row = by_class.setdefault(a.category, {"annotations": 0, "covered": 0})
        row["annotations"] += 1
        row["covered"] += int(a.id in found)
    matched = sum(1 for m in matches if m.annotation is not None)
    return {
        "annotations": len(annotations),
        "covered": covered,
        "recall": covered / len(annotations) if annotations else None,
        "regions": len(matches),
        "regions_on_a_defect": matched,
        "precision": matched / len(matches) if matches else None,
        "by_class": by_class,
    }


def labeled_crops_from_coco(truth: CocoTruth, images: Mapping[str, np.ndarray], *,
                            padding: float = 0.5, min_side: int = 16) -> Any:
    """The annotations as a labeled set (named base classes): a square crop per annotation.

    The crop is centred on the annotation's box, its side the box's longer side times
    (1 + padding), at least min_side; the mask is the annotation's shape (polygon or box).
    Images missing from `images` are skipped.
    """
    from core.dataset import LabeledCrops
    from core.regions.crops import square_box

    crops, masks, labels = [], [], []
    names = list(truth.categories)
    for key, rows in truth.by_image.items():
        image = images.get(key)
        if image is None:
            continue
        shape = image.shape[:2]
        for annotation in rows:
            x0, y0, x1, y1 = annotation.box
            side = max(min_side, int(round(max(x1 - x0, y1 - y0) * (1 + padding))))
            bx0, by0, bx1, by1 = square_box((x0 + x1) / 2, (y0 + y1) / 2, (side + 1) // 2, *shape)
            crops.append(image[by0:by1, bx0:bx1].copy())
            masks.append(annotation.mask(shape)[by0:by1, bx0:bx1].astype(np.uint8) * 255)
            labels.append(names.index(annotation.category))
    if not crops:
        raise CocoError(f"{truth.source}: none of its annotated images could be read for a labeled set")
    return LabeledCrops(crops, masks, np.asarray(labels, dtype=np.int64), names)


def labeled_crops_from_file(path: Path | str) -> tuple[Any, str]:
    """A COCO file as a labeled set, and one message naming what was left out ("" when nothing).

    Its images are found relative to the file's folder. Raises CocoError naming the file when no
    annotated image can be read; an image that cannot be read is left out and named, with why,
    like the file's other problems (missing images, unknown categories, boxes outside).
    """
    from core.imageio import ImageReadError, image_size, read_image

    path = Path(path)
    try:
        listed = json.loads(path.read_text(encoding="utf-8")).get("images") or []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise CocoError(f"{path}: cannot read the labeled set's annotations ({error})") from error
    sizes: dict[str, tuple[int, int]] = {}
    unreadable: list[str] = []
    for entry in listed:
        name = str(entry.get("file_name", "")) if isinstance(entry, dict) else ""
        candidate = path.parent / name
        if name and candidate.is_file():
            try:
                sizes[PurePosixPath(name.replace("\\", "/")).as_posix()] = image_size(candidate)
            except ImageReadError as error:
                unreadable.append(str(error))
    truth = load_coco(path, sizes)
    if unreadable:
        truth.problems.append(f"{len(unreadable)} image(s) could not be read and were left out "
                              f"({_shown(unreadable)})")
    images = {key: read_image(path.parent / key) for key in truth.by_image}
    return labeled_crops_from_coco(truth, images), truth.problem_summary()
