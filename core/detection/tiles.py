"""Large images cut into overlapping tiles, detected tile by tile and stitched back.

The detectors scale an image so that its shorter side is `image_size` pixels. A large image
(say 4096 x 4096 at image_size 224) would shrink 18-fold and a defect of a few pixels would
vanish. An image whose shorter side exceeds image_size x tile_downscale is therefore cut into
square tiles of that side (overlapping by an eighth), each tile is detected as an image of its
own (fitted on the tiles of the references, scored like any image), and the tile maps are put
back in place, the larger value where tiles overlap. A strip of 4096 x 256 is not tiled: its
shorter side is kept whole, so it is processed at nearly its native resolution.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.detection.config import DetectorConfig
from core.imageio import image_size, read_image
from core.records import ImageRecord

Box = tuple[int, int, int, int]  # x0, y0, x1, y1


@dataclass(frozen=True)
class Piece:
    """One tile of a large image, detected as an image of its own."""

    record: ImageRecord
    box: Box

    @property
    def relpath(self) -> str:
        return f"{self.record.relpath}#tile{self.box[0]},{self.box[1]}"

    @property
    def path(self) -> Path:
        return self.record.path


def _starts(length: int, side: int) -> list[int]:
    if length <= side:
        return [0]
    step = max(1, side - side // 8)
    starts = list(range(0, length - side, step))
    return starts + [length - side]


def tile_boxes(shape: tuple[int, int], config: DetectorConfig) -> list[Box]:
    """The tiles of an image of this (height, width): one box for the whole image unless its shorter
    side exceeds image_size x tile_downscale (tile_downscale 0: never tiled)."""
    height, width = shape
    side = int(round(config.image_size * config.tile_downscale))
    if config.tile_downscale <= 0 or min(height, width) <= side:
        return [(0, 0, width, height)]
    return [(x, y, x + side, y + side) for y in _starts(height, side) for x in _starts(width, side)]


def split(records: Sequence[ImageRecord], config: DetectorConfig) -> list[ImageRecord | Piece]:
    """Each record as it is, or its tiles when it is large (image sizes read from the file headers)."""
    out: list[ImageRecord | Piece] = []
    for record in records:
        boxes = tile_boxes(image_size(record.path), config) if config.tile_downscale > 0 else [(0, 0, 0, 0)]
        out.extend([record] if len(boxes) == 1 else [Piece(record, box) for box in boxes])
    return out


@lru_cache(maxsize=2)
def _whole(path: Path) -> np.ndarray:
    return read_image(path)


def load_piece(item: ImageRecord | Piece) -> np.ndarray:
    """The pixels of a record (read_image) or of one tile of it (H x W x 3 uint8)."""
    if isinstance(item, Piece):
        x0, y0, x1, y1 = item.box
        return _whole(item.path)[y0:y1, x0:x1]
    return read_image(item.path)


def stitch(maps: Mapping[str, np.ndarray], items: Iterable[ImageRecord | Piece]) -> dict[str, np.ndarray]:
    """Maps keyed by record relpath: a whole record's map as it is, tiles put back in place (max where
    they overlap)."""
    out: dict[str, np.ndarray] = {}
    for item in items:
        if not isinstance(item, Piece):
            out[item.relpath] = maps[item.relpath]
            continue
        x0, y0, x1, y1 = item.box
        key = item.record.relpath
        if key not in out:
            out[key] = np.full(image_size(item.path), -np.inf, np.float32)
        np.maximum(out[key][y0:y1, x0:x1], maps[item.relpath], out=out[key][y0:y1, x0:x1])
    return out
