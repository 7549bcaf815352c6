"""MEBin, main element binarization (docs/method.md stage 2): one mask, threshold and count per map.

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
     parallel on a thread pool; the kernels are in core.regions.kernels).

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

from core.config import MEBinConfig
from core.regions.kernels import analyze

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
                f"map {index}: expected dtype uint8 (0..255, see core.detection.maps.normalize_global), "
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


# ----------------------------------------------------------------------------- fast path (kernels: core.regions.kernels)


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
    normalized, counts, num_anomalies, start, end = analyze(array, eroded, lut32, cuts, min_level, min_interval_len)
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
