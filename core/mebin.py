"""MEBin, main element binarization (METHOD.md stage 2): one mask, threshold and count per map.

Two implementations with identical output:

- ``binarize_reference``: the plain per-threshold OpenCV loop (threshold, erode, label, 64 times
  per map). Slow and obviously right; kept as the test oracle and the benchmark baseline.
- ``binarize``: the product path. It relies on three exact facts:
  1. every map is uint8, so the normalized map is a lookup ``lut[v]`` that is non-decreasing in
     ``v``; ``normalized > t`` is therefore ``map >= k_t`` for an integer cut ``k_t``;
  2. erosion with a flat kernel commutes with thresholding, so the map is min-filtered once
     (``cv2.erode`` on the grayscale map, same kernel, anchor and border as the binary case:
     OpenCV's default erode border is the dtype maximum, i.e. "inside the set" for every cut);
  3. the 64 binary sets are nested, so one union-find sweep over the pixels in descending value
     order yields the component count of every level at once (numba, GIL released, maps run in
     parallel on a thread pool).

Degenerate set: when every map has the same maximum (s_max == s_min, e.g. a single map, or all
maps constant) the reference divides 0 by 0; its normalized map is NaN or 0 everywhere, no
threshold selects anything, every count is 0 and the result is "no anomaly" (threshold 255,
empty mask). Both paths reproduce that without dividing by zero: ``normalized`` is all zeros.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import cv2
import numpy as np
from numba import njit

from core.config import MEBinConfig

__all__ = ["MEBinResult", "at_threshold", "binarize", "binarize_otsu", "binarize_reference", "mask_at_threshold",
           "normalize_to_range", "search_range", "stable_interval", "to_map_scale"]


@dataclass(frozen=True, eq=False)
class MEBinResult:
    """MEBin output for one map."""

    mask: np.ndarray  # uint8 0/255, erode(map > threshold), the map's shape
    threshold: int  # t_orig, on the map's own 0..255 scale; 255 when nothing is stable
    num_anomalies: int  # estimated number of anomalies (component count of the chosen run), 0 if none
    counts: np.ndarray  # int64 component count per swept threshold, highest threshold first
    sweep_thresholds: np.ndarray  # int64 swept thresholds t on the normalized scale (255, 251, ...)
    interval: tuple[int, int] | None  # (start, end) indices into counts of the chosen stable run
    normalized: np.ndarray  # float32 map on the normalized 0..255 scale of step 2 (crop scores)


# ----------------------------------------------------------------------------- shared steps


def _validate(maps: Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(maps, np.ndarray) and maps.ndim == 2:
        raise ValueError("binarize takes a sequence of 2-D maps, not one map: pass [map]")
    try:
        count = len(maps)
    except TypeError as error:
        raise ValueError("binarize takes a sequence of 2-D uint8 maps") from error
    if count == 0:
        raise ValueError("binarize got no maps: the sequence is empty")
    checked = []
    for index, array in enumerate(maps):
        if not isinstance(array, np.ndarray):
            raise ValueError(f"map {index}: expected a numpy array, got {type(array).__name__}")
        if array.ndim != 2:
            raise ValueError(f"map {index}: expected a 2-D map, got shape {tuple(array.shape)}")
        if array.dtype != np.uint8:
            raise ValueError(
                f"map {index}: expected dtype uint8 (0..255, see core.maps.normalize_global), "
                f"got {array.dtype}"
            )
        if array.size == 0:
            raise ValueError(f"map {index}: empty map of shape {tuple(array.shape)}")
        checked.append(np.ascontiguousarray(array))
    return checked


def _check_settings(sample_rate: int, min_interval_len: int, kernel_size: int) -> None:
    if int(sample_rate) != sample_rate or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate}")
    if int(min_interval_len) != min_interval_len or min_interval_len < 1:
        raise ValueError(f"min_interval_len must be a positive integer, got {min_interval_len}")
    if int(kernel_size) != kernel_size or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive integer, got {kernel_size}")


def search_range(maps: Sequence[np.ndarray]) -> tuple[int, int]:
    """Step 1: (s_min, s_max) = smallest and largest per-map maximum, as Python ints."""
    maxima = [int(array.max()) for array in maps]
    return min(maxima), max(maxima)


def _sweep_thresholds(sample_rate: int) -> np.ndarray:
    """Step 3: t = 255, 255 - r, ... while t > 0."""
    return np.arange(255, 0, -int(sample_rate), dtype=np.int64)


def _normalize_lut(s_min: int, s_max: int) -> np.ndarray:
    """Step 2 as a float64 table over the 256 uint8 values (0 below s_min; zeros if s_max == s_min)."""
    values = np.arange(256, dtype=np.float64)
    if s_max == s_min:
        return np.zeros(256, dtype=np.float64)
    lut = (values - s_min) / (s_max - s_min) * 255.0
    return np.where(values < s_min, 0.0, lut)


def stable_interval(counts: Sequence[int], min_interval_len: int) -> tuple[int, tuple[int, int]] | None:
    """Step 4: (estimated count, (start, end)) of the chosen stable run, or None if there is none.

    Runs are maximal runs of equal non-zero counts of length >= min_interval_len. Per count value
    the longest run is kept (on equal length the later one, as the reference's stable sort does);
    the value whose run is longest wins, the first value to appear on ties.
    """
    longest: dict[int, tuple[int, int]] = {}
    n = len(counts)
    start = 0
    while start < n:
        end = start
        while end + 1 < n and counts[end + 1] == counts[start]:
            end += 1
        value = int(counts[start])
        if value != 0 and end - start + 1 >= min_interval_len:
            best = longest.get(value)
            if best is None or end - start >= best[1] - best[0]:
                longest[value] = (start, end)
        start = end + 1
    if not longest:
        return None
    # max() keeps the first maximum in insertion order = order of first appearance.
    value = max(longest, key=lambda key: longest[key][1] - longest[key][0])
    return value, longest[value]


def _original_threshold(index: int, sample_rate: int, s_min: int, s_max: int) -> int:
    return to_map_scale(255 - int(index) * int(sample_rate), s_min, s_max)


def to_map_scale(threshold: int, s_min: int, s_max: int) -> int:
    """Step 5: a threshold on the normalized scale -> the map's own 0..255 scale.

    In Python ints and floats (never uint8 scalars: NumPy 2 would wrap mod 256).
    """
    return int(int(threshold) * (int(s_max) - int(s_min)) / 255 + int(s_min))


def _choose(counts: np.ndarray, min_interval_len: int, sample_rate: int, s_min: int, s_max: int):
    chosen = stable_interval(counts.tolist(), min_interval_len)
    if chosen is None:
        return 255, 0, None
    num_anomalies, interval = chosen
    return _original_threshold(interval[1], sample_rate, s_min, s_max), num_anomalies, interval


def _kernel(kernel_size: int) -> np.ndarray:
    return np.ones((kernel_size, kernel_size), dtype=np.uint8)


# ----------------------------------------------------------------------------- oracle


def binarize_reference(
    maps: Sequence[np.ndarray], config: MEBinConfig = MEBinConfig()
) -> list[MEBinResult]:
    """MEBin the plain way: per threshold, binarize, cv2.erode, cv2.connectedComponents (oracle)."""
    maps = _validate(maps)
    _check_settings(config.sample_rate, config.min_interval_len, config.kernel_size)
    s_min, s_max = search_range(maps)
    thresholds = _sweep_thresholds(config.sample_rate)
    kernel = _kernel(config.kernel_size)
    results = []
    for array in maps:
        values = array.astype(np.float64)
        if s_max == s_min:
            normalized = np.zeros_like(values)
        else:
            normalized = np.where(values < s_min, 0.0, (values - s_min) / (s_max - s_min) * 255.0)
        counts = np.zeros(len(thresholds), dtype=np.int64)
        for position, t in enumerate(thresholds):
            binary = np.where(normalized > t, 255, 0).astype(np.uint8)
            if config.erode:
                binary = cv2.erode(binary, kernel)
            num_labels, _ = cv2.connectedComponents(binary, connectivity=8)
            counts[position] = num_labels - 1
        threshold, num_anomalies, interval = _choose(
            counts, config.min_interval_len, config.sample_rate, s_min, s_max
        )
        mask = np.where(array > threshold, 255, 0).astype(np.uint8)
        if config.erode:
            mask = cv2.erode(mask, kernel)
        results.append(
            MEBinResult(
                mask=mask,
                threshold=threshold,
                num_anomalies=num_anomalies,
                counts=counts,
                sweep_thresholds=thresholds.copy(),
                interval=interval,
                normalized=normalized.astype(np.float32),
            )
        )
    return results


# ----------------------------------------------------------------------------- fast path


# The kernels index with unsigned integers: numba then skips its negative-index wraparound
# check, which otherwise doubles the cost of the neighbour loads. Keep every operand uint64
# (mixing with signed ints would promote to float64).
_INACTIVE = np.uint32(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def _find(parent: np.ndarray, node: np.uint64) -> np.uint64:
    while np.uint64(parent[node]) != node:
        grand = parent[np.uint64(parent[node])]
        parent[node] = grand
        node = np.uint64(grand)
    return node


@njit(cache=True, nogil=True, inline="always")
def _join(parent: np.ndarray, root: np.uint64, neighbour: np.uint64, merged: int) -> tuple:
    """Union the set of ``root`` into the set of ``neighbour``; returns (new root, merges so far)."""
    other = _find(parent, neighbour)
    if other == root:
        return root, merged
    parent[root] = np.uint32(other)
    return other, merged + 1


def _arc_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per 8-bit ring pattern of active neighbours: how many arcs, and the first bit of each."""
    counts = np.zeros(256, dtype=np.int64)
    starts = np.zeros((256, 4), dtype=np.int64)
    for pattern in range(256):
        if pattern == 0xFF:
            counts[pattern], starts[pattern, 0] = 1, 0
            continue
        for bit in range(8):
            previous = (bit - 1) % 8
            if pattern >> bit & 1 and not pattern >> previous & 1:
                starts[pattern, counts[pattern]] = bit
                counts[pattern] += 1
    return counts, starts


_ARC_COUNT, _ARC_STARTS = _arc_tables()


def _level_counts(image: np.ndarray, min_level: int) -> np.ndarray:
    """counts[L] = number of 8-connected components of {image >= L} for L in min_level..255."""
    return _level_counts_kernel(image, min_level, _ARC_COUNT, _ARC_STARTS)


@njit(cache=True, nogil=True)
def _level_counts_kernel(
    image: np.ndarray, min_level: int, arc_count: np.ndarray, arc_starts: np.ndarray
) -> np.ndarray:
    """counts[L] = number of 8-connected components of {image >= L} for L in min_level..255.

    Union-find over the pixels in descending value order (counting sort, raster order within a
    level) on the bounding box of those pixels padded by one inactive pixel, so neighbours need
    no bounds checks. Entries below min_level stay 0.
    """
    counts = np.zeros(257, dtype=np.int64)
    if min_level > 255:
        return counts
    # Bounding box of the pixels that ever become active: anomaly maps are mostly background
    # below the lowest cut, and the row maxima are a cheap vectorized scan.
    full_height, full_width = image.shape
    top, bottom, left, right = full_height, -1, full_width, -1
    for y in range(full_height):
        row_max = 0
        for x in range(full_width):
            row_max = max(row_max, image[y, x])
        if row_max >= min_level:
            top = min(top, y)
            bottom = y
            for x in range(full_width):
                if image[y, x] >= min_level:
                    left = min(left, x)
                    break
            for x in range(full_width - 1, -1, -1):
                if image[y, x] >= min_level:
                    right = max(right, x)
                    break
    if bottom < 0:
        return counts
    height, width = bottom - top + 1, right - left + 1
    parent = np.full((height + 2) * (width + 2), _INACTIVE, dtype=np.uint32)
    histogram = np.zeros(257, dtype=np.int64)
    for y in range(height):
        for x in range(width):
            value = image[top + y, left + x]
            if value >= min_level:
                histogram[value] += 1
    fill = np.zeros(257, dtype=np.int64)
    position = 0
    for level in range(255, min_level - 1, -1):
        fill[level] = position
        position += histogram[level]
    order = np.empty(position, dtype=np.uint32)
    for y in range(height):
        row = (y + 1) * (width + 2) + 1
        for x in range(width):
            value = image[top + y, left + x]
            if value >= min_level:
                order[fill[value]] = row + x
                fill[value] += 1
    # Neighbours in ring order UL, U, UR, R, DR, D, DL, L. Ring-consecutive neighbours touch
    # (8-connectivity), so active ones already share a set and only the first neighbour of each
    # active arc needs a union: _ARC_STARTS lists those per 8-bit activity pattern, which keeps
    # the loop nearly branch-free (smooth maps almost always have one arc).
    stride = width + 2
    deltas = np.array(
        [-stride - 1, -stride, -stride + 1, 1, stride + 1, stride, stride - 1, -1], dtype=np.int64
    ).view(np.uint64)  # two's complement: uint64 addition wraps to the right neighbour
    d0, d1, d2, d3 = deltas[0], deltas[1], deltas[2], deltas[3]
    d4, d5, d6, d7 = deltas[4], deltas[5], deltas[6], deltas[7]
    arc_delta = np.empty(1024, dtype=np.uint64)  # arc_delta[4 * pattern + j]: j-th arc start
    for pattern in range(256):
        for j in range(4):
            arc_delta[pattern * 4 + j] = deltas[arc_starts[pattern, j]]
    components = 0
    index = 0
    for level in range(255, min_level - 1, -1):
        stop = index + histogram[level]
        while index < stop:
            pixel = np.uint64(order[index])
            index += 1
            parent[pixel] = np.uint32(pixel)
            components += 1
            pattern = (
                (parent[pixel + d0] != _INACTIVE) * 1
                | (parent[pixel + d1] != _INACTIVE) * 2
                | (parent[pixel + d2] != _INACTIVE) * 4
                | (parent[pixel + d3] != _INACTIVE) * 8
                | (parent[pixel + d4] != _INACTIVE) * 16
                | (parent[pixel + d5] != _INACTIVE) * 32
                | (parent[pixel + d6] != _INACTIVE) * 64
                | (parent[pixel + d7] != _INACTIVE) * 128
            )
            root = pixel
            merged = 0
            first = np.uint64(pattern) * np.uint64(4)
            for j in range(arc_count[np.uint64(pattern)]):
                root, merged = _join(parent, root, pixel + arc_delta[first + np.uint64(j)], merged)
            components -= merged
        counts[level] = components
    return counts


@njit(cache=True, nogil=True)
def _stable_interval_kernel(counts: np.ndarray, min_interval_len: int) -> tuple:
    """``stable_interval`` in numba: (value, start, end), or (0, -1, -1) when there is none."""
    n = counts.shape[0]
    values = np.zeros(n, dtype=np.int64)  # count values in order of first qualifying run
    starts = np.zeros(n, dtype=np.int64)
    ends = np.zeros(n, dtype=np.int64)
    used = 0
    start = 0
    while start < n:
        end = start
        while end + 1 < n and counts[end + 1] == counts[start]:
            end += 1
        value = counts[start]
        if value != 0 and end - start + 1 >= min_interval_len:
            slot = used
            for k in range(used):
                if values[k] == value:
                    slot = k
                    break
            if slot == used:
                values[slot], starts[slot], ends[slot] = value, start, end
                used += 1
            elif end - start >= ends[slot] - starts[slot]:
                starts[slot], ends[slot] = start, end
        start = end + 1
    if used == 0:
        return 0, -1, -1
    best = 0
    for k in range(1, used):
        if ends[k] - starts[k] > ends[best] - starts[best]:
            best = k
    return values[best], starts[best], ends[best]


@njit(cache=True, nogil=True)
def _analyze(
    image: np.ndarray,
    eroded: np.ndarray,
    lut32: np.ndarray,
    cuts: np.ndarray,
    min_level: int,
    min_interval_len: int,
    arc_count: np.ndarray,
    arc_starts: np.ndarray,
) -> tuple:
    """Steps 2-4 for one map, GIL-free: (normalized, counts, num_anomalies, start, end)."""
    normalized = np.empty(image.shape, dtype=np.float32)
    height, width = image.shape
    for y in range(height):
        for x in range(width):
            normalized[y, x] = lut32[image[y, x]]
    level_counts = _level_counts_kernel(eroded, min_level, arc_count, arc_starts)
    counts = np.empty(cuts.shape[0], dtype=np.int64)
    for i in range(cuts.shape[0]):
        counts[i] = level_counts[cuts[i]]
    num_anomalies, start, end = _stable_interval_kernel(counts, min_interval_len)
    return normalized, counts, num_anomalies, start, end


def _binarize_one(
    array: np.ndarray,
    lut32: np.ndarray,
    cuts: np.ndarray,
    min_level: int,
    thresholds: np.ndarray,
    kernel: np.ndarray | None,
    sample_rate: int,
    min_interval_len: int,
    s_min: int,
    s_max: int,
) -> MEBinResult:
    eroded = cv2.erode(array, kernel) if kernel is not None else array
    normalized, counts, num_anomalies, start, end = _analyze(
        array, eroded, lut32, cuts, min_level, min_interval_len, _ARC_COUNT, _ARC_STARTS
    )
    if start < 0:
        threshold, num_anomalies, interval = 255, 0, None
    else:
        interval = (int(start), int(end))
        threshold = _original_threshold(interval[1], sample_rate, s_min, s_max)
    if threshold >= 255:
        mask = np.zeros(array.shape, dtype=np.uint8)
    else:
        _, mask = cv2.threshold(eroded, threshold, 255, cv2.THRESH_BINARY)
    return MEBinResult(
        mask=mask,
        threshold=threshold,
        num_anomalies=int(num_anomalies),
        counts=counts,
        sweep_thresholds=thresholds.copy(),
        interval=interval,
        normalized=normalized,
    )


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def binarize(
    maps: Sequence[np.ndarray],
    *,
    sample_rate: int = 4,
    min_interval_len: int = 4,
    erode: bool = True,
    kernel_size: int = 6,
    workers: int | None = None,
) -> list[MEBinResult]:
    """MEBin over a set of 2-D uint8 maps (any shapes), one result per map, in input order.

    Output is identical to ``binarize_reference``. ``workers`` threads share the maps
    (None: all usable cores, 1: this thread only). Settings can come from a config:
    ``binarize(maps, **dataclasses.asdict(MEBinConfig()))``. Raises ValueError naming the
    index of a bad map (not 2-D, not uint8, empty) or when no maps are given.
    """
    maps = _validate(maps)
    _check_settings(sample_rate, min_interval_len, kernel_size)
    s_min, s_max = search_range(maps)
    thresholds = _sweep_thresholds(sample_rate)
    lut = _normalize_lut(s_min, s_max)
    lut32 = lut.astype(np.float32)
    # normalized > t  <=>  map >= cut(t), the first uint8 value whose table entry exceeds t
    # (256: no value does, the set is empty and its count 0).
    cuts = np.searchsorted(lut, thresholds.astype(np.float64), side="right").astype(np.int64)
    min_level = int(cuts.min())
    kernel = _kernel(kernel_size) if erode else None
    settings = (lut32, cuts, min_level, thresholds, kernel, sample_rate, min_interval_len, s_min, s_max)

    if workers is None:
        workers = _available_cores()
    workers = max(1, min(int(workers), len(maps)))
    if workers == 1:
        return [_binarize_one(array, *settings) for array in maps]

    # Interleaved chunks balance the load when map sizes vary along the sequence.
    chunks = [list(range(start, len(maps), workers)) for start in range(workers)]

    def run(indices: list[int]) -> list[tuple[int, MEBinResult]]:
        return [(i, _binarize_one(maps[i], *settings)) for i in indices]

    results: list[MEBinResult | None] = [None] * len(maps)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk in pool.map(run, chunks):
            for i, result in chunk:
                results[i] = result
    return results  # type: ignore[return-value]


def mask_at_threshold(
    map_u8: np.ndarray, threshold: int, *, erode: bool = True, kernel_size: int = 6
) -> tuple[np.ndarray, int]:
    """MEBin's final mask at a threshold chosen by hand (step 6: erode(map > t)) and its component count.

    Used when an engineer overrides the threshold of one image; 255 or more means "nothing".
    """
    if map_u8.dtype != np.uint8 or map_u8.ndim != 2:
        raise ValueError(f"map must be a 2-D uint8 array, got {map_u8.dtype} with shape {map_u8.shape}")
    if threshold >= 255:
        return np.zeros(map_u8.shape, np.uint8), 0
    # Eroding the gray map then thresholding equals thresholding then eroding (flat kernel).
    source = cv2.erode(map_u8, _kernel(kernel_size)) if erode else map_u8
    mask = np.where(source > int(threshold), 255, 0).astype(np.uint8)
    count = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)[0] - 1
    return mask, int(count)


def at_threshold(result: MEBinResult, map_u8: np.ndarray, threshold: int, config: MEBinConfig) -> MEBinResult:
    """A binarization result with an engineer's threshold instead of the chosen one (evidence kept)."""
    mask, count = mask_at_threshold(map_u8, threshold, erode=config.erode, kernel_size=config.kernel_size)
    return replace(result, mask=mask, threshold=int(threshold), num_anomalies=count)


def normalize_to_range(map_u8: np.ndarray, s_min: int, s_max: int) -> np.ndarray:
    """Step 2 of one map with a stored search range (float32, as MEBinResult.normalized)."""
    return _normalize_lut(int(s_min), int(s_max)).astype(np.float32)[map_u8]


def binarize_otsu(maps: Sequence[np.ndarray], *, kernel_size: int = 6) -> list[MEBinResult]:
    """Otsu's threshold per map (the paper's ablation), eroded like MEBin; count = components.

    No sweep: counts and sweep_thresholds are empty, interval is None; normalized is the map itself.
    """
    kernel = _kernel(kernel_size)
    results = []
    for array in _validate(maps):
        threshold, _ = cv2.threshold(array, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        mask = cv2.erode(np.where(array > threshold, 255, 0).astype(np.uint8), kernel)
        count = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)[0] - 1
        results.append(MEBinResult(mask=mask, threshold=int(threshold), num_anomalies=int(count),
                                   counts=np.zeros(0, np.int64), sweep_thresholds=np.zeros(0, np.int64),
                                   interval=None, normalized=array.astype(np.float32)))
    return results
