"""Anomaly map files and the global normalization of docs/method.md stage 1."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from core.imageio import ImageReadError, read_gray

MAP_EXTENSIONS = (".npy", ".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")


def read_map_file(path: Path | str) -> np.ndarray:
    """Read one anomaly map as a float32 2-D array of raw scores (PNG 8/16 bit, TIFF, NPY).

    Values keep their own scale (a uint8 PNG stays 0..255); normalization happens once over the
    whole set in normalize_global. Raises ImageReadError naming the file for unusable content.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ImageReadError(path, f"is not a readable .npy array ({error})") from error
    elif suffix in (".tif", ".tiff"):
        array = _read_tiff(path)
    else:
        array = read_gray(path)
    array = np.asarray(array)
    if array.ndim == 3 and 1 in array.shape:
        array = np.squeeze(array)
    if array.ndim != 2:
        raise ImageReadError(path, f"is not a 2-D map (shape {tuple(array.shape)})")
    if array.size == 0:
        raise ImageReadError(path, "is an empty map")
    if not np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
        array = array.astype(np.float32)
    return array.astype(np.float32, copy=False)


def _read_tiff(path: Path) -> np.ndarray:
    """tifffile (float maps), else OpenCV; when both fail the error names both causes."""
    try:
        import tifffile

        return tifffile.imread(str(path))
    except Exception as tiff_error:  # noqa: BLE001 - fall back to OpenCV for what tifffile cannot read
        try:
            return read_gray(path)
        except ImageReadError as error:
            raise ImageReadError(path, f"{error.reason} (tifffile: {type(tiff_error).__name__}: {tiff_error})") \
                from tiff_error


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise ValueError naming the map when it holds NaN or infinite values."""
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"{name}: map holds {int(bad.sum())} NaN or infinite values")


def resize_to(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float map to (height, width) bilinearly; returns float32."""
    height, width = size
    array = np.asarray(array, dtype=np.float32)
    if array.shape == (height, width):
        return array
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_LINEAR)


def global_range(maps: Sequence[np.ndarray]) -> tuple[float, float]:
    """(min, max) over every map of the set: the one range normalize_global scales them with."""
    return min(float(np.min(a)) for a in maps), max(float(np.max(a)) for a in maps)


def on_global_scale(values: Sequence[float], maps: Sequence[np.ndarray]) -> list[float]:
    """Raw map values (e.g. normal images' peaks) on the 0..255 scale normalize_global gives these maps, clipped."""
    if not len(maps) or not len(values):
        return []
    low, high = global_range(maps)
    if high <= low:
        return [0.0 for _ in values]
    return [float(np.clip((float(v) - low) / (high - low) * 255.0, 0.0, 255.0)) for v in values]


def to_uint8(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """One raw map on the 0..255 scale of the range (low, high); zeros when the range is empty."""
    array = np.asarray(array, dtype=np.float64)
    if high - low <= 0:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.clip(np.rint((array - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


def normalize_global(maps: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Bring raw maps to uint8 0..255 with ONE min/max over the whole set (never per image).

    Per-image scaling would make every map's maximum 255 and destroy the spread of maxima
    that MEBin's search range is built on. A set whose values are all equal maps to zeros.
    A stored map is brought back to that scale with to_uint8 and the set's stored global_range.
    """
    if len(maps) == 0:
        return []
    for index, array in enumerate(maps):
        check_finite(np.asarray(array), f"map {index}")
    low, high = global_range(maps)
    return [to_uint8(array, low, high) for array in maps]
