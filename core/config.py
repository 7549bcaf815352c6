"""Every stage's settings as frozen dataclasses with the published defaults (configs as data).

Importable without torch, so the app's forms, the CLI's help and the job runner read the same
defaults the engine runs with. One seed and one fusion temperature, both on DiscoveryConfig; the
stages get them passed. The flat settings vocabulary of the app, the CLI and stored runs is the
table in core.settings; the `auto` decisions (backbone, epochs, representation) are made, with
their reasons, in core.decisions. This module does no file-system work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.detection.config import DetectorConfig
from core.errors import UserError
from core.representation import (AUTO_REPRESENTATION, REPRESENTATION_CHOICES, REPRESENTATIONS, Representation,
                                 representation)

__all__ = [
    "AUTO_REPRESENTATION",
    "AugmentConfig",
    "BINARIZERS",
    "DescriptorConfig",
    "DetectorConfig",
    "DiscoveryConfig",
    "EXTRACTIONS",
    "FALLBACKS",
    "PRIORS",
    "REFINEMENTS",
    "EstimateConfig",
    "GroupingConfig",
    "MEBinConfig",
    "MGViTConfig",
    "OPTIMIZERS",
    "PredictConfig",
    "REAL_USE_BACKBONE",
    "REPRESENTATIONS",
    "REPRESENTATION_CHOICES",
    "RegionConfig",
    "SCRATCH_BACKBONES",
    "SCRATCH_EPOCHS",
    "SettingsError",
    "TrainConfig",
    "is_scratch",
    "recommended_epochs",
]


class SettingsError(UserError, ValueError):
    """A setting the engine cannot run with; the message names the setting and the problem."""


# ------------------------------------------------------------------------------ stage 2-3


@dataclass(frozen=True)
class MEBinConfig:
    """Settings of MEBin with the published defaults; ``binarize(maps, **asdict(config))`` works."""

    sample_rate: int = 4  # step r between swept thresholds on the 0..255 scale (64 thresholds)
    min_interval_len: int = 4  # shortest run of equal component counts that counts as stable
    erode: bool = True  # erode each binary map with a kernel_size x kernel_size all-ones kernel
    kernel_size: int = 6  # side of the erosion kernel (OpenCV default anchor and border)


#: How anomaly maps become masks: MEBin (the method) or Otsu's threshold per map (ablation).
BINARIZERS = ("mebin", "otsu")


#: Region extraction modes: per-component and the paper's reference behaviour.
EXTRACTIONS = ("components", "reference")
#: How a components region's mask is drawn: redrawn against the normal references (core.regions.refine) or the map's own.
REFINEMENTS = ("references", "none")
#: What a components cut gives an image where nothing clears the floor: its strongest spot, or the whole image.
FALLBACKS = ("peak", "whole")


@dataclass(frozen=True)
class RegionConfig:
    """Geometry of the anomaly-centred crops (core.regions.crops); `extraction` picks the paper's path or per-component."""

    padding: float = 0.1  # extra margin around a component's bounding box, relative to its size
    min_crop: float = 0.1  # smallest crop radius, relative to the image's longer side
    merge_distance: float = 0.01  # boxes closer than this (relative to the longer side) merge
    keep: str = "reference"  # "reference": largest est_anomaly_num + 1 boxes; "all": every box
    extraction: str = "components"  # "components": one region per component; "reference": the paper's
    low_fraction: float = 0.5  # components: cut the map at this share of MEBin's threshold
    relative_peak: float = 0.3  # components: keep those whose peak reaches this share of the strongest
    join_distance: float = 0.01  # components: parts closer than this (share of the longer side) are one region
    mask_fraction: float = 0.6  # components: a region's mask = its pixels at or above this share of its own peak
    noise_z: float = 8.0  # components: the cut never goes below the set's map background + noise_z robust spreads ...
    floor_z: float = 2.0  # ... or, with 3+ held-out normal images scored by the detector, their peaks' median + floor_z spreads
    min_area: float = 2e-5  # components: smallest component, as a share of the image's pixels
    context: float = 0.5  # components: crop side = component's longer side * (1 + context)
    min_side: int = 24  # components: smallest crop side in pixels
    max_regions: int = 64  # components: at most this many regions per image (strongest first)
    refine: str = "references"  # components: redraw each mask from the image against the references (core.regions.refine)
    refine_references: int = 32  # refine: nearest references searched per image
    refine_search: float = 0.4  # refine: largest shift searched, as a share of the crop side
    refine_z: float = 3.0  # refine: the difference must exceed its surroundings by this many robust spreads
    refine_half: float = 0.5  # refine: ... and this share of the defect's own difference (half-maximum)
    refine_ratio: float = 1.5  # refine: references matching within this factor of the best are pooled
    fallback: str = "peak"  # components, nothing above the floor: "peak" = the map's strongest spot, "whole" = the image
    fallback_height: float = 0.5  # peak: cut at this share of the way from the map's median up to its peak

    def __post_init__(self) -> None:
        if self.extraction not in EXTRACTIONS:
            raise ValueError(f"extraction must be one of {EXTRACTIONS}, not {self.extraction!r}")
        if self.keep not in ("reference", "all"):
            raise ValueError(f"keep must be 'reference' or 'all', not {self.keep!r}")
        if not 0 < self.low_fraction <= 1 or not 0 <= self.relative_peak <= 1:
            raise ValueError("low_fraction must be in (0, 1] and relative_peak in [0, 1]")
        if self.noise_z < 0 or self.join_distance < 0 or not 0 <= self.mask_fraction <= 1:
            raise ValueError("noise_z and join_distance must be >= 0 and mask_fraction in [0, 1]")
        if self.floor_z < 0:
            raise ValueError(f"floor_z must be >= 0, got {self.floor_z}")
        if self.refine not in REFINEMENTS:
            raise ValueError(f"refine must be one of {REFINEMENTS}, not {self.refine!r}")
        if self.fallback not in FALLBACKS or not 0 < self.fallback_height < 1:
            raise ValueError(f"fallback must be one of {FALLBACKS} and fallback_height in (0, 1)")
        if self.refine_references < 1 or self.refine_ratio < 1 or not 0 <= self.refine_half < 1:
            raise ValueError("refine_references must be >= 1, refine_ratio >= 1 and refine_half in [0, 1)")


# --------------------------------------------------------------- representation of a region

#: REPRESENTATIONS, AUTO_REPRESENTATION and REPRESENTATION_CHOICES live in core.representation.
#: What the hybrid's MGViT is taught: the descriptor groups as its targets, or the paper's teacher alone.
PRIORS = ("descriptors", "none")


@dataclass(frozen=True)
class DescriptorConfig:
    """Sizes and group weights of the region descriptors (core.grouping.descriptors)."""

    size: int = 32  # crops are resized to size x size for texture and HOG
    ring: float = 0.25  # "around" = mask dilated by this share of its longer side (at least 2 px), minus the mask
    hog_cells: int = 4  # HOG grid cells per side
    hog_bins: int = 8  # HOG unsigned orientation bins
    geometry: float = 1.0  # group weights after standardization (measured on DeepPCB: intensity and
    intensity: float = 1.5  # surroundings carry most, HOG least: it is not rotation invariant)
    texture: float = 0.7
    hog: float = 0.2
    orientation: float = 0.7  # the mask's direction in the image (AITEX image NMI 0.469 -> 0.524, DeepPCB unchanged)

    def weight(self, group: str) -> float:
        return float(getattr(self, group))


@dataclass(frozen=True)
class GroupingConfig:
    """Settings of the spectral grouping and of the late fusion (core.grouping.spectral)."""

    vit_weight: float = 0.5  # hybrid: weight of the embedding beside the descriptors (each unit variance)
    # k of the nearest-neighbour graph (clamped to N - 1). 12 measured against 15 (docs/results.md): the DeepPCB box maps
    # and the demo group better, AITEX's F1 and its classification of new images worse (0.598 -> 0.510, 3 seeds)
    neighbors: int = 15
    dimensions: int = 0  # spectral coordinates kept; 0 = as many as groups are sought
    normal_score: float = 0.5  # a group whose mean anomaly score is below this may be the normal slot
    normal_margin: float = 0.15  # ... when the next weakest group scores at least this much more
    temperature: float = 0.5  # soft assignment: softmax(-distance^2 / (temperature * mean distance^2))
    n_init: int = 10  # k-means restarts

    def __post_init__(self) -> None:
        if self.vit_weight < 0:
            raise ValueError(f"vit_weight must be >= 0, got {self.vit_weight}")
        if self.neighbors < 2 or self.dimensions < 0:
            raise ValueError("neighbors must be at least 2 and dimensions at least 0")


# ------------------------------------------------------------------------------ stage 4-5

#: The backbone recommended for real use (needs the weights in the HF cache or via --weights).
REAL_USE_BACKBONE = "vit_base_patch16_224.dino"

#: Small ViTs trained from scratch (no weights needed), name -> VisionTransformer arguments.
SCRATCH_BACKBONES: dict[str, dict[str, int]] = {
    # offline default, sized so the demo (~150 regions) trains on 2 shared CPU cores in a few minutes:
    # ~5 s per epoch there (dim 192 / depth 6 took ~16 s per epoch for no better clustering)
    "vit_tiny_scratch": dict(patch_size=8, embed_dim=128, depth=4, num_heads=4, input_size=64),
    # smaller still, for tests and quick checks
    "vit_micro_scratch": dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, input_size=32),
}


@dataclass(frozen=True)
class MGViTConfig:
    """Settings of the mask-guided ViT."""

    backbone: str = "vit_tiny_scratch"  # a SCRATCH_BACKBONES name or any timm ViT name (real use: REAL_USE_BACKBONE)
    input_size: int | None = None  # crop side fed to the ViT; None = the backbone's own (64 scratch, 224 timm)
    masked_blocks: int | None = None  # L_m, the last blocks with guided attention; None: the reference's 3/4 (9 of 12) [9]
    grad_from_block: int = 11  # blocks before this one are frozen [11]; ignored (all trained) without weights
    pretrained: bool = False  # load timm's pretrained weights for a timm name (HF cache; fails offline)
    weights: Path | None = None  # local weight file (timm or official DINO layout, .pth/.pt/.safetensors)
    mask_threshold: float = 0.5  # a patch is foreground when its pooled mask value is >= this [0.5]

    def __post_init__(self) -> None:
        if self.weights is not None and not isinstance(self.weights, Path):
            object.__setattr__(self, "weights", Path(self.weights))


#: `backbone="auto"`: decided in core.decisions (REAL_USE_BACKBONE when its weights are here).
AUTO_VIT = "auto"


def is_scratch(config: MGViTConfig) -> bool:
    """True when the backbone starts from random weights (nothing pretrained, no file)."""
    return config.weights is None and (config.backbone in SCRATCH_BACKBONES or not config.pretrained)


@dataclass(frozen=True)
class AugmentConfig:
    """Settings of the two training views per crop."""

    crop_pct: float = 0.875  # crops are stored at input_size / crop_pct, views cut from them [0.875]
    crop_scale: tuple[float, float] = (0.5, 1.0)  # random resized crop: area fraction range
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random resized crop: aspect ratio range
    hflip_prob: float = 0.5  # horizontal flip
    vflip_prob: float = 0.5  # vertical flip
    rotate90: bool = True  # rotation by a random multiple of 90 degrees
    jitter_prob: float = 0.8  # color jitter (brightness, contrast, saturation, hue)
    brightness: float = 0.4  # factor range 1 +- this
    contrast: float = 0.4  # factor range 1 +- this
    saturation: float = 0.4  # factor range 1 +- this
    hue: float = 0.1  # hue shift range +- this (fraction of a turn)
    sharpness_prob: float = 0.3  # sharpness adjustment with factor sharpness_factor
    sharpness_factor: float = 2.0  # as torchvision's adjust_sharpness
    blur_prob: float = 0.2  # Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # Gaussian blur sigma range, pixels at input size
    posterize_prob: float = 0.2  # posterize
    posterize_bits: int = 4  # bits kept by posterize


#: TrainConfig.optimizer: auto (sgd with loaded weights, adamw from scratch), sgd or adamw.
OPTIMIZERS = ("auto", "sgd", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training stage (published defaults of docs/method.md stage 5); the seed is passed."""

    epochs: int = 50  # [50]; the scratch backbone is usually run with SCRATCH_EPOCHS
    batch_size: int = 32  # [32]
    lr: float = 0.1  # SGD start learning rate [0.1]
    momentum: float = 0.9  # SGD momentum [0.9]
    weight_decay: float = 5e-5  # on weights only, none on biases and norms [5e-5]
    lr_floor: float = 1e-3  # cosine schedule ends at lr * lr_floor [1e-3]
    optimizer: str = "auto"  # "sgd" [reference], "adamw", or "auto": sgd with loaded weights, adamw from scratch
    adamw_lr: float = 1e-3  # start learning rate when the optimizer is adamw (lr is SGD's)
    adamw_weight_decay: float = 0.05  # weight decay when the optimizer is adamw (weight_decay is SGD's)
    grad_clip: float | None = None  # clip the gradient norm; None = off [reference]; "auto" from scratch uses 1.0
    n_heads: int = 4  # cosine classifier heads; the lowest mean L_cls^u over the last epoch wins [4]
    proj_hidden: int = 2048  # projector MLP hidden width [2048]
    proj_out: int = 256  # projector output width [256]
    proj_layers: int = 3  # projector MLP layers [3]
    sup_weight: float = 0.3  # lambda: weight of the labeled terms [0.3]
    memax_weight: float = 4.0  # weight of the mean-entropy regularizer [4]
    student_temp: float = 0.1  # [0.1]
    teacher_temp_start: float = 0.07  # teacher temperature warm-up start [0.07]
    teacher_temp_end: float = 0.04  # teacher temperature after warm-up [0.04]
    teacher_warmup_epochs: int = 40  # warm-up length, scaled to epochs when epochs < 50 [40]
    unsup_con_temp: float = 1.0  # InfoNCE temperature [1.0]
    sup_con_temp: float = 0.07  # SupCon temperature [0.07]
    plc: bool = True  # pseudo-label correction toward the normal slot [on]
    plc_offset: float = 0.5  # PLC weight w = max(0, offset - anomaly score) [0.5]
    amp_bf16: bool = True  # bf16 autocast, on CUDA only
    guided: bool = True  # mask-guided attention (False = the unguided ablation)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # view generation


#: Recommended epochs for a backbone trained from scratch: on demo-sized sets (~150 crops) its
#: losses flatten after ~10-15 epochs, and 30 keeps a 2-core CPU demo to a few minutes (~5 s/epoch).
SCRATCH_EPOCHS = 30


def recommended_epochs(model_config: MGViTConfig) -> int:
    """Default epoch count for a backbone: SCRATCH_EPOCHS from scratch, the published 50 otherwise."""
    return SCRATCH_EPOCHS if is_scratch(model_config) else TrainConfig.epochs


# ------------------------------------------------------------------------------ stage 6


@dataclass(frozen=True)
class PredictConfig:
    """Settings of region prediction and of the 2-D map."""

    temperature: float = 0.1  # logits are divided by this before the softmax (as in training)
    include_base: bool = False  # also predict base (labelled) classes; False = novel only (paper)
    umap_neighbors: int = 15  # UMAP n_neighbors, clamped to the number of regions - 1
    umap_min_dist: float = 0.1  # UMAP min_dist
    umap_min_points: int = 5  # fewer regions than this: PCA instead of UMAP


@dataclass(frozen=True)
class EstimateConfig:
    """Settings of the class-count estimate (eigengap of the kNN graph, core.grouping.estimate)."""

    k_min: int = 2  # smallest number of classes tried
    k_max: int = 12  # largest number of classes tried (clamped to the number of samples - 1)
    neighbors: int = 15  # k of the nearest-neighbour graph, as the grouping's (GroupingConfig.neighbors)
    references: int = 3  # shuffled references whose eigengaps are subtracted
    max_samples: int = 3000  # subsample larger sets (eigenvalues of an N x N sparse graph)
    min_score: float = 0.0  # regions with anomaly score below this are left out when enough remain (0: none)


# ------------------------------------------------------------------------------ the whole run

@dataclass(frozen=True)
class DiscoveryConfig:
    """Every setting of one discovery run; each stage's settings keep their published defaults."""

    mebin: MEBinConfig = field(default_factory=MEBinConfig)  # MEBin sweep settings
    regions: RegionConfig = field(default_factory=RegionConfig)  # crop geometry
    model: MGViTConfig = field(default_factory=MGViTConfig)  # the mask-guided ViT
    train: TrainConfig = field(default_factory=TrainConfig)  # training schedule and loss weights
    classes: int | None = None  # K novel defect classes (normal slot on top); None = estimate
    tau: float = 100.0  # fusion temperature on sqrt(region area) [100 MVTec AD, 50 MTD]
    predict: PredictConfig = field(default_factory=PredictConfig)  # temperature, UMAP settings
    estimate: EstimateConfig = field(default_factory=EstimateConfig)  # class-count sweep
    detector: DetectorConfig = field(default_factory=DetectorConfig)  # built-in detector (its seed is `seed`)
    binarizer: str = "mebin"  # "mebin" (the method) or "otsu" (fixed per-map Otsu threshold)
    representation: str = "descriptors"  # what grouping works on: "vit" (the paper), "descriptors", "hybrid"
    # (settings and CLI: "auto" = core.decisions, hybrid with a pretrained ViT; the default
    # model here is the scratch ViT, so the default representation is what auto takes for it)
    descriptors: DescriptorConfig = field(default_factory=DescriptorConfig)  # fixed region descriptors
    grouping: GroupingConfig = field(default_factory=GroupingConfig)  # spectral grouping, fusion weight
    prior: str = "none"  # hybrid: "descriptors" = the MGViT learns the descriptor groups (demo +0.06, DeepPCB -0.04 NMI)
    ground_truth: Path | None = None  # COCO annotations for region-level metrics [root/annotations.json]
    seed: int = 0  # seeds the detector, training, UMAP and the estimate
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps"

    def __post_init__(self) -> None:
        if self.binarizer not in BINARIZERS:
            raise SettingsError(f"binarizer must be one of {BINARIZERS}, not {self.binarizer!r}")
        if self.tau <= 0:
            raise SettingsError(f"tau must be positive, got {self.tau}")
        if self.representation not in REPRESENTATIONS:
            raise SettingsError(f"representation must be one of {REPRESENTATIONS}, not {self.representation!r}")
        if self.prior not in PRIORS:
            raise SettingsError(f"prior must be one of {PRIORS}, not {self.prior!r}")

    @property
    def space(self) -> Representation:
        """The representation regions are grouped on, as an object (core.representation)."""
        return representation(self.representation)
