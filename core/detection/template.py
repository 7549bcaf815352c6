"""Golden-template comparison, as PCB and print inspection lines do it.

When every image to inspect has its own defect-free reference of the same scene (paired by name,
`<id>_test.jpg` with `normal/<id>_temp.jpg`, or by a pairing CSV file), the anomaly map is the
difference from that reference after registration: the reference is shifted onto the image by
phase correlation (sub-pixel translation), both are lightly smoothed, brightness is matched, and a
pixel counts as different only by how far it lies outside the reference's values in a small
neighbourhood (a one- or two-pixel misalignment of an edge then costs nothing). The difference
is smoothed once more into the map.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from core.records import ROLE_NORMAL, ImageRecord, Manifest

#: Name endings that mark an image to inspect and a reference of the same scene (case-insensitive).
IMAGE_SUFFIXES = ("_test", "_inspect", "_image", "_img")
REFERENCE_SUFFIXES = ("_temp", "_template", "_ref", "_reference", "_golden", "_good", "_normal")


class PairingError(ValueError):
    """A pairing file that cannot be used; the message names the file, the row and the problem."""


def _key(stem: str, suffixes: Sequence[str]) -> str | None:
    lowered = stem.lower()
    for suffix in suffixes:
        if lowered.endswith(suffix):
            return lowered[: -len(suffix)]
    return None


def pair_by_name(targets: Sequence[ImageRecord], references: Sequence[ImageRecord]) -> dict[str, ImageRecord]:
    """Reference of each target whose id matches exactly one reference (`<id>_test` ~ `<id>_temp`).

    Only references named as such (`<id>_temp`, `_template`, `_ref`, ...) pair: plain reference
    sets such as MVTec's train/good/000.png are no one image's own reference.
    """
    by_key: dict[str, list[ImageRecord]] = {}
    for record in references:
        key = _key(Path(record.relpath).stem, REFERENCE_SUFFIXES)
        if key is not None:
            by_key.setdefault(key, []).append(record)
    pairs: dict[str, ImageRecord] = {}
    for record in targets:
        stem = Path(record.relpath).stem
        found = by_key.get(_key(stem, IMAGE_SUFFIXES) or stem.lower(), [])
        if len(found) == 1:
            pairs[record.relpath] = found[0]
    return pairs


def read_pairing(path: Path, manifest: Manifest) -> dict[str, ImageRecord]:
    """Pairs from a CSV file with columns image,reference (paths relative to the data set root)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PairingError(f"{path}: cannot be read as a CSV file ({error})") from error
    if rows and not {"image", "reference"} <= set(rows[0]):
        raise PairingError(f"{path}: needs the columns 'image' and 'reference', found {sorted(rows[0])}")
    known = {r.relpath: r for r in manifest.images}
    pairs: dict[str, ImageRecord] = {}
    for line, row in enumerate(rows, 2):
        image = (row.get("image") or "").strip().replace("\\", "/")
        reference = (row.get("reference") or "").strip().replace("\\", "/")
        if image not in known:
            raise PairingError(f"{path}, line {line}: image {image!r} is not an image of the data set")
        reference_path = Path(reference) if Path(reference).is_absolute() else manifest.root / reference
        if not reference_path.is_file():
            raise PairingError(f"{path}, line {line}: reference {reference!r} does not exist")
        pairs[image] = known.get(reference) or ImageRecord(reference_path, reference, ROLE_NORMAL)
    return pairs


def _gray(image: np.ndarray) -> np.ndarray:
    gray = image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    return gray / 255.0


def register(image: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """The reference shifted onto the image (phase correlation, sub-pixel) and the (dx, dy) applied."""
    window = cv2.createHanningWindow(image.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(reference.astype(np.float32), image.astype(np.float32), window)
    limit = 0.25 * min(image.shape)
    if abs(dx) > limit or abs(dy) > limit:  # an implausible shift: the scenes differ, keep as is
        dx = dy = 0.0
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    shifted = cv2.warpAffine(reference, matrix, image.shape[::-1], flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
    return shifted, (float(dx), float(dy))


def template_map(image: np.ndarray, reference: np.ndarray, smoothing: float = 1.0, tolerance: int = 1,
                 sigma: float = 2.0) -> np.ndarray:
    """Anomaly map of image against its reference (both H x W [x 3] uint8): registered difference."""
    target = _gray(image)
    golden = _gray(reference)
    if golden.shape != target.shape:
        golden = cv2.resize(golden, target.shape[::-1], interpolation=cv2.INTER_AREA)
    golden, _ = register(target, golden)
    if smoothing > 0:
        target = cv2.GaussianBlur(target, (0, 0), smoothing)
        golden = cv2.GaussianBlur(golden, (0, 0), smoothing)
    # brightness and contrast of the reference brought to the image's (exposure may change)
    golden = (golden - golden.mean()) / (golden.std() + 1e-6) * target.std() + target.mean()
    if tolerance > 0:
        kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
        upper, lower = cv2.dilate(golden, kernel), cv2.erode(golden, kernel)
        difference = np.maximum(np.maximum(target - upper, lower - target), 0.0)
    else:
        difference = np.abs(target - golden)
    if sigma > 0:
        difference = cv2.GaussianBlur(difference, (0, 0), sigma)
    return difference.astype(np.float32)
