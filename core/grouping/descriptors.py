"""Fixed, weight-free descriptors of anomaly regions: what a defect is shows in its mask and contrast.

Five groups, computed from each region's crop, its mask and the whole image's statistics:

- geometry of the mask: log area, share of the image and of the mask's own box, solidity,
  compactness, elongation, mean width, log Hu moments, number of parts, distance to the image
  edge;
- intensity inside against around the mask, in units of the image's spread: means, spreads,
  percentiles and the polarity (brighter or darker than the surroundings);
- texture inside against around: uniform-LBP histograms and gradient / Laplacian energies;
- gradient orientation: a HOG of the crop at a fixed size;
- the mask's orientation in the image: the log aspect of its extent and its principal axis as a
  doubled angle weighted by its elongation. Geometry above is rotation invariant on purpose, but on a
  surface with directions of its own (the warp and weft of a fabric, the rolling direction of a strip)
  a defect along one axis is another kind than the same shape across it. Measured with the engine's
  grouping (K given, weight 0.7 against the other weights as they were): AITEX with its masks as maps,
  image NMI 0.469 -> 0.524 (F1 0.352 -> 0.429); DeepPCB template maps, region NMI 0.802 -> 0.802
  (F1 0.806 -> 0.807); weight 1.4 cost DeepPCB 0.08 (docs/results.md).

`combine` standardizes every feature over the set and scales each group to the same total
variance times its weight, so no group dominates by its length. Crops are brought to one size
and the texture and HOG groups are computed on a whole stack at once; large sets are split into
chunks described in forked processes (10,000 regions: 10.2 s in one process, 6.3 s in two on
2 shared cores, benchmarks/descriptors.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import multiprocessing
import os

import cv2
import numpy as np

from core.config import DescriptorConfig
from core.regions.mebin import _available_cores

__all__ = ["DESCRIPTOR_GROUPS", "DescriptorConfig", "Descriptors", "combine", "describe", "describe_regions"]

#: Descriptor groups in column order.
DESCRIPTOR_GROUPS = ("geometry", "intensity", "texture", "hog", "orientation")

_GEOMETRY = ["log_area", "image_share", "box_share", "solidity", "compactness", "elongation", "log_width",
             *[f"hu{i}" for i in range(1, 8)], "parts", "edge_distance"]
_INTENSITY = ["inside_mean", "around_mean", "contrast", "inside_spread", "around_spread", "inside_p10",
              "inside_p50", "inside_p90", "polarity", "contrast_to_spread",
              "ring_min", "ring_max", "ring_bright_share", "ring_f1", "ring_f2", "ring_f3", "ring_arcs",
              "near_mean", "far_mean"]

_ORIENTATION = ["log_aspect", "axis_cos", "axis_sin"]
_SECTORS = 16
_TEXTURE_WIDTH = 26  # 10 LBP inside, 10 LBP inside - around, 4 energies, 2 energy contrasts


@dataclass
class Descriptors:
    """Raw descriptor matrix [N, D] and the column slice of every group."""

    values: np.ndarray  # float32 [N, D]
    groups: dict[str, slice]
    names: list[str]

    def group(self, name: str) -> np.ndarray:
        return self.values[:, self.groups[name]]


# ------------------------------------------------------------------------------ geometry


def _geometry(mask: np.ndarray, box: tuple[int, int, int, int] | None, image_size: tuple[int, int] | None) -> list[float]:
    binary = (mask > 0).astype(np.uint8)
    area = int(binary.sum())
    height, width = image_size if image_size is not None else mask.shape
    if area == 0:
        return [0.0] * len(_GEOMETRY)
    ys, xs = np.nonzero(binary)
    my0, my1, mx0, mx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box_share = area / float((my1 - my0) * (mx1 - mx0))
    contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours) or 1.0
    points = np.concatenate([c.reshape(-1, 2) for c in contours])
    hull_area = cv2.contourArea(cv2.convexHull(points)) if len(points) >= 3 else 0.0
    solidity = min(1.0, area / max(hull_area + perimeter / 2.0, 1.0))  # pixel-area hull (half a pixel outside)
    compactness = min(1.0, 4.0 * np.pi * area / (perimeter + np.pi) ** 2)
    moments = cv2.moments(binary, binaryImage=True)
    mu20, mu02, mu11 = moments["mu20"] / area, moments["mu02"] / area, moments["mu11"] / area
    spread = np.sqrt(max((mu20 - mu02) ** 2 + 4 * mu11 ** 2, 0.0))
    major, minor = (mu20 + mu02 + spread) / 2 + 1 / 12, max((mu20 + mu02 - spread) / 2, 0.0) + 1 / 12
    elongation = 1.0 - np.sqrt(minor / major)
    hu = cv2.HuMoments(moments).ravel()
    hu = -np.sign(hu) * np.log10(np.abs(hu) + 1e-30)
    hu = np.clip(hu, -30, 30)
    parts = cv2.connectedComponents(binary, connectivity=8)[0] - 1
    if box is not None:
        gx0, gy0 = box[0] + mx0, box[1] + my0
        gx1, gy1 = box[0] + mx1, box[1] + my1
    else:
        gx0, gy0, gx1, gy1 = mx0, my0, mx1, my1
    edge = min(gx0, gy0, width - gx1, height - gy1) / float(max(height, width))
    return [np.log(area), area / float(height * width) * 100.0, box_share, solidity, compactness, elongation,
            np.log(2.0 * area / perimeter), *hu.tolist(), np.log(parts), edge]


def _orientation(mask: np.ndarray) -> list[float]:
    """log(width / height) of the mask's extent, and its principal axis as (cos 2a, sin 2a) times its
    eccentricity: 0 for a round mask, on the unit circle for a line (horizontal (1, 0), vertical (-1, 0))."""
    binary = (mask > 0).astype(np.uint8)
    if not binary.any():
        return [0.0] * len(_ORIENTATION)
    ys, xs = np.nonzero(binary)
    aspect = np.log((xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1))
    moments = cv2.moments(binary, binaryImage=True)
    mu20, mu02, mu11 = (moments[key] / moments["m00"] for key in ("mu20", "mu02", "mu11"))
    half_difference = (mu20 - mu02) / 2
    eccentricity = np.hypot(half_difference, mu11) / ((mu20 + mu02) / 2 + 1e-9)
    angle = np.arctan2(2 * mu11, mu20 - mu02)
    return [float(aspect), float(eccentricity * np.cos(angle)), float(eccentricity * np.sin(angle))]


# ----------------------------------------------------------------------------- intensity


def _ring(binary: np.ndarray, ring: float, ys: np.ndarray, xs: np.ndarray,
          distance: np.ndarray) -> np.ndarray:
    """The band around a mask: outside it, within ring * its longer side (at least 2 px)."""
    reach = max(2, int(round(ring * max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))))
    return (distance > 0) & (distance <= reach)


def _quantiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Linear-interpolated quantiles (as np.percentile) from one sort."""
    ordered = np.sort(values)
    position = np.asarray(qs) * (len(ordered) - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, len(ordered) - 1)
    return (ordered[low] + (ordered[high] - ordered[low]) * (position - low)).tolist()


def _moments(values: np.ndarray) -> tuple[float, float]:
    """Mean and (population) variance of a 1-D float array with two reductions."""
    mean = float(values.sum()) / values.size
    return mean, max(float(np.dot(values, values)) / values.size - mean * mean, 0.0)


def _intensity(values: np.ndarray, binary: np.ndarray, ys: np.ndarray, xs: np.ndarray, distance: np.ndarray,
               around_mask: np.ndarray) -> list[float]:
    """values: the crop's gray in units of its image (mean 0, spread 1); the mask's pixels ys, xs."""
    inside = values[ys, xs]
    around = values[around_mask] if around_mask.any() else values[binary == 0]
    if around.size == 0:
        around = np.zeros(1, np.float32)
    inside_mean, inside_var = _moments(inside)
    around_mean, around_var = _moments(around)
    contrast = inside_mean - around_mean
    base = _quantiles(around, (0.5,))[0]
    p10, p50, p90 = (v - base for v in _quantiles(inside, (0.1, 0.5, 0.9)))
    spread_both = float(np.sqrt((inside_var + around_var) / 2)) + 0.05
    return [inside_mean, around_mean, contrast, float(np.sqrt(inside_var)), float(np.sqrt(around_var)),
            float(p10), float(p50), float(p90), float(np.tanh(2.0 * contrast)), contrast / spread_both,
            *_surroundings(values, ys, xs, around_mask, distance)]


def _surroundings(values: np.ndarray, my: np.ndarray, mx: np.ndarray, around: np.ndarray,
                  distance: np.ndarray) -> list[float]:
    """What surrounds the mask, direction by direction: a 16-sector profile of the ring around it.

    Rotation-invariant summaries: extremes, the share of bright sectors, the magnitudes of the
    profile's first three Fourier terms (one bright side, two opposite ones, ...) and the number
    of bright arcs; plus the mean just outside the mask (1-2 px) and farther out.
    """
    ys, xs = np.nonzero(around)
    if ys.size == 0:
        return [0.0] * 9
    angle = np.arctan2(ys - float(my.sum()) / my.size, xs - float(mx.sum()) / mx.size)
    sector = np.minimum(((angle + np.pi) * (_SECTORS / (2 * np.pi))).astype(np.int64), _SECTORS - 1)
    ring = values[ys, xs]
    counts = np.bincount(sector, minlength=_SECTORS)
    sums = np.bincount(sector, weights=ring, minlength=_SECTORS)
    ring_mean = float(sums.sum()) / ring.size
    profile = np.where(counts > 0, sums / np.maximum(counts, 1), ring_mean)
    spectrum = np.abs(np.fft.rfft(profile - profile.mean()))[1:4] / _SECTORS
    bright = profile > 0.0
    arcs = float(np.count_nonzero(bright[1:] & ~bright[:-1]) + int(bright[0] and not bright[-1]))
    close = distance[ys, xs] <= 2  # the ring reaches at least 2 px: "just outside" lies in it
    near, far = ring[close], ring[~close]
    return [float(profile.min()), float(profile.max()), float(bright.mean()), *spectrum.tolist(), arcs,
            float(near.mean()) if near.size else 0.0, float(far.mean()) if far.size else ring_mean]


# ------------------------------------------------------------------------- texture, HOG


def _lbp_codes(stack: np.ndarray) -> np.ndarray:
    """Uniform LBP (8 neighbours, radius 1) of [N, S, S] -> codes 0..9 on the inner [N, S-2, S-2]."""
    centre = stack[:, 1:-1, 1:-1]
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    size = stack.shape[1]
    bits = np.stack([stack[:, 1 + dy:size - 1 + dy, 1 + dx:size - 1 + dx] >= centre for dy, dx in offsets], axis=-1)
    ones = bits.sum(axis=-1)
    transitions = (bits != np.roll(bits, 1, axis=-1)).sum(axis=-1)
    return np.where(transitions <= 2, ones, 9)


def _masked_histograms(codes: np.ndarray, weights: np.ndarray, bins: int) -> np.ndarray:
    n = codes.shape[0]
    flat = (codes + bins * np.arange(n)[:, None, None]).ravel()
    hist = np.bincount(flat, weights=weights.ravel(), minlength=n * bins).reshape(n, bins)
    return hist / np.maximum(hist.sum(axis=1, keepdims=True), 1e-6)


def _texture(gray: np.ndarray, inside: np.ndarray, around: np.ndarray) -> np.ndarray:
    """[N, S, S] gray (image-normalized), inside / around weights -> LBP and energy features."""
    codes = _lbp_codes(gray)
    w_in, w_out = inside[:, 1:-1, 1:-1], around[:, 1:-1, 1:-1]
    lbp_in = _masked_histograms(codes, w_in, 10)
    lbp_out = _masked_histograms(codes, w_out, 10)
    gy, gx = np.gradient(gray, axis=(1, 2))
    magnitude = np.sqrt(gx ** 2 + gy ** 2)
    laplacian = np.abs(gray[:, 1:-1, 1:-1] * 4 - gray[:, :-2, 1:-1] - gray[:, 2:, 1:-1] - gray[:, 1:-1, :-2]
                       - gray[:, 1:-1, 2:])

    def masked_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return (values * weights).sum(axis=(1, 2)) / np.maximum(weights.sum(axis=(1, 2)), 1e-6)

    energies = np.stack([
        masked_mean(magnitude, inside), masked_mean(magnitude, around),
        masked_mean(laplacian, w_in), masked_mean(laplacian, w_out),
    ], axis=1)
    energies = np.log1p(energies)
    return np.concatenate([lbp_in, lbp_in - lbp_out, energies, energies[:, [0, 2]] - energies[:, [1, 3]]], axis=1)


def _hog(gray: np.ndarray, cells: int, bins: int) -> np.ndarray:
    """Unsigned-orientation HOG of [N, S, S] on a cells x cells grid, L2-normalized per region."""
    n, size, _ = gray.shape
    gy, gx = np.gradient(gray, axis=(1, 2))
    magnitude = np.sqrt(gx ** 2 + gy ** 2)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    index = np.minimum((angle / np.pi * bins).astype(np.int64), bins - 1)
    cell = np.minimum(np.arange(size) * cells // size, cells - 1)
    cell_index = cell[:, None] * cells + cell[None, :]
    flat = (np.arange(n)[:, None, None] * cells * cells + cell_index[None]) * bins + index
    hist = np.bincount(flat.ravel(), weights=magnitude.ravel(), minlength=n * cells * cells * bins)
    hist = hist.reshape(n, cells * cells * bins)
    return np.sqrt(hist / np.maximum(np.linalg.norm(hist, axis=1, keepdims=True), 1e-6))


# --------------------------------------------------------------------------------- public


#: Fewest regions per worker process (forking costs more than describing fewer).
_MIN_CHUNK = 1000
_JOB: tuple | None = None  # the job a forked worker reads (set only while a pool runs)


def _describe_forked(bounds: tuple[int, int]) -> tuple[np.ndarray, ...]:
    assert _JOB is not None
    return _describe_range(_JOB, *bounds)


def _describe_range(job: tuple, start: int, stop: int) -> tuple[np.ndarray, ...]:
    """Per-region work for regions start..stop-1: geometry, intensity and the resized stacks."""
    crops, masks, boxes, image_sizes, image_stats, config = job
    size, count = config.size, stop - start
    geometry = np.zeros((count, len(_GEOMETRY)), np.float32)
    orientation = np.zeros((count, len(_ORIENTATION)), np.float32)
    intensity = np.zeros((count, len(_INTENSITY)), np.float32)
    gray_stack = np.zeros((count, size, size), np.float32)
    inside_stack = np.zeros((count, size, size), np.float32)
    around_stack = np.zeros((count, size, size), np.float32)
    for row, i in enumerate(range(start, stop)):
        crop, mask = crops[i], np.asarray(masks[i])
        gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if crop.ndim == 3 else np.asarray(crop)
        if mask.shape != gray.shape:
            mask = cv2.resize(mask, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_NEAREST)
        stats = image_stats[i] if image_stats is not None else (float(gray.mean()), float(gray.std()))
        geometry[row] = _geometry(mask, boxes[i] if boxes is not None else None,
                                  image_sizes[i] if image_sizes is not None else None)
        orientation[row] = _orientation(mask)
        binary = (mask > 0).astype(np.uint8)
        values = (gray.astype(np.float32) - stats[0]) / max(stats[1], 1.0)
        ys, xs = np.nonzero(binary)
        if ys.size:
            distance = cv2.distanceTransform(1 - binary, cv2.DIST_L2, 3)  # outside: distance to the mask
            around_mask = _ring(binary, config.ring, ys, xs, distance)
            intensity[row] = _intensity(values, binary, ys, xs, distance, around_mask)
            around = around_mask.astype(np.float32)
        else:
            around = np.ones(binary.shape, np.float32)
        gray_stack[row] = cv2.resize(values, (size, size), interpolation=cv2.INTER_AREA)
        inside_stack[row] = cv2.resize(binary.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
        around_stack[row] = cv2.resize(around, (size, size), interpolation=cv2.INTER_AREA)
    empty = inside_stack.sum(axis=(1, 2)) == 0
    inside_stack[empty] = 1.0  # a region without mask pixels: the whole crop is "inside"
    texture = _texture(gray_stack, inside_stack, around_stack)
    hog = _hog(gray_stack, config.hog_cells, config.hog_bins)
    return geometry, intensity, texture.astype(np.float32), hog.astype(np.float32), orientation


def describe(
    crops: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    boxes: Sequence[tuple[int, int, int, int]] | None = None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    image_stats: Sequence[tuple[float, float]] | None = None,
    config: DescriptorConfig = DescriptorConfig(),
    workers: int | None = None,
) -> Descriptors:
    """Raw descriptors of crops (H x W x 3 or H x W uint8) and their 0/255 masks.

    boxes: each crop's place in its image, image_sizes: (height, width) of that image (for the
    image share and edge distance; default the crop), image_stats: (mean, std) of the image's
    gray values (intensity units; default the crop's own). workers: processes (None = usable cores;
    one below 2 x _MIN_CHUNK regions, and where the platform cannot fork).
    """
    if len(crops) != len(masks):
        raise ValueError(f"{len(crops)} crops but {len(masks)} masks")
    n = len(crops)
    job = (crops, masks, boxes, image_sizes, image_stats, config)
    workers = max(1, min(workers or _available_cores(), n // _MIN_CHUNK or 1))
    bounds = [(start, min(n, start + -(-n // workers))) for start in range(0, n, -(-n // workers))] if n else []
    if workers == 1 or not hasattr(os, "fork"):
        chunks = [_describe_range(job, *bound) for bound in bounds]
    else:  # per-region work is many small NumPy calls that hold the GIL: processes, not threads
        global _JOB
        _JOB = job
        try:
            with multiprocessing.get_context("fork").Pool(len(bounds)) as pool:
                chunks = pool.map(_describe_forked, bounds)
        finally:
            _JOB = None
    widths = [len(_GEOMETRY), len(_INTENSITY), _TEXTURE_WIDTH, config.hog_cells ** 2 * config.hog_bins,
              len(_ORIENTATION)]
    geometry, intensity, texture, hog, orientation = (np.concatenate([c[j] for c in chunks]) if chunks else
                                         np.zeros((0, width), np.float32) for j, width in enumerate(widths))
    parts = {"geometry": geometry, "intensity": intensity, "texture": texture, "hog": hog, "orientation": orientation}
    named = {"geometry": _GEOMETRY, "intensity": _INTENSITY, "orientation": _ORIENTATION}
    groups, start, names = {}, 0, []
    for name in DESCRIPTOR_GROUPS:
        width = parts[name].shape[1]
        groups[name] = slice(start, start + width)
        start += width
        names += named.get(name, [f"{name}{j}" for j in range(width)])
    values = np.concatenate([parts[name] for name in DESCRIPTOR_GROUPS], axis=1).astype(np.float32)
    return Descriptors(values=np.nan_to_num(values), groups=groups, names=names)


def describe_regions(regions: Sequence, images: Mapping[str, np.ndarray],
                     config: DescriptorConfig = DescriptorConfig()) -> Descriptors:
    """Raw descriptors of core.records.Region objects, with their images for edge and intensity units."""
    stats: dict[str, tuple[float, float]] = {}
    sizes = []
    for region in regions:
        if region.image not in stats:
            image = images[region.image]
            gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
            stats[region.image] = (float(gray.mean()), float(gray.std()))
        sizes.append(tuple(images[region.image].shape[:2]))
    return describe([r.image_crop for r in regions], [r.mask_crop for r in regions],
                    boxes=[r.box for r in regions], image_sizes=sizes,
                    image_stats=[stats[r.image] for r in regions], config=config)


def combine(descriptors: Descriptors, config: DescriptorConfig = DescriptorConfig(),
            groups: Sequence[str] = DESCRIPTOR_GROUPS, reference: Descriptors | None = None) -> np.ndarray:
    """Standardized, group-weighted descriptor matrix [N, D'] (each group's total variance = weight^2).

    reference: the set whose column means and spreads standardize these descriptors (default: their
    own); a classified region is placed in its run's space with the run's descriptors as reference.
    """
    blocks = []
    for name in groups:
        block = descriptors.group(name).astype(np.float64)
        if block.shape[1] == 0:
            continue
        source = block if reference is None else reference.group(name).astype(np.float64)
        centred = block - source.mean(axis=0, keepdims=True)
        scale = (source - source.mean(axis=0, keepdims=True)).std(axis=0, keepdims=True)
        scale[scale < 1e-8] = 1.0
        standardized = np.clip(centred / scale, -5.0, 5.0)
        blocks.append(standardized * config.weight(name) / np.sqrt(block.shape[1]))
    if not blocks:
        return np.zeros((len(descriptors.values), 0), np.float32)
    return np.concatenate(blocks, axis=1).astype(np.float32)
