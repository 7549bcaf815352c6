"""Crop thumbnails with the mask outline drawn on them, and images with their region boxes.

Thumbnails are cached per file (st.cache_data) so paging a gallery of a 5,000-region run only
decodes the crops on screen once. Missing or unreadable files give a gray placeholder rather
than an error, with the reason in the caption.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import streamlit as st

from core.imageio import ImageReadError, read_gray, read_image

#: Edge of a gallery thumbnail in pixels.
THUMB_SIZE = 128
#: Color of the mask outline on a crop (RGB): a saturated yellow that shows on gray metal.
OUTLINE_COLOR = (255, 214, 0)
#: Gray of a placeholder for a missing crop.
PLACEHOLDER_GRAY = 205


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """'#1f77b4' (or '#abc') -> (31, 119, 180); anything else -> mid gray."""
    text = (color or "").strip().lstrip("#")
    if len(text) == 3:
        text = "".join(ch * 2 for ch in text)
    try:
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    except (ValueError, IndexError):
        return (127, 127, 127)


def placeholder(size: int = THUMB_SIZE) -> np.ndarray:
    """A plain gray square for a crop that cannot be shown."""
    image = np.full((size, size, 3), PLACEHOLDER_GRAY, dtype=np.uint8)
    cv2.line(image, (0, 0), (size - 1, size - 1), (170, 170, 170), 1)
    cv2.line(image, (0, size - 1), (size - 1, 0), (170, 170, 170), 1)
    return image


def outline_crop(crop: np.ndarray, mask: np.ndarray | None, size: int = THUMB_SIZE,
                 color: tuple[int, int, int] = OUTLINE_COLOR) -> np.ndarray:
    """Fit a crop into a size x size square (aspect kept, padded) with the mask's outline drawn.

    The outline is drawn after resizing so it stays one or two pixels wide at any crop size.
    """
    height, width = crop.shape[:2]
    scale = size / max(height, width, 1)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(crop, (new_w, new_h), interpolation=interpolation)
    if mask is not None and mask.size:
        small = cv2.resize((mask > 0).astype(np.uint8) * 255, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        resized = np.ascontiguousarray(resized)
        cv2.drawContours(resized, contours, -1, color, 2 if size >= 96 else 1)
    out = np.full((size, size, 3), 255, dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


@st.cache_data(max_entries=20_000, show_spinner=False)
def thumbnail(crop_path: str | None, mask_path: str | None, size: int = THUMB_SIZE) -> np.ndarray:
    """The cached thumbnail of one region: its crop with the mask outline (placeholder if missing)."""
    if not crop_path or not Path(crop_path).is_file():
        return placeholder(size)
    try:
        crop = read_image(crop_path)
    except (ImageReadError, OSError):
        return placeholder(size)
    mask = None
    if mask_path and Path(mask_path).is_file():
        try:
            mask = read_gray(mask_path)
        except (ImageReadError, OSError):
            mask = None
    return outline_crop(crop, mask, size)


def png_data_uri(image: np.ndarray) -> str:
    """An RGB uint8 image as a data:image/png URI (for st.column_config.ImageColumn)."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - encoding a uint8 array does not fail
        raise ValueError("could not encode a thumbnail as PNG")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


@st.cache_data(max_entries=5_000, show_spinner=False)
def thumbnail_uri(crop_path: str | None, mask_path: str | None, size: int = 64) -> str:
    """Cached data URI of a small thumbnail (cluster list sample crops)."""
    return png_data_uri(thumbnail(crop_path, mask_path, size))


def draw_boxes(image: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], colors: Sequence[str],
               labels: Sequence[str], dashed: Sequence[bool] | None = None) -> np.ndarray:
    """An image with each region's box in its cluster color and a short label above it.

    `dashed[i]` marks a region that is normal / a false detection (drawn thin and gray).
    Labels are drawn as pixels, never as HTML, so any cluster name is safe here.
    """
    out = np.ascontiguousarray(image.copy())
    height, width = out.shape[:2]
    thickness = max(1, round(max(height, width) / 300))
    font_scale = max(0.35, max(height, width) / 900)
    for i, (box, color, label) in enumerate(zip(boxes, colors, labels)):
        x0, y0, x1, y1 = (int(v) for v in box)
        rgb = hex_to_rgb(color)
        normal = bool(dashed[i]) if dashed is not None else False
        if normal:
            rgb = (150, 150, 150)
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), rgb, thickness if normal else thickness + 1)
        text = label.encode("ascii", "replace").decode("ascii")[:40]
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y0 - 3 if y0 - th - base - 3 >= 0 else min(height - 1, y1 + th + 3)
        cv2.rectangle(out, (x0, ty - th - base), (min(width - 1, x0 + tw + 2), ty + base - 1), rgb, -1)
        luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
        ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(out, text, (x0 + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink, 1, cv2.LINE_AA)
    return out


@st.cache_data(max_entries=64, show_spinner=False)
def load_image(path: str) -> np.ndarray | None:
    """A full image for the image view (None when it cannot be read)."""
    try:
        return read_image(path)
    except (ImageReadError, OSError):
        return None
