"""Region masks refined against the normal references (beyond the paper; RegionConfig.refine).

A detector's map is smooth: its mask around a thin crack or a small pit is a blob several times
the defect, and a region's shape and contrast (core.grouping.descriptors) are then those of the blob. Where
normal reference images exist, each region's mask is redrawn from the image itself:

1. the `refine_references` references nearest to the image (32 x 32 thumbnails) are searched
   for the patch that best matches the crop around the blob (sum of squared differences, the blob
   and its margin left out, shifts up to `refine_search` of the crop side);
2. the reference patch is the pixel median of the best matches within `refine_ratio` of the best
   one (one board's own template on DeepPCB, several alike discs on the demo);
3. the mask is where the blurred difference to it exceeds both the noise of the difference around
   the blob (median + `refine_z` robust spreads) and `refine_half` of the defect's own difference
   (its 95th percentile inside the blob: a half-maximum rule, so a sharp map is not widened), within
   the blob grown by a few pixels, keeping the parts that start inside the blob.

A region where nothing passes, or whose image has no reference, keeps its map mask. Measured
(descriptors representation, K as the truth): all 500 DeepPCB images, region NMI with the
template maps 0.61 -> 0.80, with the annotated pixels as maps 0.75 -> 0.77; demo image NMI, mean
of three generated demos, 0.33 -> 0.44.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from core.config import RegionConfig
from core.records import Region

__all__ = ["ReferenceImages", "references_for", "refine_mask", "refine_regions"]

THUMB = 32  # side of the thumbnails that choose the nearest references
#: Regions between two progress reports of refine_regions.
PROGRESS_EVERY = 25
GROW = 4  # pixels the blob may grow by (a smooth map's mask can fall short of a defect's ends)


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.asarray(image, np.float32)


def _thumb(gray: np.ndarray) -> np.ndarray:
    return cv2.resize(gray, (THUMB, THUMB), interpolation=cv2.INTER_AREA).ravel()


class ReferenceImages:
    """The normal references, read once for their thumbnails and again (a few cached) when matched.

    paths: the reference image files. Unreadable ones are left out and named in `problems`.
    """

    def __init__(self, paths: Sequence[Path], cache_size: int = 32) -> None:
        from core.imageio import ImageReadError, read_image

        self._read = read_image
        self.paths: list[Path] = []
        self.problems: list[str] = []
        thumbs = []
        for path in paths:
            try:
                thumbs.append(_thumb(_gray(read_image(path))))
            except ImageReadError as error:
                self.problems.append(f"{error} (left out of the mask refinement)")
                continue
            self.paths.append(Path(path))
        self.thumbs = np.stack(thumbs) if thumbs else np.zeros((0, THUMB * THUMB), np.float32)
        self._cache: OrderedDict[tuple[int, tuple[int, int]], np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self.paths)

    def nearest(self, gray: np.ndarray, count: int) -> list[np.ndarray]:
        """The `count` references nearest to the image by thumbnail, at the image's size."""
        if not len(self):
            return []
        distance = ((self.thumbs - _thumb(gray)[None]) ** 2).sum(axis=1)
        order = np.argsort(distance, kind="stable")[: max(1, count)]
        return [self._image(int(i), gray.shape[:2]) for i in order]

    def _image(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        key = (index, shape)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        gray = _gray(self._read(self.paths[index]))
        if gray.shape != shape:
            gray = cv2.resize(gray, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
        self._cache[key] = gray
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return gray


def redraws(config: RegionConfig, references: int) -> bool:
    """Whether masks are redrawn against `references` normal images (not with the paper's extraction or "none")."""
    return config.extraction == "components" and config.refine != "none" and references > 0


def references_for(paths: Sequence[Path], config: RegionConfig) -> ReferenceImages | None:
    """The references a run refines its masks against; None when it does not (paper's extraction, "none", no normals)."""
    if not redraws(config, len(paths)):
        return None
    return ReferenceImages(paths)


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def refine_mask(gray: np.ndarray, box: tuple[int, int, int, int], mask_crop: np.ndarray,
                references: Sequence[np.ndarray], config: RegionConfig = RegionConfig()) -> np.ndarray | None:
    """The region's mask redrawn from its difference to the best-matching reference patch (0/255).

    gray: the whole image (float32); box: the crop (x0, y0, x1, y1); mask_crop: the map's mask in
    it; references: reference images at the image's size. None where nothing passes.
    """
    x0, y0, x1, y1 = box
    blob = mask_crop > 0
    if not blob.any() or not len(references):
        return None
    height, width = gray.shape
    crop = gray[y0:y1, x0:x1]
    grown = cv2.dilate(blob.astype(np.uint8), _disc(GROW)) > 0
    outside = cv2.dilate(grown.astype(np.uint8), _disc(2)) == 0
    template_mask = outside.astype(np.float32) if outside.sum() >= 0.2 * outside.size else np.ones_like(crop)
    shift = max(4, int(round(config.refine_search * (x1 - x0))))
    sx0, sy0, sx1, sy1 = max(0, x0 - shift), max(0, y0 - shift), min(width, x1 + shift), min(height, y1 + shift)
    matches = []
    for reference in references:
        area = reference[sy0:sy1, sx0:sx1]
        cost = cv2.matchTemplate(area, crop, cv2.TM_SQDIFF, mask=template_mask)
        value, _, (mx, my), _ = cv2.minMaxLoc(np.nan_to_num(cost, nan=np.inf, posinf=np.inf))
        matches.append((float(value), area[my:my + crop.shape[0], mx:mx + crop.shape[1]]))
    matches.sort(key=lambda m: m[0])
    best = max(matches[0][0], 1e-6)
    close = [patch for value, patch in matches[:3] if value <= config.refine_ratio * best]
    patch = np.median(np.stack(close), axis=0) if len(close) > 1 else close[0]
    difference = cv2.GaussianBlur(np.abs(crop - patch), (0, 0), 1.0)
    around = difference[outside] if outside.any() else difference.ravel()
    median = float(np.median(around))
    spread = max(1.4826 * float(np.median(np.abs(around - median))), 1.0)
    threshold = max(median + config.refine_z * spread, config.refine_half * float(np.quantile(difference[blob], 0.95)))
    above = (difference > threshold) & grown
    count, labels = cv2.connectedComponents(above.astype(np.uint8), connectivity=8)
    started = np.unique(labels[above & blob])
    keep = np.isin(labels, started[started > 0])
    if keep.sum() < 4:
        return None
    return np.where(keep, 255, 0).astype(np.uint8)


def refine_regions(regions: Sequence[Region], images: dict[str, np.ndarray], references: ReferenceImages | None,
                   config: RegionConfig, exact: Sequence[str] = (),
                   progress: Callable[[int, int], None] | None = None) -> tuple[list[Region], int]:
    """Every region's mask refined against the references: (regions, how many were redrawn).

    Regions of images in `exact` (an engineer set their threshold) keep the map's mask, as do all
    where config.refine is "none" or no reference exists. progress(regions done, total), at most
    every PROGRESS_EVERY regions (redrawing is most of the regions stage on a set with thousands).
    """
    if config.refine == "none" or references is None or not len(references):
        return list(regions), 0
    skip = set(exact)
    grays: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}
    out, redrawn = [], 0
    for done, region in enumerate(regions):
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress(done, len(regions))
        if region.image in skip:
            out.append(region)
            continue
        if region.image not in grays:
            gray = _gray(images[region.image])
            grays = {region.image: (gray, references.nearest(gray, config.refine_references))}
        gray, nearest = grays[region.image]
        mask = refine_mask(gray, region.box, region.mask_crop, nearest, config)
        if mask is None:
            out.append(region)
            continue
        redrawn += 1
        out.append(replace(region, mask_crop=mask, area=int(np.count_nonzero(mask))))
    return out, redrawn
