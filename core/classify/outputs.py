"""What a classification writes: images.csv, regions.csv, classification.json, the crops by class, and
unknown/ (the images with unknown regions, ready for the next discovery round)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from core.classify.bundle import Bundle
from core.classify.classify import UNKNOWN, Classification

__all__ = ["IMAGES_CSV", "REGIONS_CSV", "SUMMARY_JSON", "write_classification"]

IMAGES_CSV, REGIONS_CSV, SUMMARY_JSON = "images.csv", "regions.csv", "classification.json"


def _stem(key: str) -> str:
    return key.replace("/", "__").replace("#", "_")


def _crops(result: Classification, out: Path) -> None:
    """Every region's crop and mask under crops/<class or unknown>/ (the page's gallery)."""
    from core.classify.bundle import _folder_name
    from core.imageio import write_image

    for row in result.regions:
        folder = out / "crops" / _folder_name(UNKNOWN if row.unknown else row.name)
        write_image(folder / f"{_stem(row.region.key)}.png", row.region.image_crop)
        write_image(folder / f"{_stem(row.region.key)}_mask.png", row.region.mask_crop)


def _unknown_set(result: Classification, images: Path, out: Path, bundle: Bundle) -> int:
    """unknown/: the images holding an unknown region (links, else copies) and the run's references in
    unknown/normal/: `discover --dataset OUT/unknown --labels BUNDLE/labeled` is the next round."""
    import shutil

    keys = sorted({row.region.image for row in result.regions if row.unknown})
    folder = out / "unknown"
    for key in keys:
        target = folder / key
        target.parent.mkdir(parents=True, exist_ok=True)
        source = (images / key).resolve()
        try:
            target.symlink_to(source)
        except OSError:
            shutil.copy2(source, target)
    if keys and (images / "normal").is_dir():  # the images' own references (template partners)
        (folder / "normal").symlink_to((images / "normal").resolve(), target_is_directory=True)
    elif keys:
        for reference in bundle.references:
            (folder / "normal").mkdir(parents=True, exist_ok=True)
            shutil.copy2(reference, folder / "normal" / reference.name)
    return len(keys)


def write_classification(result: Classification, bundle: Bundle, images: Path, out: Path) -> dict:
    """Write the outputs into `out` (created); image paths as `images` was given. Returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / IMAGES_CSV, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "class", "confidence", "unknown", "n_regions"])
        for row in result.images:
            writer.writerow([str(images / row.image), row.name, f"{row.confidence:.6f}", int(row.unknown),
                             row.n_regions])
    with open(out / REGIONS_CSV, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "region", "x0", "y0", "x1", "y1", "area", "class", "confidence", "unknown",
                         "novelty", "nearest_class"])
        for row in result.regions:
            region = row.region
            writer.writerow([str(images / region.image), region.key, *region.box, region.area,
                             UNKNOWN if row.unknown else row.name, f"{row.confidence:.6f}", int(row.unknown),
                             f"{row.novelty:.6f}", row.name])
    _crops(result, out)
    counts: dict[str, int] = {}
    for row in result.images:
        counts[row.name] = counts.get(row.name, 0) + 1
    summary = {
        "bundle": str(bundle.folder), "run": bundle.info.get("run"), "images_folder": str(images),
        "classes": bundle.classes, "open_set": result.threshold,
        "threshold": bundle.info["classifier"]["threshold"], "detector": result.detector,
        "images": len(result.images), "regions": len(result.regions),
        "unknown_regions": sum(r.unknown for r in result.regions), "images_per_class": counts,
        "unknown_images_folder": "unknown" if _unknown_set(result, images, out, bundle) else None,
        "labeled_set": str(bundle.labeled) if bundle.labeled.is_dir() else None,
        "timings_s": result.timings,
    }
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
