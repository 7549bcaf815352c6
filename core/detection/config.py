"""Settings of the built-in anomaly detector (one frozen dataclass, published defaults)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

#: Backbone that needs no download: a fixed multi-scale filter bank (see features.FilterBank).
OFFLINE_BACKBONE = "filterbank"
#: Pretrained backbone when its weights are here (cache or --weights), else the offline one.
AUTO_BACKBONE = "auto"
#: Backbone of the PatchCore paper, the real-use choice when its weights are available.
PAPER_BACKBONE = "wide_resnet50_2"
#: "auto": template when every image has its own reference; else, with normal images, patchcore on a
#: pretrained backbone when its weights are here, else "learned" (fitted to the normal images; PatchCore
#: on the filter bank instead when its maps separate the held-out normals clearly better, or when there
#: are too few normal images to train on); else zero-shot.
METHODS = ("auto", "learned", "patchcore", "template", "zero-shot")


@dataclass(frozen=True)
class DetectorConfig:
    """How anomaly maps are computed. Defaults follow PatchCore (Roth et al., CVPR 2022) and MuSc."""

    method: str = "auto"  # "auto", "learned" or "patchcore" (need normal images), "template" (one reference per image), "zero-shot"
    backbone: str = AUTO_BACKBONE  # "auto", "filterbank" (offline) or any timm CNN name, e.g. "wide_resnet50_2"
    weights: Path | None = None  # local .pth/.safetensors weights for a timm backbone
    pretrained: bool = True  # timm backbone: load pretrained weights (timm/HF cache); False = random init
    layers: tuple[int, int] = (2, 3)  # two intermediate feature stages (timm out_indices; layer2+layer3)
    embed_dim: int = 1024  # patch feature size after adaptive channel pooling (PatchCore: 1024)
    coreset_ratio: float = 0.1  # share of normal patches kept in the memory bank (PatchCore: 0.1)
    coreset_max: int = 10_000  # most patches in the memory bank (bounds fit and predict time)
    coreset_candidates: int = 240_000  # PatchCore: normal patches drawn at random before the greedy selection
    # (was 60,000: rare normal patterns missed the draw and peaked on defect-free strips; AITEX image AUROC 0.774 ->
    # 0.822 for 2% more time, docs/results.md)
    learned_candidates: int = 60_000  # learned: normal cells drawn at random before its coresets' greedy selection
    projection_dim: int = 128  # random projection size for coreset distances (PatchCore: 128)
    neighbourhood: int = 3  # local aggregation window, patches (PatchCore: 3x3)
    sigma: float = 4.0  # Gaussian smoothing of the map, in feature-input pixels (PatchCore: 4)
    image_size: int = 224  # shorter side of the feature input, pixels (aspect ratio kept)
    tile_downscale: float = 5.0  # images whose shorter side exceeds image_size x this are detected in tiles (0 = never)
    batch_size: int = 8  # images per forward pass
    zero_shot_fraction: float = 0.3  # zero-shot: share of most similar other images averaged (MuSc: 30%)
    # zero-shot: most other images (or tiles) each is compared with. 64 -> 16 measured: demo pixel AUROC 0.975 ->
    # 0.972 in 108 -> 34 s, DeepPCB (60 images) 0.660 -> 0.656 in 81 -> 24 s, AITEX defective strips 0.972 at 16
    zero_shot_references: int = 16
    zero_shot_coreset: float = 0.1  # zero-shot: share of each image's patches the others are compared with (1 = all, MuSc)
    holdout_share: float = 0.1  # share of normal images held out (at most 50) to measure how well the maps separate
    pairing: Path | None = None  # template: CSV file with columns image,reference (else paired by name)
    template_smoothing: float = 1.0  # template: Gaussian smoothing of image and reference, pixels
    template_tolerance: int = 1  # template: misalignment forgiven, pixels (neighbourhood min/max)
    template_sigma: float = 4.0  # template: Gaussian smoothing of the difference map, pixels
    learned_dim: int = 48  # learned: principal components of the normal patches kept
    learned_squash: float = 2.0  # learned: soft clip (asinh) of the contrast-normalized image, in texture spreads
    learned_cells_per_image: int = 1200  # learned: normal cells drawn from each reference
    learned_patch_norm: float = 3.0  # learned: coarse patches divided by (their RMS / this + 1); 0 = off
    learned_washout_weight: float = 1.0  # learned: weight of the washed-out texture score (0 = off)
    learned_dark_weight: float = 1.5  # learned: weight of the small dark spot score (0 = off)
    seed: int = 0  # coreset start and projection, reference sampling

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if len(self.layers) != 2:
            raise ValueError(f"layers must name two feature stages, not {self.layers!r}")
        if not 0 < self.coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must be in (0, 1], not {self.coreset_ratio}")
        if self.coreset_max < 1 or self.coreset_candidates < self.coreset_max or self.learned_candidates < 1:
            raise ValueError(f"need 1 <= coreset_max <= coreset_candidates and learned_candidates >= 1, not "
                             f"{self.coreset_max}, {self.coreset_candidates}, {self.learned_candidates}")
        if not 0 <= self.holdout_share < 0.5:
            raise ValueError(f"holdout_share must be in [0, 0.5), not {self.holdout_share}")
        if not 0 < self.zero_shot_fraction <= 1:
            raise ValueError(f"zero_shot_fraction must be in (0, 1], not {self.zero_shot_fraction}")
        if not 0 < self.zero_shot_coreset <= 1:
            raise ValueError(f"zero_shot_coreset must be in (0, 1], not {self.zero_shot_coreset}")
        if self.learned_dim < 1 or self.learned_squash <= 0 or self.learned_cells_per_image < 1:
            raise ValueError(f"need learned_dim >= 1, learned_squash > 0, learned_cells_per_image >= 1, not "
                             f"{self.learned_dim}, {self.learned_squash}, {self.learned_cells_per_image}")
        if min(self.learned_patch_norm, self.learned_washout_weight, self.learned_dark_weight) < 0:
            raise ValueError(f"learned_patch_norm, learned_washout_weight and learned_dark_weight must be >= 0, not "
                             f"{self.learned_patch_norm}, {self.learned_washout_weight}, {self.learned_dark_weight}")
        if self.tile_downscale < 0 or 0 < self.tile_downscale < 1:
            raise ValueError(f"tile_downscale must be 0 (never tile) or >= 1, not {self.tile_downscale}")
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be an odd number >= 1, not {self.neighbourhood}")

    def with_recorded(self, recorded: Mapping[str, Any]) -> DetectorConfig:
        """This config with the values a record (as_dict) kept, so that what ran is rebuilt even after a default
        changed: fields the record lacks keep this config's value, keys this code does not know are ignored, and
        local paths (weights, pairing) are never taken from a record that travelled."""
        known = {f.name for f in fields(self)} - {"weights", "pairing"}
        values = {k: (tuple(v) if k == "layers" else v) for k, v in recorded.items() if k in known}
        return replace(self, **values)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings (paths as strings), e.g. for the cache key and run records."""
        values = asdict(self)
        values["weights"] = None if self.weights is None else str(self.weights)
        values["pairing"] = None if self.pairing is None else str(self.pairing)
        values["layers"] = list(self.layers)
        return values
