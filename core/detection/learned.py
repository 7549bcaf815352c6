"""The "learned" detector: fitted to the user's own normal images, no pretrained weights.

Two memory banks of normal cells (one cell per 4 x 4 pixels of the feature input), each scored by
nearest-neighbour distance (PatchCore's coreset and search), each calibrated on normal images it
did not learn from, and summed:

* structure: raw patches (7 x 7 at 1x, 2x and 4x coarser) of the grey image, divided by the local
  lighting, centred and divided by the image's own texture contrast (a robust spread of its
  fine detail), soft-clipped (asinh) so that the tile-to-background step does not dominate, each
  patch minus its mean; projected on the principal components of the normal patches (the
  filters are learnt from the user's images, "eigen-patches"). Catches pits, cracks, chips.
  The coarse patches are divided by (their RMS / learned_patch_norm + 1): a tile corner or edge
  then looks alike under any light and step height, so a few references cover it.
* statistics: a few numbers per cell that patches miss: the local texture contrast against the
  image's own (two window sizes, log) and the brightness against the lighting.

Two one-sided, self-referenced scores are added, each calibrated on held-out normal cells and
counted only above their normal median: "washout", the texture contrast in a wide window (4.5% of
the shorter side) below the image's own (large faint patches where the texture is washed out;
a nearest-neighbour bank misses them because low-contrast cells, e.g. the table, are normal
elsewhere); and "dark", a small dark spot (difference of Gaussians, 1 and 6 pixels) against the
local spread of such spots (pits, cracks).

Why these, measured on the hard synthetic set (core/demo/hard.py; see benchmarks/detection.py):
contrast-normalized patches beat the filter bank; without the soft clip the maps lit up at the
tile corners of every image, and without the coarse patch normalization they still peaked at the
corners in 22 of 30 normal images (image AUROC 0.79 -> 0.82); the washout score lifted blotch
pixel AUROC from 0.60 to 0.91. Fit: seconds to a few minutes on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from core.detection.config import DetectorConfig
from core.detection.features import FilterBank, input_size, to_input
from core.detection.patchcore import PatchCore

#: Fewest normal references the learned detector trains on (fewer: PatchCore on the filter bank).
MIN_REFERENCES = 20
#: Side of the raw patches, pixels of each scale; scales (downsampling factors) of the patches.
PATCH = 7
SCALES = (1, 2, 4)
#: Grid step of the cells, pixels of the feature input (the coarsest scale's pixel).
STRIDE = 4
#: Windows (Gaussian sigma, pixels) of the local texture contrast.
CONTRAST_WINDOWS = (4.0, 10.0)
#: Weight of the brightness among the statistics (log contrasts have a spread of about 1/3).
BRIGHTNESS_WEIGHT = 3.0
#: Most normal cells scored to calibrate each bank.
CALIBRATION_CELLS = 20_000
#: Most cells per statistics bank (three numbers per cell need few).
STATS_BANK = 3_000
#: Window of the washout score (Gaussian sigma, share of the feature input's shorter side).
WASHOUT_WINDOW = 0.045
WASHOUT_MIN = 8.0  # pixels: narrower windows measure noise, not texture
#: Dark spot score: inner and outer Gaussian sigma, pixels, and the window of its local spread.
DARK_SIGMAS = (1.0, 6.0)
DARK_SPREAD_WINDOW = 12.0
#: Statistics channels scored by the bank (the rest are the one-sided scores).
BANK_STATISTICS = 3
#: The one-sided scores count above the median of held-out normal cells, in units of a robust spread:
#: the distance from the median to this quantile over the standard normal's (a 99th percentile zero
#: point lost the faint patches: blotch pixel AUROC 0.91 -> 0.67).
ONE_SIDED_QUANTILE = 0.99
NORMAL_QUANTILE_Z = 2.326

Progress = Callable[[int, int], None]


def cell_features(image: np.ndarray, config: DetectorConfig, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(P x h x w raw multi-scale patches, 5 x h x w statistics, feature input size) of one image.

    Statistics: BANK_STATISTICS for the bank, then the washout and dark spot scores."""
    size = input_size(image.shape[:2], config.image_size)
    grey = torch.from_numpy(to_input(image, size)).to(device)[None].mean(dim=1, keepdim=True)
    light = FilterBank._blur(grey, FilterBank.light_scale * min(size))
    lit = grey / (light + FilterBank.light_offset)
    detail = lit - FilterBank._blur(lit, 3.0)
    contrast = detail.abs().median() * 1.4826 + 1e-3  # robust spread of the fine detail
    squash = config.learned_squash
    normalized = torch.asinh((lit - lit.median()) / contrast / squash) * squash
    height, width = size[0] // STRIDE, size[1] // STRIDE
    patches = []
    for factor in SCALES:
        scaled = F.avg_pool2d(normalized, factor, factor) if factor > 1 else normalized
        cells = F.unfold(scaled, PATCH, padding=PATCH // 2, stride=STRIDE // factor)
        cells = cells.reshape(PATCH * PATCH, height, width)
        cells = cells - cells.mean(dim=0, keepdim=True)
        if factor > 1 and config.learned_patch_norm > 0:
            cells = cells / (cells.pow(2).mean(dim=0, keepdim=True).sqrt() / config.learned_patch_norm + 1)
        patches.append(cells)
    statistics = [torch.log(FilterBank._blur(detail**2, sigma).sqrt() / contrast + 0.05) for sigma in CONTRAST_WINDOWS]
    statistics.append(BRIGHTNESS_WEIGHT * lit)
    wide = FilterBank._blur(detail**2, max(WASHOUT_MIN, WASHOUT_WINDOW * min(size))).sqrt()
    statistics.append(-torch.log(wide / contrast + 0.05))
    dark = (FilterBank._blur(lit, DARK_SIGMAS[1]) - FilterBank._blur(lit, DARK_SIGMAS[0])) / contrast
    statistics.append(dark / (FilterBank._blur(dark**2, DARK_SPREAD_WINDOW).sqrt() + 0.3))
    pooled = F.avg_pool2d(torch.cat(statistics, dim=1), STRIDE, STRIDE)[0]
    return torch.cat(patches), pooled, size


class LearnedDetector:
    """Fit on normal images (H x W x 3 uint8), then score(image) -> h x w cell scores (about 0 normal)."""

    def __init__(self, config: DetectorConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.state: dict[str, torch.Tensor] = {}
        self._banks: tuple[PatchCore, PatchCore] | None = None

    def fit(self, images: Callable[[int], np.ndarray], count: int, progress: Callable[[str, int, int], None]
            ) -> LearnedDetector:
        """images(i) -> the i-th normal image, i < count; progress(stage, done, total)."""
        if count < MIN_REFERENCES:
            raise ValueError(f"the learned detector needs at least {MIN_REFERENCES} normal reference images, "
                             f"got {count}")
        config = self.config
        generator = torch.Generator().manual_seed(config.seed + 11)
        per_image = config.learned_cells_per_image
        patches, statistics = [], []
        progress("learned: features of normal images", 0, count)
        for index in range(count):
            cells, stats, _ = cell_features(images(index), config, self.device)
            flat = cells.reshape(cells.shape[0], -1).T
            stat = stats.reshape(stats.shape[0], -1).T
            keep = torch.randperm(flat.shape[0], generator=generator)[:per_image].to(flat.device)
            patches.append(flat[keep].cpu())
            statistics.append(stat[keep].cpu())
            progress("learned: features of normal images", index + 1, count)
        # Banks learn from the first half of the images; the second half calibrates their scores.
        half = count // 2
        split = sum(p.shape[0] for p in patches[:half])
        rows = torch.cat(patches).to(self.device)
        stats = torch.cat(statistics).to(self.device)
        stats, one_sided = stats[:, :BANK_STATISTICS], stats[:, BANK_STATISTICS:]
        mean = rows[:split].mean(dim=0)
        centred = rows[:split] - mean
        covariance = (centred.T @ centred).double() / max(1, split - 1)
        _, vectors = torch.linalg.eigh(covariance)
        basis = vectors.flip(1)[:, :config.learned_dim].float()
        projected = (rows - mean) @ basis
        total = split * STRIDE * STRIDE  # cells drawn from ~STRIDE^2 more pixels' worth of patches
        report = lambda done, steps: progress("learned: coreset", done, steps)  # noqa: E731
        candidates = max(config.learned_candidates, config.coreset_max)  # never fewer than the bank keeps
        structure = PatchCore(config.coreset_ratio, config.projection_dim, config.seed, config.coreset_max,
                              candidates).fit(projected[:split], report, total_patches=total)
        texture = PatchCore(config.coreset_ratio, config.projection_dim, config.seed, STATS_BANK,
                            candidates).fit(stats[:split], total_patches=total)
        pick = torch.randperm(rows.shape[0] - split, generator=generator)[:CALIBRATION_CELLS].to(self.device) + split
        calibration = []
        for bank, held in ((structure, projected[pick]), (texture, stats[pick])):
            scores = bank.score(held.T[None, :, :, None]).flatten()
            calibration += [scores.mean(), scores.std().clamp_min(1e-6)]
        held = one_sided[pick]
        low, high = torch.quantile(held, torch.tensor([0.5, ONE_SIDED_QUANTILE], device=held.device), dim=0)
        self.state = {"mean": mean, "basis": basis, "structure": structure.bank, "texture": texture.bank,
                      "calibration": torch.stack(calibration),
                      "one_sided": torch.stack([low, ((high - low) / NORMAL_QUANTILE_Z).clamp_min(1e-6)])}
        self._banks = None
        return self

    def load(self, state: dict[str, torch.Tensor]) -> LearnedDetector:
        self.state = {key: value.to(self.device) for key, value in state.items()}
        self._banks = None
        return self

    def score(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(h x w calibrated cell scores, feature input size): the sum of the two banks' z-scores and
        the weighted positive z-scores of the washout and dark spot scores."""
        if not self.state:
            raise RuntimeError("LearnedDetector.score called before fit")
        if self._banks is None:
            banks = (PatchCore(), PatchCore())
            banks[0].bank, banks[1].bank = self.state["structure"], self.state["texture"]
            self._banks = banks
        cells, stats, size = cell_features(image, self.config, self.device)
        dim, height, width = cells.shape
        projected = (cells.reshape(dim, -1).T - self.state["mean"]) @ self.state["basis"]
        structure = self._banks[0].score(projected.T.reshape(1, -1, height, width))[0]
        texture = self._banks[1].score(stats[None, :BANK_STATISTICS])[0]
        mean_s, std_s, mean_t, std_t = self.state["calibration"]
        mean_o, std_o = self.state["one_sided"]
        one_sided = ((stats[BANK_STATISTICS:] - mean_o[:, None, None]) / std_o[:, None, None]).clamp_min(0)
        weights = (self.config.learned_washout_weight, self.config.learned_dark_weight)
        return ((structure - mean_s) / std_s + (texture - mean_t) / std_t
                + weights[0] * one_sided[0] + weights[1] * one_sided[1]), size

