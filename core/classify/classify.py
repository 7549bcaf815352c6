"""Classify new images with a bundle: maps -> MEBin -> regions -> descriptors -> named class or unknown -> images.

The maps, MEBin and region stages are the discovery pipeline's own functions (core.pipeline) with the
run's settings; the detector learns the bundle's normal references (and reuses its fitted state when
the bundle carries one). A new batch is normalized and binarized over itself, as a discovery run's set
is. Regions are placed in the run's descriptor space (standardized with the run's own statistics),
classified by the bundle's open-set classifier (core.classify.openset) and fused to images with the
discovery's area-weighted fusion (core.grouping.fusion), "unknown" being one more column.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from core.classify.bundle import Bundle, image_shape
from core.errors import UserError
from core.records import ROLE_NORMAL, ImageRecord, Manifest

__all__ = ["NO_ANOMALY", "UNKNOWN", "Classification", "ClassifiedImage", "ClassifiedRegion", "classify_images",
           "load_images"]

#: Class name of a region or image far from every named class.
UNKNOWN = "unknown"
#: Class of an image where nothing rose above the floor, and of the region standing in for it (Region.weak).
NO_ANOMALY = "no anomaly found"
#: A new image's height and width may differ this much from a size the run saw.
SIZE_TOLERANCE = 0.1


@dataclass
class ClassifiedRegion:
    region: object  # core.records.Region
    name: str  # the named class (the nearest even when unknown)
    confidence: float
    novelty: float
    unknown: bool


@dataclass
class ClassifiedImage:
    image: str  # relpath under the images folder
    name: str  # fused class, or UNKNOWN
    confidence: float
    unknown: bool
    n_regions: int


@dataclass
class Classification:
    images: list[ClassifiedImage]
    regions: list[ClassifiedRegion]
    threshold: str  # the open-set rule, in words
    timings: dict[str, float] = field(default_factory=dict)
    detector: str = ""  # what made the maps
    descriptors: object = None  # core.grouping.descriptors.Descriptors of the regions (raw)


def load_images(folder: Path, bundle: Bundle) -> Manifest:
    """The images to classify in `folder` (a normal/ subfolder holds references), checked against the run.

    Raises UserError naming the folder when it is empty, or the file whose size or channel count the
    run never saw, or that cannot be read.
    """
    from core.dataset import DatasetError, load_dataset

    try:
        manifest = load_dataset(folder)
    except DatasetError as error:
        raise UserError(str(error)) from error
    if manifest.problems:
        raise UserError(str(manifest.problems[0]))
    shapes = bundle.shapes
    for record in manifest.unlabeled:
        height, width, channels = image_shape(record.path)
        if not any(channels == c for _, _, c in shapes):
            seen = sorted({c for _, _, c in shapes})
            raise UserError(f"{record.path}: {channels} channel(s); the run's images have {seen}")
        if not any(abs(height - h) <= SIZE_TOLERANCE * h and abs(width - w) <= SIZE_TOLERANCE * w
                   for h, w, _ in shapes):
            seen = ", ".join(f"{w} x {h}" for h, w, _ in shapes[:4])
            raise UserError(f"{record.path}: {width} x {height} pixels; the run's images are {seen} "
                            f"(regions and descriptors are measured in pixels, so sizes must match within "
                            f"{SIZE_TOLERANCE:.0%})")
    return manifest


def with_references(manifest: Manifest, bundle: Bundle) -> Manifest:
    """The images with their normal references: a normal/ folder beside them (template comparison needs
    each image's own partner there), else the run's references that the bundle carries."""
    if manifest.normal:
        return manifest
    references = [ImageRecord(p, f"normal/{p.name}", ROLE_NORMAL) for p in bundle.references]
    return replace(manifest, images=[*manifest.images, *references])


def _maps(manifest: Manifest, bundle: Bundle, device, maps_folder: Path | None,
          progress: Callable[[str, int, int], None] | None, cache_dir: Path | None) -> tuple[dict, list[float], str]:
    """Raw maps of the images: imported from maps_folder, or the run's detector on the bundle's references
    (its map cache in cache_dir when given, else in a folder removed afterwards)."""
    from core.detection import import_maps
    from core.pipeline import detector_for, run_detection

    if maps_folder is not None:
        imported = import_maps(manifest.unlabeled, Path(maps_folder), strict=False)
        if len(imported.maps) < len(manifest.unlabeled):
            raise UserError(f"{maps_folder}: {imported.problems[0]}")
        return imported.maps, [], f"maps imported from {maps_folder}"
    if bundle.maps_imported:
        raise UserError(f"{bundle.folder}: the run's maps came from another detector; give the new images' "
                        "maps with --maps")
    detector = detector_for(manifest, bundle.config.detector, bundle.config.seed)
    cache = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="classify-cache-"))
    try:
        if (bundle.folder / "detector").is_dir():  # the run's fitted state, where the cache looks for it
            shutil.copytree(bundle.folder / "detector", cache, dirs_exist_ok=True)
        summary: dict = {}
        maps = run_detection(manifest, detector, device, progress=progress, cache_dir=cache, summary=summary)
    finally:
        if cache_dir is None:
            shutil.rmtree(cache, ignore_errors=True)
    return maps, list(summary.get("normal_peaks", ())), str(summary.get("choice", detector.method))


def _regions(manifest: Manifest, bundle: Bundle, maps: dict, normal_peaks: Sequence[float]):
    """The discovery's maps, MEBin and region stages with the run's settings."""
    from core.pipeline import binarize_maps, cut_regions, prepare_maps
    from core.regions.refine import references_for

    config = bundle.config
    map_set = prepare_maps(manifest.unlabeled, maps, normal_peaks)
    binarization = binarize_maps(map_set, config.mebin, config.binarizer)
    references = references_for([r.path for r in manifest.normal], config.regions)
    return map_set, cut_regions(map_set, binarization, config.regions, references=references)


def _fuse(regions: Sequence, results, weak: np.ndarray, keys: Sequence[str], tau: float, classes: list[str]
          ) -> list[ClassifiedImage]:
    """Image classes by the discovery's area-weighted fusion; "unknown" and "no anomaly found" are two more
    columns."""
    from collections import Counter

    from core.grouping.fusion import fuse_regions

    n_classes = len(classes)
    columns = np.zeros((len(regions), n_classes + 2))
    columns[:, :n_classes] = results.probabilities * ~(results.unknown | weak)[:, None]
    columns[results.unknown, n_classes] = 1.0
    columns[weak, n_classes + 1] = 1.0
    fused = fuse_regions([r.image for r in regions], columns, [r.area for r in regions], tau) if regions else {}
    counts = Counter(r.image for r in regions)
    images = []
    for key in keys:
        if key not in fused:  # cut_regions gives every image a region; kept safe all the same
            images.append(ClassifiedImage(key, UNKNOWN, 0.0, True, 0))
            continue
        best = int(fused[key].argmax())
        name = classes[best] if best < n_classes else (UNKNOWN, NO_ANOMALY)[best - n_classes]
        images.append(ClassifiedImage(key, name, float(fused[key][best]), best == n_classes, counts[key]))
    return images


def classify_images(bundle: Bundle, manifest: Manifest, *, device: str = "cpu", maps_folder: Path | None = None,
                    maps: Mapping[str, np.ndarray] | None = None, cache_dir: Path | None = None,
                    progress: Callable[[str, int, int], None] | None = None) -> Classification:
    """Every image of `manifest` (load_images) and its regions: a named class with a confidence, or unknown.

    maps_folder: the images' anomaly maps as files; maps: the same in memory (raw, by image relpath);
    neither: the run's detector (its map cache kept in cache_dir when given). A region that stands in for
    an image where nothing rose above the floor (Region.weak) is NO_ANOMALY, as is an image of only such.
    Raises UserError (PipelineError) for input it cannot use.
    """
    from core.grouping.descriptors import combine, describe_regions

    timings: dict[str, float] = {}
    manifest = with_references(manifest, bundle)
    started = time.perf_counter()
    if maps is not None:
        normal_peaks, choice = [], "maps given"
    else:
        maps, normal_peaks, choice = _maps(manifest, bundle, device, maps_folder, progress, cache_dir)
    timings["maps"] = time.perf_counter() - started
    started = time.perf_counter()
    map_set, regions = _regions(manifest, bundle, maps, normal_peaks)
    timings["regions"] = time.perf_counter() - started
    started = time.perf_counter()
    raw = describe_regions(regions, map_set.images, bundle.config.descriptors)
    features = combine(raw, bundle.config.descriptors, reference=bundle.descriptors)
    results = bundle.classifier.predict(features)
    classes = bundle.classes
    weak = np.array([r.weak for r in regions], bool)
    results.unknown &= ~weak
    classified = [ClassifiedRegion(region, NO_ANOMALY, 1.0, 0.0, False) if region.weak else
                  ClassifiedRegion(region, classes[int(c)], float(p), float(n), bool(u)) for region, c, p, n, u in
                  zip(regions, results.classes, results.confidence, results.novelty, results.unknown)]
    images = _fuse(regions, results, weak, map_set.keys, bundle.config.tau, classes)
    timings["classify"] = time.perf_counter() - started
    return Classification(images, classified, bundle.describe_threshold(), timings, choice, raw)
