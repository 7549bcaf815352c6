"""MEBin's fast path in numba: component counts of all nested level sets in one union-find sweep.

``core.regions.mebin.binarize`` calls ``analyze`` once per map (GIL released, so maps run in parallel on
threads); ``level_counts`` and ``stable_interval_kernel`` are exposed for the tests that check them
against OpenCV's labelling and ``core.regions.mebin.stable_interval``. Output equals the oracle
``core.regions.mebin.binarize_reference`` (see core/regions/mebin.py for the three facts it relies on).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["analyze", "level_counts", "stable_interval_kernel"]


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


def level_counts(image: np.ndarray, min_level: int) -> np.ndarray:
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
def stable_interval_kernel(counts: np.ndarray, min_interval_len: int) -> tuple:
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
def _analyze_kernel(
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
    num_anomalies, start, end = stable_interval_kernel(counts, min_interval_len)
    return normalized, counts, num_anomalies, start, end


def analyze(
    image: np.ndarray, eroded: np.ndarray, lut32: np.ndarray, cuts: np.ndarray, min_level: int, min_interval_len: int
) -> tuple:
    """Steps 2-4 for one map, GIL-free: (normalized, counts, num_anomalies, start, end); start < 0: no run."""
    return _analyze_kernel(image, eroded, lut32, cuts, min_level, min_interval_len, _ARC_COUNT, _ARC_STARTS)
