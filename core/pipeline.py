"""The discovery pipeline: maps -> MEBin -> regions -> MGViT training -> prediction -> metrics.

Strings the stages of core together and reports progress through a callback. Knows nothing of
Streamlit or SQL: the CLI and the app's job runner call `run_discovery` and store what it returns.
"""

from __future__ import annotations

import dataclasses

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from core.cli import UserError
from core.estimate import ClassEstimate, EstimateConfig, estimate_num_classes
from core.fusion import fuse_image
from core.mebin import MEBinConfig
from core.predict import NORMAL_CLASS_NAME, PredictConfig, predict_regions
from core.records import GOOD, ImageRecord, Manifest, Region
from core.regions import RegionConfig

__all__ = [
    "BINARIZERS",
    "DiscoveryCancelled",
    "DiscoveryConfig",
    "DiscoveryResult",
    "ImageResult",
    "LabeledCrops",
    "PipelineError",
    "PipelineProgress",
    "RegionResult",
    "STAGES",
    "backbone_features",
    "load_labeled_crops",
    "run_discovery",
]

#: Stages in order, with their share of the overall progress bar.
STAGES: dict[str, float] = {
    "maps": 0.10,
    "mebin": 0.04,
    "regions": 0.04,
    "estimate": 0.04,
    "training": 0.70,
    "prediction": 0.06,
    "metrics": 0.02,
}

#: How anomaly maps become masks: MEBin (the method) or Otsu's threshold per map (ablation).
BINARIZERS = ("mebin", "otsu")


class PipelineError(UserError):
    """Input the pipeline cannot work with; the message says what is wrong and what to do."""


class DiscoveryCancelled(Exception):
    """Raised when should_cancel() turns true between stages (before a model exists)."""


def _default_model_config() -> Any:
    from core.mgvit import MGViTConfig

    return MGViTConfig()


def _default_train_config() -> Any:
    from core.train import TrainConfig

    return TrainConfig()


def _default_detector_config() -> Any:
    from core.detection.config import DetectorConfig

    return DetectorConfig()


@dataclass(frozen=True)
class DiscoveryConfig:
    """Every setting of one discovery run; each stage's settings keep their published defaults."""

    mebin: MEBinConfig = field(default_factory=MEBinConfig)  # MEBin sweep settings
    regions: RegionConfig = field(default_factory=RegionConfig)  # crop geometry
    model: Any = field(default_factory=_default_model_config)  # core.mgvit.MGViTConfig
    train: Any = field(default_factory=_default_train_config)  # core.train.TrainConfig
    classes: int | None = None  # K novel defect classes (normal slot on top); None = estimate
    tau: float = 100.0  # fusion temperature on sqrt(region area) [100 MVTec AD, 50 MTD]
    predict: PredictConfig = field(default_factory=PredictConfig)  # temperature, UMAP settings
    estimate: EstimateConfig = field(default_factory=EstimateConfig)  # class-count sweep
    detector: Any = field(default_factory=_default_detector_config)  # core.detection DetectorConfig
    binarizer: str = "mebin"  # "mebin" (the method) or "otsu" (fixed per-map Otsu threshold)
    seed: int = 0  # seeds training, UMAP and the estimate
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps"

    def __post_init__(self) -> None:
        if self.binarizer not in BINARIZERS:
            raise ValueError(f"binarizer must be one of {BINARIZERS}, not {self.binarizer!r}")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")


@dataclass
class PipelineProgress:
    """One progress report: the stage, how far it is, how far the whole run is."""

    stage: str  # one of STAGES
    fraction: float  # 0..1 within the stage
    overall: float  # 0..1 over the whole run
    message: str = ""
    train: Any = None  # core.train.TrainProgress while training


@dataclass
class LabeledCrops:
    """An imported labeled set: crops with masks and class names (they become base classes)."""

    crops: list[np.ndarray]  # H x W x 3 uint8
    masks: list[np.ndarray]  # H x W uint8 0/255
    labels: np.ndarray  # int64 index into base_classes
    base_classes: list[str]


@dataclass
class RegionResult:
    """One anomaly region with its predicted class and coordinates in the 2-D map."""

    region: Region  # crop, mask, box, area, score
    cluster: int  # column of `DiscoveryResult.cluster_names`
    confidence: float  # probability of that cluster
    probabilities: np.ndarray  # over DiscoveryResult.cluster_names, sums to 1
    embedding: np.ndarray  # L2-normalized CLS feature
    umap_x: float
    umap_y: float
    gt: str | None = None  # ground-truth class of the region's image, when known
    label: str | None = None  # class given by the user for this region, if any

    @property
    def key(self) -> str:
        return self.region.key

    @property
    def image(self) -> str:
        return self.region.image


@dataclass
class ImageResult:
    """One inspected image, classified by fusing its regions."""

    image: str  # relpath (the image's key)
    cluster: int
    confidence: float
    probabilities: np.ndarray
    n_regions: int
    gt: str | None  # ground-truth class, when the layout has one
    threshold: int  # binarization threshold on the normalized map's scale
    num_anomalies: int  # MEBin's estimated anomaly count
    score: float  # largest region score (0..1)


@dataclass
class DiscoveryResult:
    """Everything a discovery run produced."""

    regions: list[RegionResult]
    images: list[ImageResult]
    cluster_names: list[str]  # names of the probability columns
    normal_cluster: int  # column of the reserved "normal / false detection" class
    n_classes: int  # K novel defect classes (without the normal slot)
    base_classes: list[str]
    binarization: dict[str, Any]  # image key -> MEBin (or Otsu) result
    metrics: dict[str, Any] | None  # DESIGN.md metrics.json content; None without ground truth
    timings: dict[str, float]  # seconds per stage
    estimate: ClassEstimate | None  # how K was estimated (None when given)
    model: Any  # core.train.DiscoveryModel
    train_result: Any  # core.train.TrainResult (history, epochs_done)
    cancelled: bool = False  # training was cancelled; predictions come from the partial model
    problems: list[str] = field(default_factory=list)  # files left out, with reasons


# --------------------------------------------------------------------------------- helpers


class _Reporter:
    def __init__(self, callback: Callable[[PipelineProgress], None] | None) -> None:
        self.callback = callback
        self.done = 0.0  # overall share of finished stages

    def __call__(self, stage: str, fraction: float, message: str = "", train: Any = None) -> None:
        if self.callback is None:
            return
        fraction = float(min(max(fraction, 0.0), 1.0))
        overall = min(1.0, self.done + STAGES[stage] * fraction)
        self.callback(PipelineProgress(stage, fraction, overall, message, train))

    def finish(self, stage: str, message: str = "") -> None:
        self(stage, 1.0, message)
        self.done += STAGES[stage]


def _check_cancel(should_cancel: Callable[[], bool] | None, stage: str) -> None:
    if should_cancel is not None and should_cancel():
        raise DiscoveryCancelled(f"cancelled before {stage}")


def _detect(
    manifest: Manifest, config: DiscoveryConfig, device: Any, report: _Reporter, cache_dir: Path | None
) -> dict[str, np.ndarray]:
    """Built-in detector: PatchCore when normal references exist, else zero-shot."""
    from dataclasses import replace

    from core import detection

    detector = config.detector
    if not manifest.normal and detector.method == "patchcore":
        detector = replace(detector, method="zero-shot")

    def progress(stage: str, done: int, total: int) -> None:
        report("maps", done / max(total, 1), f"{detector.method}: {stage} {done}/{total}")

    try:
        found = detection.detect(manifest, detector, device, progress=progress, cache_dir=cache_dir)
    except ValueError as error:  # DetectionError and bad settings: the message names the problem
        raise PipelineError(f"anomaly detection failed: {error}") from error
    return {key: np.asarray(value, dtype=np.float32) for key, value in found.maps.items()}


def _otsu(normalized: Sequence[np.ndarray], kernel_size: int = 6) -> list[Any]:
    """Otsu's threshold per map (the paper's ablation), eroded like MEBin; count = components."""

    kernel = np.ones((kernel_size, kernel_size), np.uint8)
    results = []
    for array in normalized:
        threshold, _ = cv2.threshold(array, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        mask = cv2.erode(np.where(array > threshold, 255, 0).astype(np.uint8), kernel)
        count = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)[0] - 1
        results.append(SimpleNamespace(mask=mask, threshold=int(threshold), num_anomalies=int(count),
                                       normalized=array.astype(np.float32)))
    return results


def load_labeled_crops(folder: Path | str) -> LabeledCrops:
    """Read an imported labeled set: folder/<class name>/<crop>.png, optional <crop>_mask.png.

    A crop without a mask file gets an all-foreground mask. Raises PipelineError naming the
    folder or file that cannot be used.
    """
    from core.imageio import ImageReadError, is_image_file, read_gray, read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: labeled set folder does not exist")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise PipelineError(f"{folder}: labeled set needs one subfolder of crops per class")
    crops, masks, labels, names = [], [], [], []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if is_image_file(p) and not p.stem.endswith("_mask"))
        if not files:
            continue
        names.append(class_dir.name)
        for path in files:
            try:
                crop = read_image(path)
                mask_path = path.with_name(f"{path.stem}_mask.png")
                mask = read_gray(mask_path) if mask_path.is_file() else np.full(crop.shape[:2], 255, np.uint8)
            except ImageReadError as error:
                raise PipelineError(str(error)) from error
            if mask.shape != crop.shape[:2]:
                mask = cv2.resize(mask, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_NEAREST)
            crops.append(crop)
            masks.append(np.where(mask > 127, 255, 0).astype(np.uint8))
            labels.append(len(names) - 1)
    if not crops:
        raise PipelineError(f"{folder}: no crop images found in its class subfolders")
    return LabeledCrops(crops, masks, np.asarray(labels, dtype=np.int64), names)


def _metrics(images: Sequence[ImageResult], regions: Sequence[RegionResult], normal_cluster: int) -> dict[str, Any] | None:
    """DESIGN.md metrics: defective images and their regions; normal images; all with good."""
    from core.metrics import cluster_metrics

    known = [r for r in images if r.gt is not None]
    if not known:
        return None
    defective = [r for r in known if r.gt != GOOD]
    defective_keys = {r.image for r in defective}
    defect_regions = [r for r in regions if r.image in defective_keys]

    def block(y_true: list, y_pred: list) -> dict[str, Any]:
        values: dict[str, Any] = cluster_metrics(y_true, y_pred) if y_true else {"nmi": None, "ari": None, "f1": None}
        values = {k: (None if v is None or not np.isfinite(v) else float(v)) for k, v in values.items()}
        values["n"] = len(y_true)
        return values

    normal = [r for r in known if r.gt == GOOD]
    share = float(np.mean([r.cluster == normal_cluster for r in normal])) if normal else None
    return {
        "image": block([r.gt for r in defective], [r.cluster for r in defective]),
        "region": block([r.gt for r in defect_regions], [r.cluster for r in defect_regions]),
        "normal_images": {"share_predicted_normal": share, "n": len(normal)},
        "image_with_good": block([r.gt for r in known], [r.cluster for r in known]),
        "classes": sorted({r.gt for r in defective}),
    }


# ------------------------------------------------------------------------------- the run


def _with_threshold(result: Any, map_u8: np.ndarray, threshold: int, mebin: MEBinConfig) -> Any:
    """A binarization result with the engineer's threshold instead of the chosen one."""
    from core.mebin import mask_at_threshold

    mask, count = mask_at_threshold(map_u8, threshold, erode=mebin.erode, kernel_size=mebin.kernel_size)
    changes = dict(mask=mask, threshold=int(threshold), num_anomalies=count)
    if dataclasses.is_dataclass(result):
        return dataclasses.replace(result, **changes)
    return SimpleNamespace(**{**vars(result), **changes})


def run_discovery(
    manifest: Manifest,
    config: DiscoveryConfig = DiscoveryConfig(),
    *,
    maps: Mapping[str, np.ndarray] | None = None,
    labeled: Any | None = None,
    region_labels: Mapping[str, str] | None = None,
    progress: Callable[[PipelineProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    workdir: Path | None = None,
    thresholds: Mapping[str, int] | None = None,
) -> DiscoveryResult:
    """Discover defect classes in the manifest's unlabeled images.

    maps: raw anomaly maps by image relpath (any scale; resized to the images); None runs the
    built-in detector. labeled: an imported labeled set (LabeledCrops-like). region_labels:
    region key -> class name given by the user; those names become base classes and are
    predicted too. workdir: where training keeps its resumable checkpoint. thresholds: image relpath
    -> threshold on the normalized map's 0..255 scale set by an engineer; it replaces MEBin's choice
    for that image (mask = erode(map > t)).
    Raises PipelineError for input it cannot use, DiscoveryCancelled when cancelled early.
    """
    from core.device import resolve_device
    from core.imageio import ImageReadError, read_image
    from core.maps import normalize_global, resize_to
    from core.mebin import binarize
    from core.regions import extract_regions

    report = _Reporter(progress)
    timings: dict[str, float] = {}
    problems: list[str] = [str(p) for p in manifest.problems]
    try:
        device = resolve_device(config.device)
    except ValueError as error:
        raise PipelineError(str(error)) from error
    records = manifest.unlabeled
    if len(records) == 0:
        raise PipelineError(f"{manifest.root}: no images to inspect (only normal references)")
    if len(records) < 2:
        raise PipelineError(
            f"{manifest.root}: only one image to inspect ({records[0].relpath}); discovering classes "
            "needs a set of images (MEBin calibrates its thresholds across the whole set)"
        )
    if config.classes is not None and config.classes < 2:
        raise PipelineError(
            f"--classes {config.classes}: discovery needs at least 2 defect classes to tell apart "
            "(the normal / false-detection class comes on top)"
        )

    # ---- maps
    started = time.perf_counter()
    _check_cancel(should_cancel, "maps")
    report("maps", 0.0, "anomaly maps")
    if maps is None:
        raw = _detect(manifest, config, device, report, None if workdir is None else Path(workdir) / "detection_cache")
    else:
        raw = dict(maps)
    missing = [r.relpath for r in records if r.relpath not in raw]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise PipelineError(f"no anomaly map for {len(missing)} image(s): {shown}")
    images: dict[str, np.ndarray] = {}
    for record in records:
        try:
            images[record.relpath] = read_image(record.path)
        except ImageReadError as error:
            raise PipelineError(str(error)) from error
    keys = [r.relpath for r in records]
    raw_maps = []
    for key in keys:
        array = np.asarray(raw[key], dtype=np.float32)
        if array.ndim != 2:
            raise PipelineError(f"{key}: anomaly map must be 2-D, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise PipelineError(f"{key}: anomaly map holds NaN or infinite values")
        raw_maps.append(resize_to(array, images[key].shape[:2]))
    normalized = normalize_global(raw_maps)
    timings["maps"] = time.perf_counter() - started
    report.finish("maps", f"{len(keys)} maps normalized globally")

    # ---- binarization
    started = time.perf_counter()
    _check_cancel(should_cancel, "mebin")
    if config.binarizer == "mebin":
        binarized = binarize(normalized, sample_rate=config.mebin.sample_rate,
                             min_interval_len=config.mebin.min_interval_len, erode=config.mebin.erode,
                             kernel_size=config.mebin.kernel_size)
    else:
        binarized = _otsu(normalized, config.mebin.kernel_size)
    for index, key in enumerate(keys):
        if thresholds and key in thresholds:
            binarized[index] = _with_threshold(binarized[index], normalized[index], int(thresholds[key]), config.mebin)
    binarization = dict(zip(keys, binarized))
    found = sum(1 for b in binarized if b.num_anomalies > 0)
    if found == 0:
        raise PipelineError(
            f"no anomalies found: {config.binarizer} found no anomalous region in any of the {len(keys)} maps "
            "(flat or all-alike maps); check the anomaly maps or give the detector normal reference images"
        )
    timings["mebin"] = time.perf_counter() - started
    report.finish("mebin", f"{found} of {len(keys)} images with anomalies")

    # ---- regions
    started = time.perf_counter()
    _check_cancel(should_cancel, "regions")
    regions: list[Region] = []
    for index, key in enumerate(keys):
        result = binarization[key]
        regions += extract_regions(key, images[key], result.normalized, result.mask, result.num_anomalies,
                                   config.regions)
        report("regions", (index + 1) / len(keys))
    timings["regions"] = time.perf_counter() - started
    report.finish("regions", f"{len(regions)} regions")

    # ---- labels: imported labeled set and user-given region labels become base classes
    existing = {r.key for r in regions}
    unknown = [k for k in (region_labels or {}) if k not in existing]
    if unknown:
        problems.append(f"{len(unknown)} labeled region(s) no longer exist and were ignored: {', '.join(unknown[:5])}")
    region_labels = {k: v for k, v in (region_labels or {}).items() if k in existing}
    base_classes: list[str] = list(labeled.base_classes) if labeled is not None else []
    for name in sorted(set(region_labels.values())):
        if name not in base_classes:
            base_classes.append(name)
    region_label_index = np.array(
        [base_classes.index(region_labels[r.key]) if r.key in region_labels else -1 for r in regions], dtype=np.int64
    )
    include_base = bool(region_labels)
    scores = np.array([r.score for r in regions], dtype=np.float32)

    # ---- number of classes
    started = time.perf_counter()
    _check_cancel(should_cancel, "estimate")
    estimate = None
    if config.classes is None:
        report("estimate", 0.0, "estimating the number of classes")
        features = backbone_features([r.image_crop for r in regions], [r.mask_crop for r in regions],
                                     config.model, device, seed=config.seed, guided=config.train.guided)
        # Whole-image regions where nothing was found (no mask pixel) say nothing about defect classes.
        found_mask = np.array([r.area > 0 for r in regions])
        if found_mask.sum() >= 3:
            features = features[found_mask]
        estimate = estimate_num_classes(features, config.estimate, seed=config.seed)
        n_classes = estimate.k - (len(base_classes) if include_base else 0)
        if n_classes < 2:
            raise PipelineError(
                "the regions look like a single class (" + estimate.describe().replace("\n", "; ")
                + "); pass --classes K to split them anyway"
            )
    else:
        n_classes = int(config.classes)
    unlabeled_regions = int((region_label_index < 0).sum())
    if n_classes > unlabeled_regions:
        raise PipelineError(
            f"--classes {n_classes} is larger than the number of regions found ({unlabeled_regions}); "
            "ask for fewer classes or add images"
        )
    timings["estimate"] = time.perf_counter() - started
    report.finish("estimate", f"K = {n_classes}" + (" (estimated)" if estimate else ""))

    # ---- training
    started = time.perf_counter()
    _check_cancel(should_cancel, "training")
    from core.train import TrainingData, infer, train

    crops = [r.image_crop for r in regions]
    masks = [r.mask_crop for r in regions]
    labels = region_label_index.copy()
    train_scores = scores.copy()
    if labeled is not None and len(labeled.crops):
        crops = list(labeled.crops) + crops
        masks = list(labeled.masks) + masks
        labels = np.concatenate([np.asarray(labeled.labels, dtype=np.int64), labels])
        train_scores = np.concatenate([np.ones(len(labeled.crops), np.float32), train_scores])
    data = TrainingData(crops=crops, masks=masks, scores=train_scores, labels=labels, base_classes=base_classes)

    def on_train(step: Any) -> None:
        total = max(1, step.epochs * step.steps_per_epoch)
        done = step.epoch * step.steps_per_epoch + step.step
        report("training", done / total, f"epoch {step.epoch + 1}/{step.epochs} loss {step.loss:.4f}", train=step)

    checkpoint = None
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        checkpoint = Path(workdir) / "training.pt"
    trained = train(data, n_classes + 1, config.model, config.train, device, progress=on_train,
                    should_cancel=should_cancel, checkpoint_path=checkpoint, resume=checkpoint is not None)
    timings["training"] = time.perf_counter() - started
    report.finish("training", f"{trained.epochs_done} epochs" + (" (cancelled)" if trained.cancelled else ""))

    # ---- prediction, fusion, 2-D map
    started = time.perf_counter()
    report("prediction", 0.0, "predicting")
    model = trained.model
    inference = infer(model, [r.image_crop for r in regions], [r.mask_crop for r in regions], device,
                      guided=config.train.guided)
    predict_config = config.predict
    if include_base != predict_config.include_base:
        from dataclasses import replace

        predict_config = replace(predict_config, include_base=include_base)
    predictions = predict_regions(inference.features, inference.logits, len(base_classes), base_classes,
                                  predict_config, seed=config.seed)
    gt_of = {r.relpath: r.gt_class for r in records}
    region_results = []
    for index, region in enumerate(regions):
        given = region_labels.get(region.key)
        region_results.append(RegionResult(
            region=region,
            cluster=int(predictions.classes[index]),
            confidence=float(predictions.confidence[index]),
            probabilities=predictions.probabilities[index],
            embedding=inference.features[index],
            umap_x=float(predictions.coordinates[index, 0]),
            umap_y=float(predictions.coordinates[index, 1]),
            gt=gt_of.get(region.image),
            label=given,
        ))
    by_image: dict[str, list[int]] = {}
    for index, region in enumerate(regions):
        by_image.setdefault(region.image, []).append(index)
    image_results = []
    for key in keys:
        rows = by_image.get(key, [])
        fused = fuse_image(predictions.probabilities[rows], [regions[i].area for i in rows], config.tau)
        cluster = int(fused.argmax())
        image_results.append(ImageResult(
            image=key, cluster=cluster, confidence=float(fused[cluster]), probabilities=fused,
            n_regions=len(rows), gt=gt_of.get(key), threshold=int(binarization[key].threshold),
            num_anomalies=int(binarization[key].num_anomalies),
            score=float(max(regions[i].score for i in rows)),
        ))
    timings["prediction"] = time.perf_counter() - started
    report.finish("prediction", f"{len(region_results)} regions, {len(image_results)} images classified")

    # ---- metrics
    started = time.perf_counter()
    metrics = _metrics(image_results, region_results, predictions.normal_class)
    timings["metrics"] = time.perf_counter() - started
    report.finish("metrics", "metrics computed" if metrics else "no ground truth: no metrics")

    names = list(predictions.names)
    return DiscoveryResult(
        regions=region_results, images=image_results, cluster_names=names,
        normal_cluster=predictions.normal_class, n_classes=n_classes, base_classes=base_classes,
        binarization=binarization, metrics=metrics, timings=timings, estimate=estimate, model=model,
        train_result=trained, cancelled=bool(trained.cancelled), problems=problems,
    )


def backbone_features(
    crops: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    model_config: Any,
    device: Any,
    *,
    seed: int = 0,
    guided: bool = True,
    batch_size: int = 64,
) -> np.ndarray:
    """L2-normalized CLS features of crops from the backbone as training would start it.

    Pretrained or file weights when the config names them, else the seeded random init: the
    features the class-count estimate and the k-means baselines work on.
    """
    import torch

    from core.mgvit import IMAGENET_MEAN, IMAGENET_STD, build_mgvit

    torch.manual_seed(seed)
    backbone = build_mgvit(model_config, device).eval()
    size = backbone.input_size
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    features = []
    with torch.no_grad():
        for start in range(0, len(crops), batch_size):
            images = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA)
                               for c in crops[start:start + batch_size]])
            mask = np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
                             for m in masks[start:start + batch_size]])
            x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(255.0)
            m = torch.from_numpy(mask).to(device).float().div(255.0).unsqueeze(1)
            out = backbone((x - mean) / std, m, guided=guided)
            features.append(torch.nn.functional.normalize(out.float(), dim=1).cpu().numpy())
    if not features:
        return np.zeros((0, backbone.embed_dim), np.float32)
    return np.concatenate(features).astype(np.float32)
