"""Anomaly-centred sub-images (docs/method.md stage 3): square crops around MEBin's components.

Two extractions, chosen by `RegionConfig.extraction`:

- "reference" (the paper): contours of MEBin's eroded final mask, square crops of at least
  `min_crop` of the image side, close boxes merged, the largest est_anomaly_num + 1 kept.
- "components" (default): every defect its own region. MEBin's threshold is the start; the map
  is cut again lower (`low_fraction` of that threshold) without erosion, and every 8-connected
  component whose peak reaches `relative_peak` of the image's strongest component (and that
  holds at least `min_area` of the image) becomes a region with a crop that follows its size
  (`context` around it, at least `min_side` pixels). Its mask is its pixels at or above
  `mask_fraction` of its own peak (smooth maps spread a defect into a wide blob). Parts closer
  than `join_distance` of the image side are one region (a broken trace, a dotted scratch). The
  cut never goes below what defect-free images reach (`set_floor`): the median + `floor_z`
  robust spreads of the map peaks of the normal images the detector held out (`normal_floor`),
  or, without three of those (imported maps, golden templates), the set's map background
  (`noise_floor`: median + `noise_z` robust spreads of all map pixels), so a detector's noise
  floor does not become regions. Where MEBin finds no stable
  threshold, the set's median threshold stands in (core.pipeline.cut_regions).

`recut_image` redoes one image at a threshold an engineer chose (MEBin's mask at t, then its crops).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import cv2
import numpy as np

from core.config import MEBinConfig, RegionConfig
from core.records import Region

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


def square_box(cx: float, cy: float, radius: int, height: int, width: int) -> Box:
    """A square of side 2*radius centred at (cx, cy), shifted (not shrunk) to lie in the image."""
    radius = max(1, min(radius, height // 2 if height > 1 else 1, width // 2 if width > 1 else 1))
    side = min(2 * radius, height, width)
    x0 = int(round(cx)) - side // 2
    y0 = int(round(cy)) - side // 2
    x0 = min(max(x0, 0), width - side)
    y0 = min(max(y0, 0), height - side)
    return (x0, y0, x0 + side, y0 + side)


def _gap(a: Box, b: Box) -> int:
    """Chebyshev gap between two rectangles (0 when they touch or overlap)."""
    dx = max(0, max(a[0], b[0]) - min(a[2], b[2]))
    dy = max(0, max(a[1], b[1]) - min(a[3], b[3]))
    return max(dx, dy)


def _merge_close(boxes: list[Box], distance: int, height: int, width: int) -> list[Box]:
    """Merge boxes closer than `distance` until none are; each union is made square again."""
    boxes = list(boxes)
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if _gap(boxes[i], boxes[j]) < distance:
                    a, b = boxes[i], boxes[j]
                    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
                    x1, y1 = max(a[2], b[2]), max(a[3], b[3])
                    radius = (max(x1 - x0, y1 - y0) + 1) // 2
                    union = square_box((x0 + x1) / 2, (y0 + y1) / 2, radius, height, width)
                    boxes = [box for k, box in enumerate(boxes) if k not in (i, j)] + [union]
                    merged = True
                    break
            if merged:
                break
    return boxes


def crop_boxes(mask: np.ndarray, num_anomalies: int, config: RegionConfig = RegionConfig()) -> list[Box]:
    """Square crop boxes for a binary mask at image size, largest first.

    No foreground at all gives the whole image as one box (as the reference does).
    """
    height, width = mask.shape
    max_side = max(height, width)
    binary = (mask > 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return [(0, 0, width, height)]
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        radius = max(int(max(h, w) * (1 + config.padding) / 2), int(max_side * config.min_crop))
        radius = min(radius, int(max_side / 2))
        boxes.append(square_box(x + w / 2, y + h / 2, radius, height, width))
    boxes = _merge_close(boxes, int(max_side * config.merge_distance), height, width)
    boxes.sort(key=lambda b: (-(b[2] - b[0]) * (b[3] - b[1]), b[1], b[0]))
    if config.keep == "reference":
        boxes = boxes[: max(0, int(num_anomalies)) + 1]
    return boxes


def _label_stats(labels: np.ndarray, count: int) -> np.ndarray:
    """[count, 5] x, y, width, height, area of every label (cv2's CC_STAT layout); empty labels get zeros."""
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs]
    stats = np.zeros((count, 5), np.int64)
    x0 = np.full(count, np.iinfo(np.int64).max); y0 = x0.copy()
    x1 = np.full(count, -1, np.int64); y1 = x1.copy()
    np.minimum.at(x0, ids, xs); np.minimum.at(y0, ids, ys)
    np.maximum.at(x1, ids, xs); np.maximum.at(y1, ids, ys)
    area = np.bincount(ids, minlength=count)
    present = area > 0
    stats[present] = np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1, area], axis=1)[present]
    return stats


def component_boxes(map_u8: np.ndarray, threshold: int, config: RegionConfig = RegionConfig(), floor: float = 0.0
                    ) -> list[tuple[Box, np.ndarray]]:
    """Per-component regions of one map: (square crop box, the component's 0/255 mask in it), strongest first.

    `threshold` is MEBin's cut on the map's 0..255 scale (255 or more: none found, the map's own
    peak halved stands in). The map is cut at low_fraction of it, without erosion; components
    below min_area or whose peak is under relative_peak of the strongest are dropped.
    """
    map_u8 = np.asarray(map_u8)
    height, width = map_u8.shape
    peak = int(map_u8.max())
    if peak == 0:
        return []
    main = int(threshold) if threshold < 255 else peak // 2
    cut = max(int(main * config.low_fraction), int(floor))
    above = (map_u8 > cut).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    join = int(round(config.join_distance * max(height, width)))
    if join > 0 and count > 2:  # components closer than `join` pixels are one defect: one region, their pixels the mask
        grown = cv2.dilate(above, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * join + 1, 2 * join + 1)))
        count, joined = cv2.connectedComponents(grown, connectivity=8)
        labels = np.where(above > 0, joined, 0).astype(np.int32)
        stats = _label_stats(labels, count)
    if count <= 1:
        return []
    peaks = np.zeros(count, np.int64)
    np.maximum.at(peaks, labels.ravel(), map_u8.ravel().astype(np.int64))
    min_pixels = max(1, int(round(config.min_area * height * width)))
    strongest = int(peaks[1:].max())
    keep = [i for i in range(1, count)
            if stats[i, cv2.CC_STAT_AREA] >= min_pixels and peaks[i] >= config.relative_peak * strongest]
    keep.sort(key=lambda i: (-int(peaks[i]), -int(stats[i, cv2.CC_STAT_AREA])))
    out = []
    for i in keep[: config.max_regions]:
        x, y, w, h = (int(v) for v in stats[i, :4])
        side = max(config.min_side, int(round(max(w, h) * (1 + config.context))))
        box = square_box(x + w / 2, y + h / 2, (side + 1) // 2, height, width)
        x0, y0, x1, y1 = box
        inside = (labels[y0:y1, x0:x1] == i) & (map_u8[y0:y1, x0:x1] >= config.mask_fraction * peaks[i])
        out.append((box, np.where(inside, 255, 0).astype(np.uint8)))
    return out


def peak_box(map_u8: np.ndarray, config: RegionConfig = RegionConfig()) -> list[tuple[Box, np.ndarray]]:
    """The map's strongest spot as one region, for an image where no component clears the floor.

    The map is cut at fallback_height of the way from its median up to its peak; the component
    holding the peak is the region ([] for a flat map). Its score stays the map's low peak, so the
    grouping can still tell it from confident defects, and it is marked weak (core.grouping.spectral lets
    weak regions join groups but not shape them). Measured on the benchmark's demo (built-in
    detector's maps): 18 of its 70 defective images had nothing above the floor, and their
    strongest spot lay on the defect in 16 of them.
    """
    map_u8 = np.asarray(map_u8)
    peak = int(map_u8.max())
    median = float(np.median(map_u8))
    if peak <= median:
        return []
    cut = median + config.fallback_height * (peak - median)
    found = component_boxes(map_u8, 255, replace(config, low_fraction=1.0, relative_peak=1.0, join_distance=0.0), cut)
    return found[:1]


def noise_floor(maps: Sequence[np.ndarray], noise_z: float) -> float:
    """The set's map background on the 0..255 scale raised by noise_z robust spreads.

    median + noise_z * 1.4826 * MAD over the pixels of every map (every second row and column;
    the MAD at least one level of the uint8 scale). Defects are a small share of the pixels, so
    this is what a defect-free surface reaches; components must rise above it.
    """
    if not len(maps):
        return 0.0
    pixels = np.concatenate([np.asarray(m)[::2, ::2].ravel() for m in maps]).astype(np.float32)
    median = float(np.median(pixels))
    mad = max(float(np.median(np.abs(pixels - median))), 1.0)
    return median + noise_z * 1.4826 * mad


def normal_floor(normal_peaks: Sequence[float], z: float) -> float | None:
    """What defect-free images reach: the median of normal images' map peaks + z robust spreads (0..255).

    normal_peaks: map maxima, on the set's global scale, of normal images the detector did not
    learn from (its held-out share, often 4 to 50 images; MapSet.normal_peaks). Median and MAD,
    not a high quantile: one normal image with a bright corner must not lift the floor for all.
    None with fewer than 3 peaks. Measured against the pixel floor (noise_floor, median + 8
    spreads of all map pixels), descriptors image NMI: hard textured set 0.11 -> 0.35 (the pixel
    floor, 99 of 255, sat above most defects' peaks, median 63: 95 of 119 regions were empty
    whole-tile placeholders); demo, mean of three generated demos, 0.44 -> 0.49.
    """
    if len(normal_peaks) < 3:
        return None
    peaks = np.asarray(normal_peaks, np.float64)
    median = float(np.median(peaks))
    return median + z * 1.4826 * float(np.median(np.abs(peaks - median)))


def set_floor(maps: Sequence[np.ndarray], normal_peaks: Sequence[float], config: RegionConfig) -> float:
    """The floor a components cut never goes below, on the maps' 0..255 scale: the held-out normal
    images' peaks (normal_floor) when the detector scored 3 or more, else the pixel floor (noise_floor)."""
    floor = normal_floor(normal_peaks, config.floor_z)
    return floor if floor is not None else noise_floor(maps, config.noise_z)


def extract_regions(
    image_key: str,
    image: np.ndarray,
    normalized_map: np.ndarray,
    mask: np.ndarray,
    num_anomalies: int,
    config: RegionConfig = RegionConfig(),
    *,
    map_u8: np.ndarray | None = None,
    threshold: int | None = None,
    floor: float = 0.0,
) -> list[Region]:
    """Cut the anomaly-centred regions of one image.

    `mask` (0/255, MEBin's final mask, any size) is resized nearest to the image; the region
    score is the max of `normalized_map` (0..255) inside the box / 255. The "components"
    extraction also needs the globally normalized uint8 map (`map_u8`) and MEBin's `threshold`
    on its scale; an image where no component clears the floor gets its map's strongest spot
    (config.fallback "peak", peak_box) or the whole image ("whole") as one region, marked weak.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{image_key}: image must be H x W x 3, got shape {image.shape}")
    height, width = image.shape[:2]
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    mask = np.where(mask > 0, 255, 0).astype(np.uint8)
    score_map = np.asarray(normalized_map, dtype=np.float32)
    if score_map.shape != (height, width):
        score_map = cv2.resize(score_map, (width, height), interpolation=cv2.INTER_LINEAR)
    weak = False
    if config.extraction == "components":
        if map_u8 is None or threshold is None:
            raise ValueError("the components extraction needs the uint8 map and MEBin's threshold")
        if map_u8.shape != (height, width):
            map_u8 = cv2.resize(map_u8, (width, height), interpolation=cv2.INTER_LINEAR)
        found = component_boxes(map_u8, threshold, config, floor)
        weak = not found
        if weak and config.fallback == "peak":
            found = peak_box(map_u8, config)
        pieces = found or [((0, 0, width, height), np.zeros((height, width), np.uint8))]
    else:
        pieces = [(box, mask[box[1]:box[3], box[0]:box[2]].copy()) for box in crop_boxes(mask, num_anomalies, config)]
    regions = []
    for index, ((x0, y0, x1, y1), mask_crop) in enumerate(pieces):
        regions.append(
            Region(
                image=image_key,
                index=index,
                box=(x0, y0, x1, y1),
                image_crop=image[y0:y1, x0:x1].copy(),
                mask_crop=mask_crop,
                area=int(np.count_nonzero(mask_crop)),
                score=float(score_map[y0:y1, x0:x1].max()) / 255.0,
                weak=weak,
            )
        )
    return regions


def recut_image(
    key: str,
    image: np.ndarray,
    map_u8: np.ndarray,
    threshold: int,
    search_range: tuple[int, int],
    mebin: MEBinConfig,
    regions: RegionConfig,
    *,
    floor: float = 0.0,
) -> tuple[np.ndarray, int, list[Region]]:
    """One image at a threshold an engineer chose: (mask, component count, its crops).

    map_u8 is the image's globally normalized map, search_range MEBin's (s_min, s_max) of its set,
    so region scores match those of a full run; floor the one the run cut with (set_floor).
    """
    from core.regions.mebin import mask_at_threshold, normalize_to_range

    mask, count = mask_at_threshold(map_u8, threshold, erode=mebin.erode, kernel_size=mebin.kernel_size)
    normalized = normalize_to_range(map_u8, *search_range)
    # the engineer's threshold is exact: nothing above it stays nothing (no strongest-spot fallback)
    return mask, count, extract_regions(key, image, normalized, mask, count, replace(regions, fallback="whole"),
                                        map_u8=map_u8, threshold=int(threshold), floor=floor)
