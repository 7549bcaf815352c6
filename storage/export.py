"""Exports of a run: regions CSV, images CSV, a folder-per-class ZIP of crops, COCO JSON.

Text cells that a spreadsheet would run as a formula (=, +, -, @, tab, CR first) are prefixed
with an apostrophe; class names are otherwise written exactly as the engineer typed them.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd

from storage.api import Store
from storage.records import (
    NO_ANOMALY_CLASS,
    NORMAL_CLASS,
    STATE_MARKED_NORMAL,
    STATE_NO_ANOMALY,
    STATE_NORMAL,
    AssignedRegion,
    ClusterInfo,
    display_name,
)

#: First characters that make a spreadsheet cell a formula (OWASP CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
REGION_COLUMNS = ["region_id", "image", "x0", "y0", "x1", "y1", "cluster_id", "class_name", "confidence",
                  "anomaly_score", "area", "is_normal", "state", "run_id"]  # fmt: skip
IMAGE_COLUMNS = ["image", "class_name", "cluster_id", "confidence", "region_count", "state", "run_id"]


def neutralize_cell(value: Any) -> Any:
    """Prefix a text cell with ' when a spreadsheet would evaluate it; other values unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def neutralize_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of the frame with every text cell neutralized for spreadsheets (see neutralize_cell)."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_object_dtype(out[column]) or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(neutralize_cell)
    return out


def region_class(item: AssignedRegion, clusters: dict[int, ClusterInfo]) -> str:
    """The class of a region in exports: NORMAL_CLASS when it or its cluster is normal,
    NO_ANOMALY_CLASS for the whole-image placeholder of an image where MEBin found nothing."""
    cluster = clusters[item.cluster_id]
    if item.state == STATE_NO_ANOMALY:  # the engineer's own mark would have made it "marked normal"
        return NO_ANOMALY_CLASS
    if item.is_normal or cluster.is_normal:
        return NORMAL_CLASS
    return display_name(cluster.name, cluster.slot)


def regions_frame(store: Store, run_id: int) -> pd.DataFrame:
    """One row per region of a run with its box, cluster, class, confidence and anomaly score."""
    clusters = {c.id: c for c in store.list_clusters(run_id, include_merged=True)}
    rows = [
        {
            "region_id": a.region.id,
            "image": a.region.image,
            "x0": a.region.box[0],
            "y0": a.region.box[1],
            "x1": a.region.box[2],
            "y1": a.region.box[3],
            "cluster_id": a.cluster_id,
            "class_name": region_class(a, clusters),
            "confidence": a.confidence,
            "anomaly_score": a.region.score,
            "area": a.region.area,
            "is_normal": a.state in (STATE_NORMAL, STATE_MARKED_NORMAL),  # predicted or marked normal
            "state": a.state,
            "run_id": run_id,
        }
        for a in store.run_assignments(run_id)
    ]
    return pd.DataFrame(rows, columns=REGION_COLUMNS)


def images_frame(store: Store, run_id: int, tau: float | None = None) -> pd.DataFrame:
    """One row per image of a run with its fused class (at the run's tau unless given), confidence, regions."""
    rows = [
        {
            "image": c.image,
            "class_name": c.class_name,
            "cluster_id": c.cluster_id,
            "confidence": c.confidence,
            "region_count": c.region_count,
            "state": c.state,
            "run_id": run_id,
        }
        for c in store.image_classes(run_id, tau=tau)
    ]
    frame = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    frame["cluster_id"] = frame["cluster_id"].astype("Int64")
    return frame


def export_regions_csv(store: Store, run_id: int, path: Path | str) -> Path:
    """Write the regions CSV (UTF-8, formula cells neutralized)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    neutralize_frame(regions_frame(store, run_id)).to_csv(path, index=False, encoding="utf-8")
    return path


def export_images_csv(store: Store, run_id: int, path: Path | str, tau: float | None = None) -> Path:
    """Write the images CSV (UTF-8, formula cells neutralized)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    neutralize_frame(images_frame(store, run_id, tau)).to_csv(path, index=False, encoding="utf-8")
    return path


_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


def folder_name(class_name: str) -> str:
    """A file-system-safe folder name for a class (the exact name goes into classes.csv)."""
    name = _UNSAFE.sub("_", class_name).strip().strip(".") or "_"
    if name.startswith(FORMULA_PREFIXES):  # keeps the paths in crops.csv free of formula cells
        name = "_" + name
    return name[:120]


def _kept(regions: pd.DataFrame, include_normal: bool, include_no_anomaly: bool) -> pd.DataFrame:
    """The regions an export keeps: normal ones and no-anomaly placeholders only when asked."""
    keep = pd.Series(True, index=regions.index)
    if not include_normal:
        keep &= ~regions["is_normal"].astype(bool)
    if not include_no_anomaly:
        keep &= regions["state"] != STATE_NO_ANOMALY
    return regions[keep]


def export_crops_zip(
    store: Store, run_id: int, path: Path | str, *, include_normal: bool = False, include_no_anomaly: bool = False
) -> Path:
    """Write a ZIP with one folder per class of crop PNGs (a labeled set for a classifier).

    Whole-image placeholders (no anomaly found) go into their own folder when included.
    classes.csv inside maps each folder to the exact class name; crops.csv maps each file to
    its region, image and box.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    regions = _kept(regions_frame(store, run_id), include_normal, include_no_anomaly)
    crop_paths = {a.region.id: a.region.crop_path for a in store.run_assignments(run_id)}
    folders: dict[str, str] = {}
    used: set[str] = set()
    for class_name in sorted(regions["class_name"].unique()):
        base = candidate = folder_name(class_name)
        counter = 2
        while candidate.lower() in used:
            candidate = f"{base} ({counter})"
            counter += 1
        used.add(candidate.lower())
        folders[class_name] = candidate
    manifest = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for row in regions.itertuples(index=False):
            source = crop_paths.get(row.region_id)
            if not source or not Path(source).is_file():
                raise FileNotFoundError(f"crop of region {row.region_id} is missing: {source}")
            member = f"{folders[row.class_name]}/{row.region_id}.png"
            archive.write(source, member)
            manifest.append({"file": member, "class_name": row.class_name, "region_id": row.region_id,
                             "image": row.image, "x0": row.x0, "y0": row.y0, "x1": row.x1, "y1": row.y1})  # fmt: skip
        classes = pd.DataFrame([{"folder": f, "class_name": c} for c, f in folders.items()], columns=["folder", "class_name"])
        archive.writestr("classes.csv", neutralize_frame(classes).to_csv(index=False))
        crops = pd.DataFrame(manifest, columns=["file", "class_name", "region_id", "image", "x0", "y0", "x1", "y1"])
        archive.writestr("crops.csv", neutralize_frame(crops).to_csv(index=False))
    return path


def coco_dict(
    store: Store, run_id: int, *, include_normal: bool = False, include_no_anomaly: bool = False
) -> dict[str, Any]:
    """COCO-style detection dict: images, annotations (bbox x, y, w, h) and categories by class name.

    Every image entry carries its state (defect, normal, marked normal, no anomaly found);
    placeholders become annotations of category NO_ANOMALY_CLASS only when included.
    """
    run = store.get_run(run_id)
    regions = _kept(regions_frame(store, run_id), include_normal, include_no_anomaly)
    image_states = {c.image: c.state for c in store.image_classes(run_id)}
    images = store.list_images(run.project_id)
    clusters = sorted(store.list_clusters(run_id), key=lambda c: c.slot)
    category_names: list[str] = []
    for c in clusters:
        name = NORMAL_CLASS if c.is_normal else c.display_name
        if name not in category_names and name in set(regions["class_name"]):
            category_names.append(name)
    for name in regions["class_name"]:
        if name not in category_names:
            category_names.append(name)
    category_ids = {name: i + 1 for i, name in enumerate(category_names)}
    used_images = set(regions["image"])
    image_ids = {im.relpath: im.id for im in images}
    return {
        "info": {"description": f"Defect Discovery Studio run {run_id}", "run_id": run_id},
        "images": [
            {"id": im.id, "file_name": im.relpath, "width": im.width, "height": im.height,
             "state": image_states.get(im.relpath)}
            for im in images
            if im.relpath in used_images or im.role == "unlabeled"
        ],
        "annotations": [
            {
                "id": int(row.region_id),
                "image_id": image_ids[row.image],
                "region_id": int(row.region_id),
                "category_id": category_ids[row.class_name],
                "bbox": [int(row.x0), int(row.y0), int(row.x1 - row.x0), int(row.y1 - row.y0)],
                "area": int(row.area),
                "iscrowd": 0,
                "score": float(row.anomaly_score),
                "confidence": float(row.confidence),
                "cluster_id": int(row.cluster_id),
                "state": row.state,
            }
            for row in regions.itertuples(index=False)
        ],
        "categories": [{"id": i, "name": name, "supercategory": "defect"} for name, i in category_ids.items()],
    }


def export_coco_json(
    store: Store, run_id: int, path: Path | str, *, include_normal: bool = False, include_no_anomaly: bool = False
) -> Path:
    """Write the COCO-style JSON (UTF-8, names as given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = coco_dict(store, run_id, include_normal=include_normal, include_no_anomaly=include_no_anomaly)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
