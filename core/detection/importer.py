"""Importing anomaly maps made by any detector, matched to the images they belong to.

Maps are matched by relative path (extension ignored), else by the longest unique run of trailing
path parts (so `broken/000.npy` finds `test/broken/000.png`, and a unique stem finds its image).
Every problem is reported by file name; nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from core.imageio import ImageReadError, image_size
from core.detection.maps import read_map_file, resize_to
from core.records import ImageRecord, LoadProblem

#: Map file types that are imported (anomaly maps are scores, so lossy formats are left out).
IMPORT_EXTENSIONS = (".npy", ".png", ".tif", ".tiff")

#: Largest relative difference between a map's and its image's aspect ratio still accepted
#: (on top of one pixel of rounding in the map).
ASPECT_TOLERANCE = 0.02


class MapImportError(ValueError):
    """Anomaly maps that cannot be used as given; the message lists every problem by file."""

    def __init__(self, problems: Sequence[LoadProblem]) -> None:
        self.problems = list(problems)
        lines = "\n  ".join(str(p) for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) with the anomaly maps:\n  {lines}")


@dataclass
class MapImport:
    """Raw (not normalized) maps resized to their images, keyed by image relpath, plus problems."""

    maps: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[LoadProblem] = field(default_factory=list)


def _key_parts(relpath: str) -> tuple[str, ...]:
    return PurePosixPath(relpath).with_suffix("").parts


def _common_tail(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    count = 0
    for x, y in zip(reversed(a), reversed(b)):
        if x != y:
            break
        count += 1
    return count


def _match(map_parts: tuple[str, ...], image_parts: dict[str, tuple[str, ...]]) -> tuple[list[str], int]:
    """Images sharing the longest run of trailing path parts with the map (0 parts: none)."""
    best, chosen = 0, []
    for relpath, parts in image_parts.items():
        tail = _common_tail(map_parts, parts)
        if tail > best:
            best, chosen = tail, [relpath]
        elif tail == best and tail > 0:
            chosen.append(relpath)
    return chosen, best


def _aspect_matches(map_shape: tuple[int, int], image_shape: tuple[int, int]) -> bool:
    map_h, map_w = map_shape
    image_h, image_w = image_shape
    expected_w = image_w * map_h / image_h
    return abs(map_w - expected_w) <= max(1.0, ASPECT_TOLERANCE * expected_w)


def map_files(maps_dir: Path) -> list[Path]:
    """Every importable map file under maps_dir, sorted; hidden files are skipped."""
    return sorted(
        p for p in Path(maps_dir).rglob("*")
        if p.is_file() and p.suffix.lower() in IMPORT_EXTENSIONS and not p.name.startswith(".")
    )


def import_maps(images: Sequence[ImageRecord], maps_dir: Path, *, strict: bool = True) -> MapImport:
    """Read the anomaly map of every image from maps_dir, resized to the image's size (raw scores).

    Reports missing and extra maps, ambiguous matches, unreadable files, NaN/inf values, constant
    maps and maps whose aspect ratio differs from their image's. strict=True raises MapImportError
    listing all of them; strict=False returns the usable maps (a constant map is usable: it says
    "nothing anomalous") together with the problems.
    """
    maps_dir = Path(maps_dir)
    result = MapImport()
    if not maps_dir.is_dir():
        result.problems.append(LoadProblem(maps_dir, "maps folder does not exist"))
        if strict:
            raise MapImportError(result.problems)
        return result
    records = {r.relpath: r for r in images}
    image_parts = {relpath: _key_parts(relpath) for relpath in records}
    exact = {parts: relpath for relpath, parts in image_parts.items()}

    matched: dict[str, list[Path]] = {}
    for path in map_files(maps_dir):
        parts = _key_parts(path.relative_to(maps_dir).as_posix())
        if parts in exact:
            matched.setdefault(exact[parts], []).append(path)
            continue
        chosen, tail = _match(parts, image_parts)
        if not chosen:
            result.problems.append(LoadProblem(path, "extra map: matches no image (by relative path or file name)"))
        elif len(chosen) > 1:
            shown = ", ".join(sorted(chosen)[:4]) + (" ..." if len(chosen) > 4 else "")
            result.problems.append(LoadProblem(
                path, f"ambiguous map: its name matches {len(chosen)} images ({shown}); "
                "duplicate file stems, so lay the maps out like the images' relative paths"))
        else:
            matched.setdefault(chosen[0], []).append(path)

    for relpath, record in records.items():
        paths = matched.get(relpath, [])
        if not paths:
            result.problems.append(LoadProblem(record.path, f"missing map: no anomaly map found for image {relpath}"))
            continue
        if len(paths) > 1:
            names = ", ".join(p.relative_to(maps_dir).as_posix() for p in paths)
            result.problems.append(LoadProblem(record.path, f"duplicate maps: {len(paths)} maps match this image ({names})"))
            continue
        loaded = _load_one(paths[0], record, result.problems)
        if loaded is not None:
            result.maps[relpath] = loaded

    if strict and result.problems:
        raise MapImportError(result.problems)
    return result


def _load_one(path: Path, record: ImageRecord, problems: list[LoadProblem]) -> np.ndarray | None:
    try:
        array = read_map_file(path)
    except ImageReadError as error:
        problems.append(LoadProblem(path, f"unreadable map: {error.reason}"))
        return None
    bad = ~np.isfinite(array)
    if bad.any():
        problems.append(LoadProblem(path, f"invalid values: map holds {int(bad.sum())} NaN or infinite values"))
        return None
    try:
        size = record.size or image_size(record.path)
    except ImageReadError as error:
        problems.append(LoadProblem(record.path, f"unreadable image for map {path.name}: {error.reason}"))
        return None
    if not _aspect_matches(array.shape, size):
        problems.append(LoadProblem(
            path, f"aspect ratio differs: map is {array.shape[1]}x{array.shape[0]} (w x h) but its image "
            f"{record.relpath} is {size[1]}x{size[0]}"))
        return None
    low, high = float(array.min()), float(array.max())
    if low == high:
        problems.append(LoadProblem(path, f"constant map: every value is {low:g}, it carries no anomaly signal"))
    return resize_to(array, size)
