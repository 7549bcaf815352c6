"""Large images are detected in tiles and stitched back, so a small defect is not shrunk away."""

import cv2
import numpy as np
import torch

from core.dataset import load_dataset
from core.detection import DetectorConfig, detect
from core.detection.tiles import tile_boxes

CPU = torch.device("cpu")


def test_tiles_cover_the_image_with_overlap_and_leave_strips_whole():
    config = DetectorConfig(image_size=32, tile_downscale=2.0)  # tiles of 64 px
    boxes = tile_boxes((150, 200), config)
    covered = np.zeros((150, 200), int)
    for x0, y0, x1, y1 in boxes:
        assert (x1 - x0, y1 - y0) == (64, 64)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1 and covered.max() >= 2
    assert tile_boxes((60, 4000), config) == [(0, 0, 4000, 60)]  # shorter side within the limit
    assert tile_boxes((256, 4096), DetectorConfig()) == [(0, 0, 4096, 256)]  # an AITEX strip: whole
    assert tile_boxes((1000, 1000), DetectorConfig(image_size=32, tile_downscale=0)) == [(0, 0, 1000, 1000)]


def _grain(rng: np.random.Generator, side: int) -> np.ndarray:
    grain = cv2.GaussianBlur(rng.normal(0, 1, (side, side)).astype(np.float32), (0, 0), 1.5)
    return np.clip(128 + 12 * grain / grain.std(), 0, 255)


def test_a_tiled_large_image_keeps_a_small_defect(tmp_path):
    """An 8-pixel pit on 384-pixel images: with image_size 64 the whole image shrinks 6-fold and the pit is
    lost in the grain; in 128-pixel tiles it is seen at half size, and the stitched map peaks on it."""
    rng = np.random.default_rng(0)
    (tmp_path / "train" / "good").mkdir(parents=True)
    for index in range(12):
        cv2.imwrite(str(tmp_path / "train" / "good" / f"{index}.png"), _grain(rng, 384).astype(np.uint8))
    image = _grain(rng, 384)
    image[200:208, 100:108] -= 90
    (tmp_path / "test" / "pit").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "test" / "pit" / "0.png"), image.astype(np.uint8))
    manifest = load_dataset(tmp_path)
    settings = dict(method="patchcore", backbone="filterbank", image_size=64, holdout_share=0.0, coreset_max=500,
                    coreset_candidates=5000, sigma=1.0)
    tiled = detect(manifest, DetectorConfig(**settings, tile_downscale=2.0), CPU).maps["test/pit/0.png"]
    whole = detect(manifest, DetectorConfig(**settings, tile_downscale=0), CPU).maps["test/pit/0.png"]
    assert tiled.shape == whole.shape == (384, 384)
    y, x = np.unravel_index(int(tiled.argmax()), tiled.shape)
    assert abs(y - 204) <= 6 and abs(x - 104) <= 6
    contrast = lambda m: (m[196:212, 96:112].max() - np.median(m)) / (np.percentile(m, 99) - np.median(m))  # noqa: E731
    assert contrast(tiled) > 2 > contrast(whole)
