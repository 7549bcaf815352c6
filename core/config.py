"""Every stage's settings as frozen dataclasses with the published defaults (configs as data).

Importable without torch, so the app's forms, the CLI's help and the job runner read the same
defaults the engine runs with. One seed and one fusion temperature, both on DiscoveryConfig; the
stages get them passed. `DiscoveryConfig.from_settings` turns the flat settings vocabulary of
the app and the CLI (SETTINGS_KEYS) into a config, and `to_settings` turns it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from core.detection.config import DetectorConfig
from core.errors import UserError

__all__ = [
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
    "PredictConfig",
    "REAL_USE_BACKBONE",
    "REPRESENTATIONS",
    "REPRESENTATION_CHOICES",
    "RegionConfig",
    "SCRATCH_BACKBONES",
    "SCRATCH_EPOCHS",
    "SETTINGS_KEYS",
    "SettingsError",
    "TrainConfig",
    "is_scratch",
    "resolve_representation",
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

#: What grouping works on: the paper's MGViT embedding and heads, fixed descriptors, or both.
REPRESENTATIONS = ("vit", "descriptors", "hybrid")
#: `representation="auto"` (the CLI's and the app's default): decided by `resolve_representation`.
AUTO_REPRESENTATION = "auto"
#: What the settings, the CLI and the app accept: auto or one of REPRESENTATIONS.
REPRESENTATION_CHOICES = (AUTO_REPRESENTATION, *REPRESENTATIONS)
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

    def weight(self, group: str) -> float:
        return float(getattr(self, group))


@dataclass(frozen=True)
class GroupingConfig:
    """Settings of the spectral grouping and of the late fusion (core.grouping.spectral)."""

    vit_weight: float = 0.5  # hybrid: weight of the embedding beside the descriptors (each unit variance)
    neighbors: int = 15  # k of the nearest-neighbour graph (clamped to N - 1)
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


#: `backbone="auto"`: REAL_USE_BACKBONE when its weights are here, else the scratch default.
AUTO_VIT = "auto"


def resolve_vit_backbone(model: MGViTConfig) -> tuple[MGViTConfig, str]:
    """(the config with "auto" decided, one line saying which backbone and why).

    auto takes REAL_USE_BACKBONE with a --weights file, or pretrained when its weights are already
    in the timm / Hugging Face cache; else the offline scratch default. It never downloads (name
    the backbone with --pretrained for that). Other names pass unchanged.
    """
    if model.backbone != AUTO_VIT:
        return model, f"backbone {model.backbone} as asked"
    if model.weights is not None:
        return (replace(model, backbone=REAL_USE_BACKBONE, pretrained=False),
                f"backbone {REAL_USE_BACKBONE} with the weights file {model.weights.name}")
    from core.detection.backbones import cached_weights  # timm: imported only when auto is asked

    found = cached_weights(REAL_USE_BACKBONE)
    if found is not None:
        return (replace(model, backbone=REAL_USE_BACKBONE, pretrained=True),
                f"backbone {REAL_USE_BACKBONE}: its pretrained weights are in the cache ({found.parent})")
    scratch = MGViTConfig.backbone
    return (replace(model, backbone=scratch, pretrained=False),
            f"backbone {scratch} (offline, trained from scratch): no pretrained {REAL_USE_BACKBONE} weights in "
            f"the timm/Hugging Face cache and no --weights; auto does not download (name --backbone "
            f"{REAL_USE_BACKBONE} --pretrained to download it once)")


def is_scratch(config: MGViTConfig) -> bool:
    """True when the backbone starts from random weights (nothing pretrained, no file)."""
    return config.weights is None and (config.backbone in SCRATCH_BACKBONES or not config.pretrained)


def resolve_representation(representation: str, model: MGViTConfig) -> tuple[str, str]:
    """(the representation a run groups on, one line saying why) for a resolved backbone.

    auto: "hybrid" when the MGViT starts from pretrained weights (a weights file or timm's
    pretrained weights), "descriptors" when it would be trained from scratch. Measured offline
    (scratch ViT, K given): the hybrid never beat the descriptors alone beyond noise, on five
    generated demos (image NMI 0.337-0.504 against 0.423-0.542), the hard textured set (0.504
    both) and all 500 DeepPCB images (region NMI 0.807 against 0.802 with the template maps,
    0.758 against 0.774 with the annotated pixels), and it trains for minutes (22 against ~1 on
    DeepPCB). Other names pass unchanged.
    """
    if representation != AUTO_REPRESENTATION:
        return representation, f"regions grouped on {representation} as asked"
    if is_scratch(model):
        return "descriptors", (f"regions grouped on their descriptors alone (the {model.backbone} ViT would be "
                               "trained from scratch, which adds nothing measurable beside them; give DINO "
                               "weights for the hybrid)")
    return "hybrid", f"regions grouped on the descriptors beside the pretrained {model.backbone} embedding (hybrid)"


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


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training stage (published defaults of METHOD.md stage 5); the seed is passed."""

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

#: The flat settings vocabulary of the app's forms, the CLI and stored runs -> what it sets.
SETTINGS_KEYS: dict[str, str] = {
    "classes": "K novel defect classes, or 'auto' to estimate K",
    "backbone": "MGViTConfig.backbone",
    "weights": "MGViTConfig.weights (a local file; must exist)",
    "pretrained": "MGViTConfig.pretrained",
    "image_size": "MGViTConfig.input_size (0 or None: the backbone's own)",
    "epochs": "TrainConfig.epochs (None: SCRATCH_EPOCHS from scratch, 50 otherwise)",
    "batch_size": "TrainConfig.batch_size (at least 2)",
    "lr": "start learning rate of whichever optimizer runs (sets TrainConfig.lr and adamw_lr)",
    "sgd_lr": "TrainConfig.lr alone",
    "adamw_lr": "TrainConfig.adamw_lr alone",
    "optimizer": "TrainConfig.optimizer",
    "guided": "TrainConfig.guided (False: the unguided ablation)",
    "tau": "DiscoveryConfig.tau, the fusion temperature",
    "seed": "DiscoveryConfig.seed, for every seeded stage",
    "device": "DiscoveryConfig.device",
    "binarizer": "DiscoveryConfig.binarizer",
    "representation": "DiscoveryConfig.representation (auto, vit, descriptors or hybrid; auto = hybrid with a pretrained ViT, else descriptors)",
    "prior": "DiscoveryConfig.prior (hybrid: descriptors = the MGViT learns the descriptor groups; none = the paper's teacher)",
    "extraction": "RegionConfig.extraction (components or reference)",
    "refine": "RegionConfig.refine (references: masks redrawn against the normal references; none: the map's)",
    "fallback": "RegionConfig.fallback (peak: an image where nothing clears the floor gets its strongest spot; whole: the image)",
    "ground_truth": "DiscoveryConfig.ground_truth (a COCO file; must exist)",
    "detector_method": "DetectorConfig.method",
    "detector_backbone": "DetectorConfig.backbone",
    "detector_weights": "DetectorConfig.weights",
    "mebin_sample_rate": "MEBinConfig.sample_rate",
    "mebin_min_interval_len": "MEBinConfig.min_interval_len",
    "mebin_erode": "MEBinConfig.erode",
    "mebin_kernel_size": "MEBinConfig.kernel_size",
}


def _given(settings: Mapping[str, Any], key: str) -> bool:
    return settings.get(key) not in (None, "")


def _number(settings: Mapping[str, Any], key: str, cast: type) -> Any:
    value = settings[key]
    if isinstance(value, bool):
        raise SettingsError(f"{key} must be a number, not {value!r}")
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{key} must be a {'whole ' if cast is int else ''}number, not {value!r}") from None


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
    # (settings and CLI: "auto" = resolve_representation, hybrid with a pretrained ViT; the default
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

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> DiscoveryConfig:
        """The config of a run's flat settings (SETTINGS_KEYS); missing keys keep the defaults.

        Keys outside SETTINGS_KEYS belong to the job (maps folder, labels, ...) and are ignored.
        Without `epochs` a from-scratch backbone gets SCRATCH_EPOCHS, others the published 50.
        Raises SettingsError naming the setting that cannot be used.
        """
        model = MGViTConfig()
        if _given(settings, "backbone"):
            model = replace(model, backbone=str(settings["backbone"]))
        if _given(settings, "weights"):
            weights = Path(settings["weights"]).expanduser()
            if not weights.is_file():
                raise SettingsError(f"{weights}: weight file does not exist")
            model = replace(model, weights=weights)
        if settings.get("pretrained") is not None:
            model = replace(model, pretrained=bool(settings["pretrained"]))
        if _given(settings, "image_size"):
            size = _number(settings, "image_size", int)
            if size < 0:
                raise SettingsError(f"image_size must be 0 (the backbone's own) or positive, got {size}")
            model = replace(model, input_size=size or None)
        model, _ = resolve_vit_backbone(model)

        train: dict[str, Any] = {}
        epochs = _number(settings, "epochs", int) if _given(settings, "epochs") else recommended_epochs(model)
        if epochs < 1:
            raise SettingsError(f"epochs must be at least 1, got {epochs}")
        train["epochs"] = epochs
        if _given(settings, "batch_size"):
            train["batch_size"] = _number(settings, "batch_size", int)
            if train["batch_size"] < 2:
                raise SettingsError(f"batch_size must be at least 2, got {train['batch_size']}")
        if _given(settings, "lr"):  # one learning rate for whichever optimizer the run uses
            train["lr"] = train["adamw_lr"] = _number(settings, "lr", float)
        if _given(settings, "sgd_lr"):
            train["lr"] = _number(settings, "sgd_lr", float)
        if _given(settings, "adamw_lr"):
            train["adamw_lr"] = _number(settings, "adamw_lr", float)
        for key in ("lr", "adamw_lr"):
            if key in train and train[key] <= 0:
                raise SettingsError(f"learning rate must be positive, got {train[key]}")
        if _given(settings, "optimizer"):
            if settings["optimizer"] not in ("auto", "sgd", "adamw"):
                raise SettingsError(f"optimizer must be auto, sgd or adamw, not {settings['optimizer']!r}")
            train["optimizer"] = str(settings["optimizer"])
        if settings.get("guided") is not None:
            train["guided"] = bool(settings["guided"])

        seed = _number(settings, "seed", int) if _given(settings, "seed") else cls.seed
        detector: dict[str, Any] = {"seed": seed}
        if _given(settings, "detector_method"):
            detector["method"] = str(settings["detector_method"])
        if _given(settings, "detector_backbone"):
            detector["backbone"] = str(settings["detector_backbone"])
        if _given(settings, "detector_weights"):
            detector["weights"] = Path(settings["detector_weights"]).expanduser()
        try:
            detector_config = DetectorConfig(**detector)
        except ValueError as error:
            raise SettingsError(f"detector: {error}") from error

        mebin: dict[str, Any] = {}
        for item in fields(MEBinConfig):
            key = f"mebin_{item.name}"
            if settings.get(key) is not None:
                mebin[item.name] = bool(settings[key]) if item.name == "erode" else _number(settings, key, int)
        if mebin.get("sample_rate", 1) < 1 or mebin.get("min_interval_len", 1) < 1 or mebin.get("kernel_size", 1) < 1:
            raise SettingsError(f"MEBin settings must be at least 1, got {mebin}")

        classes = settings.get("classes")
        if classes in (None, "", "auto"):
            k = None
        else:
            k = _number(settings, "classes", int)
        values: dict[str, Any] = dict(
            model=model, train=TrainConfig(**train), mebin=MEBinConfig(**mebin), classes=k,
            detector=detector_config, seed=seed,
        )
        if _given(settings, "tau"):
            values["tau"] = _number(settings, "tau", float)
        if _given(settings, "device"):
            values["device"] = str(settings["device"])
        if _given(settings, "binarizer"):
            values["binarizer"] = str(settings["binarizer"])
        asked = str(settings["representation"]) if _given(settings, "representation") else AUTO_REPRESENTATION
        if asked not in REPRESENTATION_CHOICES:
            raise SettingsError(f"representation must be one of {REPRESENTATION_CHOICES}, not {asked!r}")
        values["representation"] = resolve_representation(asked, model)[0]
        if _given(settings, "prior"):
            values["prior"] = str(settings["prior"])
        regions: dict[str, Any] = {}
        if _given(settings, "extraction"):
            if settings["extraction"] not in EXTRACTIONS:
                raise SettingsError(f"extraction must be one of {EXTRACTIONS}, not {settings['extraction']!r}")
            regions["extraction"] = str(settings["extraction"])
        if _given(settings, "refine"):
            if settings["refine"] not in REFINEMENTS:
                raise SettingsError(f"refine must be one of {REFINEMENTS}, not {settings['refine']!r}")
            regions["refine"] = str(settings["refine"])
        if _given(settings, "fallback"):
            if settings["fallback"] not in FALLBACKS:
                raise SettingsError(f"fallback must be one of {FALLBACKS}, not {settings['fallback']!r}")
            regions["fallback"] = str(settings["fallback"])
        if regions:
            values["regions"] = RegionConfig(**regions)
        if _given(settings, "ground_truth"):
            truth = Path(settings["ground_truth"]).expanduser()
            if not truth.is_file():
                raise SettingsError(f"{truth}: ground-truth file does not exist")
            values["ground_truth"] = truth
        return cls(**values)

    def to_settings(self) -> dict[str, Any]:
        """The flat settings (SETTINGS_KEYS) that from_settings turns back into this config.

        Fields outside the vocabulary (loss weights, augmentation, ...) are not written: a config
        that changes them does not survive the round trip, one built by from_settings does.
        """
        return {
            "classes": "auto" if self.classes is None else int(self.classes),
            "backbone": self.model.backbone,
            "weights": None if self.model.weights is None else str(self.model.weights),
            "pretrained": self.model.pretrained,
            "image_size": self.model.input_size,
            "epochs": self.train.epochs,
            "batch_size": self.train.batch_size,
            "sgd_lr": self.train.lr,
            "adamw_lr": self.train.adamw_lr,
            "optimizer": self.train.optimizer,
            "guided": self.train.guided,
            "tau": self.tau,
            "seed": self.seed,
            "device": self.device,
            "binarizer": self.binarizer,
            "representation": self.representation,
            "prior": self.prior,
            "extraction": self.regions.extraction,
            "refine": self.regions.refine,
            "fallback": self.regions.fallback,
            "ground_truth": None if self.ground_truth is None else str(self.ground_truth),
            "detector_method": self.detector.method,
            "detector_backbone": self.detector.backbone,
            "detector_weights": None if self.detector.weights is None else str(self.detector.weights),
            **{f"mebin_{item.name}": getattr(self.mebin, item.name) for item in fields(MEBinConfig)},
        }
