"""Seeded hard synthetic inspection set: textured tiles under uneven light with subtle defects.

The demo set (core/demo/build.py) is too easy to predict real data: a smooth part under mild light.
This set is built to look like real tile inspection: every image is a tile on a dark table with
a strong surface texture (directional grinding marks of random frequency, angle and contrast; a
cast, pitted surface; a woven fabric), lit unevenly and differently in every image, in several
sizes and aspect ratios. Defects are low-contrast: small dark pits, thin curved cracks, chipped
edges, frayed borders and large faint blotches. Normal references carry the same natural
variation. Files follow the MVTec AD layout with ground-truth masks, so the AUROC code applies.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.demo.build import prepare_folder, set_layout, with_settings, write_png
from core.records import GOOD

#: Defect types of the hard set, in their default order.
HARD_DEFECT_TYPES = ("pit", "crack", "chipped_edge", "frayed_border", "blotch")
#: Surface textures a tile can have (each image draws one).
SURFACES = ("ground", "cast", "woven")
#: First line of the README (the demo's marker, so that --overwrite may replace it).
HARD_README_MARKER = "Defect Discovery Studio synthetic demo data set (hard: textured tiles)"


@dataclass(frozen=True)
class HardDemoConfig:
    """Settings of the hard set; the defaults give ~200 images of 128-320 px in under a minute."""

    seed: int = 0  # same seed -> identical files
    min_side: int = 128  # shorter image side is drawn from min_side..max_side
    max_side: int = 320
    n_train_good: int = 80  # defect-free references (train/good)
    n_test_good: int = 30  # defect-free images among the images to inspect (test/good)
    n_per_class: int = 16  # defective test images per defect type
    surfaces: tuple[str, ...] = SURFACES  # which textures appear (one per image, drawn at random)
    defect_types: tuple[str, ...] = HARD_DEFECT_TYPES

    def __post_init__(self) -> None:
        object.__setattr__(self, "surfaces", tuple(self.surfaces))
        object.__setattr__(self, "defect_types", tuple(self.defect_types))
        if not 48 <= self.min_side <= self.max_side:
            raise ValueError(f"need 48 <= min_side <= max_side, got {self.min_side}, {self.max_side}")
        unknown = [s for s in self.surfaces if s not in SURFACES] + [
            t for t in self.defect_types if t not in _DEFECTS]
        if unknown or not self.surfaces:
            raise ValueError(f"unknown surfaces or defect types {unknown}; known: {SURFACES}, {HARD_DEFECT_TYPES}")
        for name in ("n_train_good", "n_test_good", "n_per_class"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class _Tile:
    """One scene being rendered: reflectance of the tile, its shape, the table, the light."""

    albedo: np.ndarray  # H x W float32 surface reflectance (texture), around 1
    inside: np.ndarray  # H x W float32, 1 on the tile, 0 on the table (soft edge)
    box: tuple[int, int, int, int]  # tile x0, y0, x1, y1
    tint: np.ndarray  # 3 colour gains of the tile
    rng: np.random.Generator


def _blur(array: np.ndarray, sigma_x: float, sigma_y: float | None = None) -> np.ndarray:
    return cv2.GaussianBlur(array, (0, 0), sigmaX=sigma_x, sigmaY=sigma_y or sigma_x,
                            borderType=cv2.BORDER_REFLECT)


def _unit(noise: np.ndarray) -> np.ndarray:
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def _rotate(array: np.ndarray, angle: float, shape: tuple[int, int]) -> np.ndarray:
    """Rotate a larger canvas by angle (degrees) about its centre and crop shape from the middle."""
    big_h, big_w = array.shape
    matrix = cv2.getRotationMatrix2D((big_w / 2, big_h / 2), angle, 1.0)
    rotated = cv2.warpAffine(array, matrix, (big_w, big_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    top, left = (big_h - shape[0]) // 2, (big_w - shape[1]) // 2
    return rotated[top:top + shape[0], left:left + shape[1]]


def _ground(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Directional grinding marks: long streaks plus a few periodic grooves, random angle/frequency."""
    side = int(np.ceil(np.hypot(*shape))) + 8
    streaks = _unit(_blur(rng.normal(0, 1, (side, side)).astype(np.float32), rng.uniform(0.6, 1.5),
                          rng.uniform(15, 60)))
    across = np.arange(side, dtype=np.float32)[None, :]
    grooves = sum(rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * rng.uniform(0.03, 0.35) * across + rng.uniform(0, 6.3))
                  for _ in range(int(rng.integers(1, 4))))
    field = streaks + rng.uniform(0.2, 0.8) * np.broadcast_to(grooves, (side, side))
    angle = float(rng.choice([0.0, 90.0]) + rng.normal(0, 12))
    return _unit(_rotate(field.astype(np.float32), angle, shape)) * rng.uniform(0.04, 0.14)


def _cast(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Cast surface: multi-scale mottling with tiny shallow pores."""
    field = sum(weight * _unit(_blur(rng.normal(0, 1, shape).astype(np.float32), sigma))
                for sigma, weight in ((0.8, 0.5), (2.5, 0.8), (8.0, 0.6)))
    pores = (rng.random(shape) < rng.uniform(0.002, 0.006)).astype(np.float32)
    pores = _blur(pores, 0.7) * 6.0
    return (_unit(field) * rng.uniform(0.04, 0.10) - pores * rng.uniform(0.04, 0.10)).astype(np.float32)


def _woven(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Plain weave: warp and weft threads alternating over and under, slightly irregular."""
    side = int(np.ceil(np.hypot(*shape))) + 8
    period = rng.uniform(5.0, 12.0)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    jitter = _blur(rng.normal(0, 1, (side, side)).astype(np.float32), 6.0) * period * 0.8
    u, v = (x + jitter) / period, (y - jitter) / period
    warp = np.cos(np.pi * (u - np.floor(u) - 0.5)) ** 2
    weft = np.cos(np.pi * (v - np.floor(v) - 0.5)) ** 2
    over = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    field = over * warp * (0.7 + 0.3 * weft) + (1 - over) * weft * (0.7 + 0.3 * warp)
    field = field + 0.15 * _unit(_blur(rng.normal(0, 1, (side, side)).astype(np.float32), 0.8))
    return _unit(_rotate(field, float(rng.normal(0, 8)), shape)) * rng.uniform(0.05, 0.12)


_SURFACE_RENDERERS: dict[str, Callable[[np.random.Generator, tuple[int, int]], np.ndarray]] = {
    "ground": _ground, "cast": _cast, "woven": _woven}


def _shape(rng: np.random.Generator, config: HardDemoConfig) -> tuple[int, int]:
    short = int(rng.integers(config.min_side, config.max_side + 1))
    aspect = float(np.exp(rng.uniform(np.log(1.0), np.log(1.8))))
    long = int(round(short * aspect))
    return (short, long) if rng.random() < 0.5 else (long, short)


def _build_tile(rng: np.random.Generator, config: HardDemoConfig) -> _Tile:
    height, width = _shape(rng, config)
    surface = str(rng.choice(config.surfaces))
    texture = _SURFACE_RENDERERS[surface](rng, (height, width))
    margin_y, margin_x = (int(round(rng.uniform(0.04, 0.09) * s)) for s in (height, width))
    x0, y0 = margin_x + int(rng.integers(-2, 3)), margin_y + int(rng.integers(-2, 3))
    x1, y1 = width - margin_x + int(rng.integers(-2, 3)), height - margin_y + int(rng.integers(-2, 3))
    inside = np.zeros((height, width), np.float32)
    inside[y0:y1, x0:x1] = 1.0
    # natural edge roughness: a fine irregularity of about a pixel on every tile
    rough = _blur(rng.normal(0, 1, (height, width)).astype(np.float32), 1.5) * 2.5
    inside = np.clip(_blur(inside, 0.8) + (np.abs(_blur(inside, 1.5) - 0.5) < 0.25) * rough * 0.3, 0, 1)
    tint = np.array([1.0, 1.0, 1.0]) + rng.normal(0, 0.04, 3)
    return _Tile((1.0 + texture).astype(np.float32), inside.astype(np.float32), (x0, y0, x1, y1), tint, rng)


def _finish(tile: _Tile, rng: np.random.Generator) -> np.ndarray:
    """Light the scene (uneven, changing from image to image), add sensor noise, quantize."""
    height, width = tile.albedo.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((x - width / 2) * np.cos(angle) + (y - height / 2) * np.sin(angle)) / max(height, width)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    spot = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (rng.uniform(0.3, 0.8) * max(height, width)) ** 2))
    smooth = _blur(rng.normal(0, 1, (height, width)).astype(np.float32), max(height, width) / 6)
    light = rng.uniform(0.45, 0.75) * (1 + rng.uniform(0.1, 0.5) * ramp + rng.uniform(0.1, 0.5) * spot
                                       + 0.05 * _unit(smooth))
    table = 0.12 + 0.03 * _unit(_blur(rng.normal(0, 1, (height, width)).astype(np.float32), 2.0))
    surface = tile.inside * tile.albedo + (1 - tile.inside) * table
    image = (light * surface)[..., None] * tile.tint[None, None, :]
    image = image + rng.normal(0, rng.uniform(0.006, 0.015), image.shape)
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _tile_point(tile: _Tile, margin: float = 0.12) -> tuple[float, float]:
    x0, y0, x1, y1 = tile.box
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    return float(tile.rng.uniform(x0 + mx, x1 - mx)), float(tile.rng.uniform(y0 + my, y1 - my))


def _pit(tile: _Tile) -> np.ndarray:
    """One to three small dark pits with a soft wall."""
    height, width = tile.albedo.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    mask = np.zeros((height, width), np.float32)
    cx, cy = _tile_point(tile)
    for _ in range(int(tile.rng.integers(1, 4))):
        px, py = cx + tile.rng.normal(0, 6), cy + tile.rng.normal(0, 6)
        radius = tile.rng.uniform(1.5, 4.0) * min(height, width) / 200
        radius = max(radius, 1.5)
        depth = np.clip(1 - np.sqrt((x - px) ** 2 + (y - py) ** 2) / radius, 0, 1) ** 0.7
        tile.albedo *= 1 - tile.rng.uniform(0.2, 0.4) * depth
        mask = np.maximum(mask, (depth > 0.05).astype(np.float32))
    return mask


def _crack(tile: _Tile) -> np.ndarray:
    """A thin curved dark crack (quadratic curve with a little wiggle)."""
    height, width = tile.albedo.shape
    x0, y0, x1, y1 = tile.box
    length = tile.rng.uniform(0.2, 0.45) * min(x1 - x0, y1 - y0)
    cx, cy = _tile_point(tile, 0.2)
    angle = tile.rng.uniform(0, np.pi)
    bend = tile.rng.normal(0, 0.35) * length
    t = np.linspace(-0.5, 0.5, 80)
    px = cx + t * length * np.cos(angle) - (t**2 - 0.25) * bend * np.sin(angle)
    py = cy + t * length * np.sin(angle) + (t**2 - 0.25) * bend * np.cos(angle)
    px, py = px + np.cumsum(tile.rng.normal(0, 0.5, t.size)), py + np.cumsum(tile.rng.normal(0, 0.5, t.size))
    layer = np.zeros((height, width), np.uint8)
    points = np.stack([px, py], 1).round().astype(np.int32)
    cv2.polylines(layer, [points], False, 255, thickness=int(tile.rng.integers(1, 3)), lineType=cv2.LINE_AA)
    strength = layer.astype(np.float32) / 255.0
    tile.albedo *= 1 - tile.rng.uniform(0.2, 0.45) * strength
    return (cv2.dilate((strength > 0.2).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0).astype(np.float32)


def _edge_band(tile: _Tile) -> tuple[np.ndarray, np.ndarray, int]:
    """Distance into the tile from one of its four edges (chosen at random) and the along-edge axis."""
    height, width = tile.albedo.shape
    x0, y0, x1, y1 = tile.box
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    side = int(tile.rng.integers(4))
    depth = [x - x0, x1 - x, y - y0, y1 - y][side]
    along = [y, y, x, x][side]
    return depth, along, side


def _chipped_edge(tile: _Tile) -> np.ndarray:
    """Material missing at the tile edge: an irregular bite shows the table."""
    x0, y0, x1, y1 = tile.box
    depth, along, side = _edge_band(tile)
    span = (y1 - y0) if side < 2 else (x1 - x0)
    start = (y0 if side < 2 else x0) + tile.rng.uniform(0.15, 0.75) * span
    half = tile.rng.uniform(0.04, 0.10) * span
    reach = tile.rng.uniform(0.03, 0.07) * span
    profile = reach * np.clip(1 - ((along - start - half) / half) ** 2, 0, 1) ** 0.6
    profile = profile * (1 + 0.3 * _unit(_blur(tile.rng.normal(0, 1, along.shape).astype(np.float32), 2.0)))
    bite = ((profile > 1.0) & (depth >= -2) & (depth < profile)).astype(np.float32)
    tile.inside *= 1 - bite
    return bite


def _frayed_border(tile: _Tile) -> np.ndarray:
    """A stretch of the tile edge turns ragged: small teeth in and out of the tile."""
    x0, y0, x1, y1 = tile.box
    depth, along, side = _edge_band(tile)
    span = (y1 - y0) if side < 2 else (x1 - x0)
    start = (y0 if side < 2 else x0) + tile.rng.uniform(0.1, 0.6) * span
    stretch = ((along > start) & (along < start + tile.rng.uniform(0.2, 0.35) * span)).astype(np.float32)
    teeth = _unit(_blur(tile.rng.normal(0, 1, along.shape).astype(np.float32), 1.0)) * tile.rng.uniform(2.0, 4.0)
    frayed = stretch * (np.abs(depth - 1) < np.abs(teeth)) * (depth < 6) * (depth > -6)
    flip = (depth > 1).astype(np.float32)  # inside the tile: teeth cut out; outside: fibres stick out
    tile.inside = np.clip(tile.inside * (1 - frayed * flip) + frayed * (1 - flip) * 0.8, 0, 1)
    return cv2.dilate(frayed.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)


def _blotch(tile: _Tile) -> np.ndarray:
    """A large faint uneven patch: slightly darker or lighter, the texture washed out in it."""
    height, width = tile.albedo.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = _tile_point(tile, 0.25)
    radius = tile.rng.uniform(0.12, 0.25) * min(height, width)
    wobble = _blur(tile.rng.normal(0, 1, (height, width)).astype(np.float32), radius / 3) * radius * 3
    distance = np.sqrt(((x - cx) / tile.rng.uniform(0.6, 1.4)) ** 2 + (y - cy) ** 2) + wobble
    weight = np.clip((radius - distance) / (0.4 * radius), 0, 1) * tile.inside
    mean = float(tile.albedo.mean())
    washed = mean + (tile.albedo - mean) * tile.rng.uniform(0.3, 0.6)
    sign = tile.rng.choice([-1.0, 1.0])
    target = washed * (1 + sign * tile.rng.uniform(0.06, 0.12))
    tile.albedo = tile.albedo * (1 - weight) + target * weight
    return (weight > 0.5).astype(np.float32)


_DEFECTS: dict[str, Callable[[_Tile], np.ndarray]] = {
    "pit": _pit, "crack": _crack, "chipped_edge": _chipped_edge, "frayed_border": _frayed_border, "blotch": _blotch}


def render_hard_sample(kind: str, index: int, config: HardDemoConfig = HardDemoConfig(), *,
                       split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """One image (H x W x 3 uint8) and its 0/255 mask; kind is a defect type or "good"."""
    if kind != GOOD and kind not in _DEFECTS:
        raise ValueError(f"unknown defect type {kind!r}; known: {list(HARD_DEFECT_TYPES)}")
    key = [int(config.seed) & 0xFFFFFFFF, zlib.crc32(split.encode()), zlib.crc32(kind.encode()), int(index)]
    scene_rng, defect_rng, camera_rng = (np.random.default_rng(c) for c in np.random.SeedSequence(key).spawn(3))
    tile = _build_tile(scene_rng, config)
    mask = np.zeros(tile.albedo.shape, np.float32)
    if kind != GOOD:
        tile.rng = defect_rng
        mask = _DEFECTS[kind](tile)
    image = _finish(tile, camera_rng)
    return image, np.where(mask > 0.5, 255, 0).astype(np.uint8)


def generate_hard_demo(root: Path | str, config: HardDemoConfig | None = None, *, overwrite: bool = False,
                       **settings: object) -> Path:
    """Write the hard set under root (MVTec AD layout) and return root; settings override config."""
    config = with_settings(config or HardDemoConfig(), settings, "generate_hard_demo")
    root = Path(root).expanduser()
    prepare_folder(root, overwrite)
    for split, kind, index in set_layout(config):
        folder = root / split / kind
        folder.mkdir(parents=True, exist_ok=True)
        image, mask = render_hard_sample(kind, index, config, split=split)
        write_png(folder / f"{index:03d}.png", image)
        if kind != GOOD:
            (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            write_png(root / "ground_truth" / kind / f"{index:03d}_mask.png", mask)
    (root / "README.txt").write_text(
        f"{HARD_README_MARKER}\n\nMade by `python -m core demo --hard` (core/demo/hard.py), seed {config.seed}; "
        f"shorter sides {config.min_side}-{config.max_side} px, aspect up to 1.8.\n"
        f"Surfaces: {', '.join(config.surfaces)}; defects: {', '.join(config.defect_types)}.\n"
        f"train/good: {config.n_train_good}, test/good: {config.n_test_good}, "
        f"{config.n_per_class} per defect type; ground_truth/<defect>/<stem>_mask.png.\n", encoding="utf-8")
    return root
