"""Seeded synthetic inspection data set: the app's built-in demo and every test's data.

The product is a turned metal flange (bore, four bolt holes, chamfered rim) photographed on a
rubber mat under uneven light. Defect types differ by shape and texture, not by colour: contrast
and polarity vary within every type. Files follow the MVTec AD layout so core.dataset reads them.
The drawing (scene, defects) is in core.demo.scene; this module renders samples and writes the set.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.demo.scene import RENDERERS, blur, build_scene, finish
from core.records import GOOD, ImageRecord

#: Defect types the generator can draw, in their default order.
DEFECT_TYPES = ("scratch", "hole", "stain", "crack", "chipped_edge")

#: What each defect type looks like (README, app help).
DEFECT_DESCRIPTIONS = {
    "scratch": "thin, long, smooth lines (1-3 parallel), bright or dark, tapered ends",
    "hole": "round or oval pit (some punched through) with a shaded wall and a rim lit on one side",
    "stain": "diffuse low-contrast blotch, darker or lighter, hiding the machining marks",
    "crack": "jagged, branching dark fissure",
    "chipped_edge": "material missing at the rim: the mat or a rough lower surface shows",
}

#: First line of the README; marks a folder as a demo set that may be overwritten.
README_MARKER = "Defect Discovery Studio synthetic demo data set"


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo generator; the defaults give a ~120-image set in a few seconds."""

    seed: int = 0  # same seed -> byte-identical files
    image_size: int = 256  # side of the square images, pixels
    n_train_good: int = 40  # defect-free reference images (train/good)
    n_test_good: int = 12  # defect-free images among the images to inspect (test/good)
    n_per_class: int = 14  # defective test images per defect type
    two_defect_share: float = 0.15  # share of defective images carrying a second defect of the same type
    defect_types: tuple[str, ...] = DEFECT_TYPES  # which defect types to draw (folder names)

    def __post_init__(self) -> None:
        object.__setattr__(self, "defect_types", tuple(self.defect_types))
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {self.image_size}")
        for name in ("n_train_good", "n_test_good", "n_per_class"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.two_defect_share <= 1.0:
            raise ValueError(f"two_defect_share must be within 0..1, got {self.two_defect_share}")
        unknown = [t for t in self.defect_types if t not in RENDERERS]
        if unknown:
            raise ValueError(f"unknown defect types {unknown}; known: {list(DEFECT_TYPES)}")
        if len(set(self.defect_types)) != len(self.defect_types):
            raise ValueError(f"defect_types has duplicates: {list(self.defect_types)}")


@dataclass(frozen=True)
class DemoSample:
    """One rendered image with its ground truth and the same scene without the defects."""

    image: np.ndarray  # H x W x 3 uint8 RGB
    mask: np.ndarray  # H x W uint8, 255 on defect pixels (all zero for good images)
    clean: np.ndarray | None  # the same scene without defects (same light and noise); None unless asked
    kind: str  # defect type, or "good"
    n_defects: int  # 0, 1 or 2


# ---------------------------------------------------------------------------------------------
# Rendering one sample, writing the set


def _rng_streams(seed: int, split: str, kind: str, index: int) -> list[np.random.Generator]:
    """Independent generators for scene, defects and camera; one image never depends on another."""
    key = [int(seed) & 0xFFFFFFFF, zlib.crc32(split.encode()), zlib.crc32(kind.encode()), int(index)]
    return [np.random.default_rng(child) for child in np.random.SeedSequence(key).spawn(3)]


def two_defect_indices(config: DemoConfig, kind: str) -> frozenset[int]:
    """Indices of the test images of `kind` that carry a second defect (a fixed, seeded choice)."""
    count = int(round(config.two_defect_share * config.n_per_class))
    if count == 0:
        return frozenset()
    rng = np.random.default_rng([int(config.seed) & 0xFFFFFFFF, zlib.crc32(b"two:" + kind.encode())])
    return frozenset(int(i) for i in rng.permutation(config.n_per_class)[:count])


def render_sample(kind: str, index: int, config: DemoConfig = DemoConfig(), *, split: str = "test",
                  n_defects: int | None = None, with_clean: bool = True) -> DemoSample:
    """Render one image: `kind` is a defect type or "good"; split is "train" or "test".

    n_defects defaults to the data set's choice (1, or 2 for two_defect_indices). The clean
    scene is rendered from the same random streams, so image and clean differ only by defects.
    """
    if kind != GOOD and kind not in RENDERERS:
        raise ValueError(f"unknown defect type {kind!r}; known: {list(DEFECT_TYPES)}")
    if n_defects is None:
        n_defects = 0 if kind == GOOD else (2 if index in two_defect_indices(config, kind) else 1)
    scene_rng, defect_rng, camera_rng = _rng_streams(config.seed, split, kind, index)
    scene = build_scene(scene_rng, config.image_size)
    camera_seed = int(camera_rng.integers(2**63))
    # the clean scene is finished before any defect edits it
    clean = finish(scene, np.random.default_rng(camera_seed)) if with_clean else None
    coverage = np.zeros((config.image_size, config.image_size), np.float32)
    avoid: list[tuple[float, float]] = []
    for _ in range(n_defects):
        coverage = np.maximum(coverage, RENDERERS[kind](scene, defect_rng, avoid))
    image = finish(scene, np.random.default_rng(camera_seed))
    mask = np.where(coverage > 0.5, 255, 0).astype(np.uint8)
    return DemoSample(image, mask, clean, kind, n_defects)


def write_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"{path}: could not encode PNG")
    encoded.tofile(str(path))


def _readme(config: DemoConfig) -> str:
    n_test = config.n_test_good + config.n_per_class * len(config.defect_types)
    descriptions = "\n".join(f"  {kind:<13} {DEFECT_DESCRIPTIONS[kind]}" for kind in config.defect_types)
    return f"""{README_MARKER}

Made by `python -m core demo` (core/demo/build.py), seed {config.seed}, {config.image_size}x{config.image_size} px.
Same seed and settings give byte-identical files.

What it shows: a turned steel flange (central bore, four bolt holes, chamfered rim) on a dark
rubber mat, lit unevenly; normal images vary slightly in position, rotation, brightness,
machining marks and lighting.

Layout (MVTec AD):
  train/good/                    {config.n_train_good} defect-free reference images
  test/good/                     {config.n_test_good} defect-free images to inspect
  test/<defect>/                 {config.n_per_class} images per defect type ({n_test} test images in all)
  ground_truth/<defect>/<stem>_mask.png   0/255 masks, same size as the image

Defect types (folder names):
{descriptions}
About {config.two_defect_share:.0%} of defective images carry a second defect of the same type.
Contrast and polarity vary within every type, so colour alone does not tell the types apart.
Folder names are ground truth for metrics only; the discovery itself never reads them.
"""


def with_settings(config: Any, settings: Mapping[str, object], caller: str) -> Any:
    """A generator's config with keyword overrides of its fields; TypeError naming unknown ones."""
    known = {f.name for f in fields(config)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"{caller} got unknown settings {unknown}; known: {sorted(known)}")
    return replace(config, **settings)


def set_layout(config: Any) -> list[tuple[str, str, int]]:
    """(split, kind, index) of every image of a set: train/good, test/good, then each defect type."""
    jobs = [("train", GOOD, i) for i in range(config.n_train_good)]
    jobs += [("test", GOOD, i) for i in range(config.n_test_good)]
    jobs += [("test", kind, i) for kind in config.defect_types for i in range(config.n_per_class)]
    return jobs


def prepare_folder(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        readme = root / "README.txt"
        text = readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else ""
        is_demo = text.startswith(README_MARKER)
        if not overwrite:
            raise FileExistsError(f"{root}: folder is not empty; choose a new or empty folder, "
                                  "or overwrite a previous demo set (--overwrite)")
        if not is_demo:
            raise FileExistsError(f"{root}: folder is not empty and is not a demo data set; "
                                  "refusing to overwrite it")
        for name in ("train", "test", "ground_truth"):
            shutil.rmtree(root / name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)


def generate_demo(root: Path | str, config: DemoConfig | None = None, *, overwrite: bool = False,
                  **settings: object) -> Path:
    """Write the demo data set under root (MVTec AD layout) and return root.

    Settings come from `config`, with keyword overrides of its fields (e.g. seed=1, image_size=64).
    root must be new or empty; overwrite=True replaces a previous demo set, never other files.
    """
    config = with_settings(config or DemoConfig(), settings, "generate_demo")
    root = Path(root).expanduser()
    prepare_folder(root, overwrite)

    jobs = set_layout(config)
    for split, kind, _ in jobs:
        (root / split / kind).mkdir(parents=True, exist_ok=True)
        if kind != GOOD:
            (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
    for split, kind, index in jobs:
        sample = render_sample(kind, index, config, split=split, with_clean=False)
        stem = f"{index:03d}"
        write_png(root / split / kind / f"{stem}.png", sample.image)
        if kind != GOOD:
            write_png(root / "ground_truth" / kind / f"{stem}_mask.png", sample.mask)
    (root / "README.txt").write_text(_readme(config), encoding="utf-8")
    return root


def gt_masks_to_maps(masks: Sequence[np.ndarray], sigma: float = 3.0, noise: float = 0.02, *,
                     seed: int = 0) -> list[np.ndarray]:
    """Simulate a detector from ground truth: blurred masks plus low smooth noise, float32 >= 0.

    sigma is the blur in pixels, noise the standard deviation of the background noise (maps peak
    near 1 on large defects, lower on thin ones, as real detectors do). Seeded: deterministic.
    """
    rng = np.random.default_rng(seed)
    maps = []
    for index, mask in enumerate(masks):
        array = np.asarray(mask)
        if array.ndim != 2:
            raise ValueError(f"mask {index} must be 2-D, got shape {array.shape}")
        binary = (array > (127 if array.dtype == np.uint8 and array.max() > 1 else 0.5)).astype(np.float32)
        smooth = blur(binary, sigma)
        background = np.abs(blur(rng.normal(0, 1, binary.shape).astype(np.float32), 1.0)) * noise * 2.0
        maps.append((smooth + background).astype(np.float32))
    return maps


def maps_from_ground_truth(records: Sequence[ImageRecord], sigma: float = 2.0) -> dict[str, np.ndarray]:
    """gt_masks_to_maps over a manifest's records (no mask: a defect-free image), keyed by relpath."""
    from core.imageio import read_gray

    masks = [read_gray(r.gt_mask_path) if r.gt_mask_path else np.zeros(r.size, np.uint8) for r in records]
    return dict(zip([r.relpath for r in records], gt_masks_to_maps(masks, sigma=sigma)))
