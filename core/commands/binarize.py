"""`python -m core binarize`: MEBin alone on a folder of anomaly maps (optionally cutting crops)."""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.imageio import ImageReadError, read_image, write_image
from core.detection.maps import MAP_EXTENSIONS, normalize_global, read_map_file

HELP = "run MEBin on a folder of anomaly maps; write masks, crops and regions.csv"

REGION_COLUMNS = ["image", "region", "x0", "y0", "x1", "y1", "area", "score", "threshold", "num_anomalies"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--maps", type=Path, required=True, help="folder of anomaly maps (.npy, .png, .tif)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--images", type=Path, help="data-set folder of the images the maps belong to: cut crops "
                        "(masks redrawn against its normal references)")
    parser.add_argument("--sample-rate", type=int, default=4, help="threshold step r of the sweep [4]")
    parser.add_argument("--min-interval", type=int, default=4, help="shortest stable interval [4]")
    parser.add_argument("--no-erode", action="store_true", help="skip the 6x6 erosion")
    parser.add_argument("--keep-all", action="store_true", help="keep every box, not the largest est+1")


def _map_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"{folder}: maps folder does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MAP_EXTENSIONS)
    if not files:
        raise UserError(f"{folder}: no anomaly maps found (expected {', '.join(MAP_EXTENSIONS)} files)")
    return files


def _load_maps_alone(folder: Path) -> dict[str, np.ndarray]:
    maps: dict[str, np.ndarray] = {}
    problems = []
    for path in _map_files(folder):
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in maps:
            problems.append(f"{path}: another map has the same name {key!r} with a different extension")
            continue
        try:
            array = read_map_file(path)
        except ImageReadError as error:
            problems.append(str(error))
            continue
        if not np.isfinite(array).all():
            problems.append(f"{path}: map holds NaN or infinite values")
            continue
        maps[key] = array
    if problems:
        raise UserError("some maps cannot be used:\n  " + "\n  ".join(problems))
    return maps


def _load_with_images(maps_dir: Path, images_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Path], list[Path]]:
    """The maps, the image file of each and the data set's normal references (the masks are redrawn against them)."""
    from core.dataset import DatasetError, load_dataset
    from core.detection import MapImportError, import_maps

    try:
        manifest = load_dataset(images_dir)
    except DatasetError as error:
        raise UserError(str(error)) from error
    if manifest.problems:
        raise UserError("some images cannot be read:\n  " + "\n  ".join(map(str, manifest.problems)))
    _map_files(maps_dir)
    try:
        imported = import_maps(manifest.unlabeled, maps_dir, strict=True)  # the normal references need none
    except MapImportError as error:
        raise UserError(str(error)) from error
    paths = {r.relpath: r.path for r in manifest.unlabeled if r.relpath in imported.maps}
    return imported.maps, paths, [r.path for r in manifest.normal]


def run(args: argparse.Namespace) -> int:
    from core.regions.mebin import binarize
    from core.config import RegionConfig
    from core.pipeline import cut_regions
    from core.regions.refine import references_for
    from core.results import MapSet

    started = time.perf_counter()
    normal: list[Path] = []
    if args.images is not None:
        raw, image_paths, normal = _load_with_images(args.maps, args.images)
    else:
        raw, image_paths = _load_maps_alone(args.maps), {}
    keys = sorted(raw)
    normalized = normalize_global([raw[k] for k in keys])
    print(f"maps: {len(keys)} read and normalized globally in {time.perf_counter() - started:.2f} s")

    started = time.perf_counter()
    results = binarize(
        normalized, sample_rate=args.sample_rate, min_interval_len=args.min_interval, erode=not args.no_erode
    )
    found = sum(1 for r in results if r.num_anomalies > 0)
    print(
        f"mebin: {len(results)} maps binarized in {time.perf_counter() - started:.2f} s; "
        f"{found} with anomalies, {sum(r.num_anomalies for r in results)} anomalies estimated"
    )

    started = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    config = RegionConfig(keep="all" if args.keep_all else "reference")
    images: dict[str, np.ndarray] = {}
    for key in keys:
        # Without images the map itself is the canvas: boxes are in map pixels.
        images[key] = (read_image(image_paths[key]) if key in image_paths
                       else np.repeat(normalized[keys.index(key)][:, :, None], 3, axis=2))
    binarization = dict(zip(keys, results))
    # The same crops as discovery: one stage function, whatever the extraction setting.
    references = references_for(normal, config)
    for problem in references.problems if references is not None else []:
        print(f"warning: {problem}")
    regions = cut_regions(MapSet(keys, images, dict(zip(keys, normalized))), binarization, config, references=references)
    rows = []
    for key, result in zip(keys, results):
        stem = Path(key).with_suffix("").as_posix()
        write_image(out / "masks" / f"{stem}.png", result.mask)
    for region in regions:
        key, result = region.image, binarization[region.image]
        stem = Path(key).with_suffix("").as_posix()
        x0, y0, x1, y1 = region.box
        if key in image_paths:
            write_image(out / "crops" / f"{stem}_{region.index}.png", region.image_crop)
            write_image(out / "crops" / f"{stem}_{region.index}_mask.png", region.mask_crop)
        rows.append([key, region.index, x0, y0, x1, y1, region.area, f"{region.score:.6f}",
                     result.threshold, result.num_anomalies])
    with open(out / "regions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(REGION_COLUMNS)
        writer.writerows(rows)
    crops = " and crops" if image_paths else ""
    print(f"regions: {len(rows)} regions from {len(keys)} maps; masks{crops} and regions.csv written "
          f"to {out} in {time.perf_counter() - started:.2f} s")
    return 0
