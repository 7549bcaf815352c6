"""Reading and writing images and maps robustly (unicode paths, 8/16 bit, gray or color)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _decode(path: Path, flags: int) -> np.ndarray:
    # np.fromfile + imdecode instead of cv2.imread: imread cannot open non-ASCII paths on some platforms.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(path, f"cannot be read ({error.strerror or error})") from error
    if data.size == 0:
        raise ImageReadError(path, "is empty (0 bytes)")
    array = cv2.imdecode(data, flags)
    if array is None:
        raise ImageReadError(path, "is not a readable image (corrupt, truncated or not an image format)")
    return array


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Bring 8/16-bit or float image data to uint8 by its type's range (16 bit: >> 8)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(array)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(array) * scale, 0, 255).astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


def read_image(path: Path | str) -> np.ndarray:
    """Read an image as H x W x 3 uint8 RGB, whatever its depth and channel count."""
    path = Path(path)
    array = _decode(path, cv2.IMREAD_UNCHANGED)
    array = to_uint8(array)
    if array.ndim == 2:
        array = cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    elif array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    elif array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    else:
        raise ImageReadError(path, f"has an unsupported channel count {array.shape[2]}")
    return np.ascontiguousarray(array)


def read_gray(path: Path | str) -> np.ndarray:
    """Read an image as a 2-D array keeping its depth (uint8 or uint16); color is converted to gray."""
    path = Path(path)
    array = _decode(path, cv2.IMREAD_UNCHANGED)
    if array.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if array.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        array = cv2.cvtColor(array, code)
    return array


def image_size(path: Path | str) -> tuple[int, int]:
    """(height, width) of an image file."""
    array = _decode(Path(path), cv2.IMREAD_UNCHANGED)
    return int(array.shape[0]), int(array.shape[1])


def write_image(path: Path | str, array: np.ndarray) -> None:
    """Write an RGB (H x W x 3) or gray (H x W) array; the format follows the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(path.suffix or ".png", array)
    if not ok:
        raise ImageReadError(path, "could not be encoded")
    encoded.tofile(str(path))
