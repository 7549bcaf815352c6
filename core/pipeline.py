"""The discovery pipeline: maps -> MEBin -> regions -> estimate -> MGViT training -> prediction -> metrics.

One public function per stage (detector_for + run_detection, prepare_maps, binarize_maps, cut_regions,
plan_labels, estimate_classes, train_model, predict, compute_metrics); `run_discovery` is their
composition with progress, timings and cancellation. The CLI, the app's job runner and its
Review page call these functions, so every stage runs one way. Knows nothing of Streamlit or SQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import DetectorConfig, DiscoveryConfig, MEBinConfig, RegionConfig
from core.dataset import LabeledCrops
from core.errors import UserError
from core.estimate import ClassEstimate, estimate_num_classes
from core.fusion import fuse_image
from core.mebin import MEBinResult
from core.records import ImageRecord, Manifest, Region
from core.results import (
    DiscoveryResult,
    ImageResult,
    LabelPlan,
    MapSet,
    PipelineProgress,
    Prediction,
    RegionResult,
)

if TYPE_CHECKING:
    import torch

    from core.train import DiscoveryModel, TrainProgress, TrainResult

__all__ = [
    "DiscoveryCancelled",
    "PipelineError",
    "STAGES",
    "binarize_maps",
    "compute_metrics",
    "cut_regions",
    "detector_for",
    "estimate_classes",
    "plan_labels",
    "predict",
    "prepare_maps",
    "recut_image",
    "run_detection",
    "run_discovery",
    "train_model",
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


class PipelineError(UserError):
    """Input the pipeline cannot work with; the message says what is wrong and what to do."""


class DiscoveryCancelled(Exception):
    """Raised when should_cancel() turns true between stages (before a model exists)."""


# --------------------------------------------------------------------------------- stages


def detector_for(manifest: Manifest, detector: DetectorConfig, seed: int) -> DetectorConfig:
    """The detector a run uses: seeded with the run's seed; zero-shot when the set has no normal references."""
    detector = replace(detector, seed=seed)
    if not manifest.normal and detector.method == "patchcore":
        detector = replace(detector, method="zero-shot")
    return detector


def run_detection(
    manifest: Manifest,
    detector: DetectorConfig,
    device: torch.device | str,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    cache_dir: Path | None = None,
    summary: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Raw anomaly maps (float32 by image relpath) from the built-in detector (see detector_for).

    progress(step, done, total) follows the detector's steps. summary, when given, receives what
    ran and why and the separation report (Detection.summary). Raises PipelineError when detection fails.
    """
    from core import detection

    try:
        found = detection.detect(manifest, detector, device, progress=progress, cache_dir=cache_dir)
    except ValueError as error:  # DetectionError and bad settings: the message names the problem
        raise PipelineError(f"anomaly detection failed: {error}") from error
    if summary is not None:
        summary.update(found.summary())
    return {key: np.asarray(value, dtype=np.float32) for key, value in found.maps.items()}


def prepare_maps(records: Sequence[ImageRecord], raw: Mapping[str, np.ndarray]) -> MapSet:
    """Read the images, bring every raw map (any scale) to its image's size and normalize them globally.

    Raises PipelineError naming an image without a map, an unreadable image or a bad map.
    """
    from core.imageio import ImageReadError, read_image
    from core.maps import normalize_global, resize_to

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
    resized = []
    for key in keys:
        array = np.asarray(raw[key], dtype=np.float32)
        if array.ndim != 2:
            raise PipelineError(f"{key}: anomaly map must be 2-D, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise PipelineError(f"{key}: anomaly map holds NaN or infinite values")
        resized.append(resize_to(array, images[key].shape[:2]))
    return MapSet(keys, images, dict(zip(keys, normalize_global(resized))))


def binarize_maps(
    maps: MapSet, config: MEBinConfig, binarizer: str = "mebin", thresholds: Mapping[str, int] | None = None
) -> dict[str, MEBinResult]:
    """Masks, thresholds and anomaly counts of every map: MEBin over the set, or Otsu per map.

    thresholds: image key -> threshold set by an engineer; it replaces the chosen one for that
    image (mask = erode(map > t)), the evidence stays.
    """
    from core.mebin import at_threshold, binarize, binarize_otsu

    arrays = [maps.normalized[key] for key in maps.keys]
    if binarizer == "mebin":
        results = binarize(arrays, sample_rate=config.sample_rate, min_interval_len=config.min_interval_len,
                           erode=config.erode, kernel_size=config.kernel_size)
    elif binarizer == "otsu":
        results = binarize_otsu(arrays, kernel_size=config.kernel_size)
    else:
        raise PipelineError(f"unknown binarizer {binarizer!r} (mebin or otsu)")
    binarization = dict(zip(maps.keys, results))
    for key, threshold in (thresholds or {}).items():
        if key in binarization:
            binarization[key] = at_threshold(binarization[key], maps.normalized[key], int(threshold), config)
    return binarization


def cut_regions(
    maps: MapSet,
    binarization: Mapping[str, MEBinResult],
    config: RegionConfig,
    progress: Callable[[int, int], None] | None = None,
) -> list[Region]:
    """Anomaly-centred crops of every image from its mask; progress(images done, total)."""
    from core.regions import extract_regions

    regions: list[Region] = []
    for index, key in enumerate(maps.keys):
        result = binarization[key]
        regions += extract_regions(key, maps.images[key], result.normalized, result.mask, result.num_anomalies, config,
                                   map_u8=maps.normalized[key], threshold=result.threshold)
        if progress is not None:
            progress(index + 1, len(maps.keys))
    return regions


def recut_image(
    key: str,
    image: np.ndarray,
    map_u8: np.ndarray,
    threshold: int,
    search_range: tuple[int, int],
    mebin: MEBinConfig,
    regions: RegionConfig,
) -> tuple[np.ndarray, int, list[Region]]:
    """One image at a threshold an engineer chose: (mask, component count, its crops).

    map_u8 is the image's globally normalized map, search_range MEBin's (s_min, s_max) of its set,
    so region scores match those of a full run.
    """
    from core.mebin import mask_at_threshold, normalize_to_range
    from core.regions import extract_regions

    mask, count = mask_at_threshold(map_u8, threshold, erode=mebin.erode, kernel_size=mebin.kernel_size)
    normalized = normalize_to_range(map_u8, *search_range)
    return mask, count, extract_regions(key, image, normalized, mask, count, regions, map_u8=map_u8,
                                        threshold=int(threshold))


def plan_labels(
    regions: Sequence[Region], labeled: LabeledCrops | None, region_labels: Mapping[str, str] | None
) -> LabelPlan:
    """Base classes from an imported labeled set and from names given to regions (gone regions noted)."""
    existing = {r.key for r in regions}
    unknown = [k for k in (region_labels or {}) if k not in existing]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} labeled region(s) no longer exist and were ignored: {', '.join(unknown[:5])}")
    kept = {k: v for k, v in (region_labels or {}).items() if k in existing}
    base_classes: list[str] = list(labeled.base_classes) if labeled is not None else []
    for name in sorted(set(kept.values())):
        if name not in base_classes:
            base_classes.append(name)
    index = np.array([base_classes.index(kept[r.key]) if r.key in kept else -1 for r in regions], dtype=np.int64)
    return LabelPlan(base_classes, kept, index, problems)


def estimate_classes(
    regions: Sequence[Region], labels: LabelPlan, config: DiscoveryConfig, device: torch.device | str
) -> tuple[int, ClassEstimate | None]:
    """K, the number of novel defect classes: config.classes, or estimated from backbone features.

    Raises PipelineError when the estimate finds one class only or K exceeds the unlabeled regions.
    """
    estimate = None
    if config.classes is None:
        from core.inference import backbone_features

        features = backbone_features([r.image_crop for r in regions], [r.mask_crop for r in regions],
                                     config.model, device, seed=config.seed, guided=config.train.guided)
        # Whole-image regions where nothing was found (no mask pixel) say nothing about defect classes.
        found_mask = np.array([r.area > 0 for r in regions])
        if found_mask.sum() >= 3:
            features = features[found_mask]
        estimate = estimate_num_classes(features, config.estimate, seed=config.seed)
        n_novel = estimate.k - (len(labels.base_classes) if labels.include_base else 0)
        if n_novel < 2:
            raise PipelineError(
                "the regions look like a single class (" + estimate.describe().replace("\n", "; ")
                + "); pass --classes K to split them anyway"
            )
    else:
        n_novel = int(config.classes)
    unlabeled_regions = int((labels.region_label_index < 0).sum())
    if n_novel > unlabeled_regions:
        raise PipelineError(
            f"--classes {n_novel} is larger than the number of regions found ({unlabeled_regions}); "
            "ask for fewer classes or add images"
        )
    return n_novel, estimate


def train_model(
    regions: Sequence[Region],
    labels: LabelPlan,
    labeled: LabeledCrops | None,
    n_novel: int,
    config: DiscoveryConfig,
    device: torch.device | str,
    *,
    progress: Callable[[TrainProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    workdir: Path | None = None,
) -> TrainResult:
    """Train the discovery model on the regions (and an imported labeled set) for K = n_novel classes.

    workdir: where training keeps its resumable checkpoint (training.pt).
    """
    from core.train import TrainingData, train

    crops = [r.image_crop for r in regions]
    masks = [r.mask_crop for r in regions]
    targets = labels.region_label_index.copy()
    scores = np.array([r.score for r in regions], dtype=np.float32)
    if labeled is not None and len(labeled.crops):
        crops = list(labeled.crops) + crops
        masks = list(labeled.masks) + masks
        targets = np.concatenate([np.asarray(labeled.labels, dtype=np.int64), targets])
        scores = np.concatenate([np.ones(len(labeled.crops), np.float32), scores])
    data = TrainingData(crops=crops, masks=masks, scores=scores, labels=targets, base_classes=labels.base_classes)
    checkpoint = None
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        checkpoint = Path(workdir) / "training.pt"
    return train(data, n_novel + 1, config.model, config.train, device, progress=progress,
                 should_cancel=should_cancel, checkpoint_path=checkpoint, resume=checkpoint is not None,
                 seed=config.seed)


def predict(
    model: DiscoveryModel,
    regions: Sequence[Region],
    maps: MapSet,
    binarization: Mapping[str, MEBinResult],
    labels: LabelPlan,
    config: DiscoveryConfig,
    device: torch.device | str,
    ground_truth: Mapping[str, str | None] | None = None,
) -> Prediction:
    """Region probabilities, classes and 2-D map coordinates; image classes by area-weighted fusion.

    ground_truth: image key -> ground-truth class, copied onto the results for the metrics.
    """
    from core.inference import infer
    from core.predict import predict_regions

    inference = infer(model, [r.image_crop for r in regions], [r.mask_crop for r in regions], device,
                      guided=config.train.guided)
    predict_config = config.predict
    if labels.include_base != predict_config.include_base:
        predict_config = replace(predict_config, include_base=labels.include_base)
    predictions = predict_regions(inference.features, inference.logits, len(labels.base_classes),
                                  labels.base_classes, predict_config, seed=config.seed)
    truth = ground_truth or {}
    region_results = [
        RegionResult(
            region=region,
            cluster=int(predictions.classes[index]),
            confidence=float(predictions.confidence[index]),
            probabilities=predictions.probabilities[index],
            embedding=inference.features[index],
            umap_x=float(predictions.coordinates[index, 0]),
            umap_y=float(predictions.coordinates[index, 1]),
            gt=truth.get(region.image),
            label=labels.region_labels.get(region.key),
        )
        for index, region in enumerate(regions)
    ]
    by_image: dict[str, list[int]] = {}
    for index, region in enumerate(regions):
        by_image.setdefault(region.image, []).append(index)
    image_results = []
    for key in maps.keys:
        rows = by_image.get(key, [])
        fused = fuse_image(predictions.probabilities[rows], [regions[i].area for i in rows], config.tau)
        cluster = int(fused.argmax())
        image_results.append(ImageResult(
            image=key, cluster=cluster, confidence=float(fused[cluster]), probabilities=fused,
            n_regions=len(rows), gt=truth.get(key), threshold=int(binarization[key].threshold),
            num_anomalies=int(binarization[key].num_anomalies),
            score=float(max(regions[i].score for i in rows)),
        ))
    return Prediction(region_results, image_results, list(predictions.names), predictions.normal_class,
                      list(predictions.notes))


def compute_metrics(
    images: Sequence[ImageResult], regions: Sequence[RegionResult], normal_cluster: int
) -> dict[str, Any] | None:
    """metrics.json of the run (core.metrics.discovery_metrics); None without ground truth."""
    from core.metrics import discovery_metrics

    return discovery_metrics([i.gt for i in images], [i.cluster for i in images],
                             [r.gt for r in regions], [r.cluster for r in regions], normal_cluster)


# ------------------------------------------------------------------------------- the run


class _Reporter:
    def __init__(self, callback: Callable[[PipelineProgress], None] | None) -> None:
        self.callback = callback
        self.done = 0.0  # overall share of finished stages

    def __call__(self, stage: str, fraction: float, message: str = "", train: TrainProgress | None = None) -> None:
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


def run_discovery(
    manifest: Manifest,
    config: DiscoveryConfig = DiscoveryConfig(),
    *,
    maps: Mapping[str, np.ndarray] | None = None,
    labeled: LabeledCrops | None = None,
    region_labels: Mapping[str, str] | None = None,
    progress: Callable[[PipelineProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    workdir: Path | None = None,
    thresholds: Mapping[str, int] | None = None,
) -> DiscoveryResult:
    """Discover defect classes in the manifest's unlabeled images: every stage in order.

    maps: raw anomaly maps by image relpath (any scale; resized to the images); None runs the
    built-in detector. labeled: an imported labeled set. region_labels: region key -> class name
    given by the user; those names become base classes and are predicted too. workdir: where
    training keeps its resumable checkpoint. thresholds: image relpath -> threshold on the
    normalized map's 0..255 scale set by an engineer (see binarize_maps).
    Raises PipelineError for input it cannot use, DiscoveryCancelled when cancelled early.
    """
    from core.device import resolve_device

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

    def stage(name: str) -> float:
        _check_cancel(should_cancel, name)
        return time.perf_counter()

    started = stage("maps")
    report("maps", 0.0, "anomaly maps")
    if maps is None:
        cache = None if workdir is None else Path(workdir) / "detection_cache"
        detector = detector_for(manifest, config.detector, config.seed)

        def on_step(step: str, done: int, total: int) -> None:
            report("maps", done / max(total, 1), f"{detector.method}: {step} {done}/{total}")

        maps = run_detection(manifest, detector, device, progress=on_step, cache_dir=cache)
    map_set = prepare_maps(records, maps)
    timings["maps"] = time.perf_counter() - started
    report.finish("maps", f"{len(map_set.keys)} maps normalized globally")

    started = stage("mebin")
    binarization = binarize_maps(map_set, config.mebin, config.binarizer, thresholds)
    found = sum(1 for b in binarization.values() if b.num_anomalies > 0)
    if found == 0:
        raise PipelineError(
            f"no anomalies found: {config.binarizer} found no anomalous region in any of the {len(map_set.keys)} "
            "maps (flat or all-alike maps); check the anomaly maps or give the detector normal reference images"
        )
    timings["mebin"] = time.perf_counter() - started
    report.finish("mebin", f"{found} of {len(map_set.keys)} images with anomalies")

    started = stage("regions")
    regions = cut_regions(map_set, binarization, config.regions,
                          progress=lambda done, total: report("regions", done / total))
    timings["regions"] = time.perf_counter() - started
    report.finish("regions", f"{len(regions)} regions")
    labels = plan_labels(regions, labeled, region_labels)
    problems += labels.problems

    started = stage("estimate")
    if config.classes is None:
        report("estimate", 0.0, "estimating the number of classes")
    n_novel, estimate = estimate_classes(regions, labels, config, device)
    timings["estimate"] = time.perf_counter() - started
    report.finish("estimate", f"K = {n_novel}" + (" (estimated)" if estimate else ""))

    started = stage("training")

    def on_train(step: TrainProgress) -> None:
        total = max(1, step.epochs * step.steps_per_epoch)
        done = step.epoch * step.steps_per_epoch + step.step
        report("training", done / total, f"epoch {step.epoch + 1}/{step.epochs} loss {step.loss:.4f}", train=step)

    trained = train_model(regions, labels, labeled, n_novel, config, device, progress=on_train,
                          should_cancel=should_cancel, workdir=workdir)
    timings["training"] = time.perf_counter() - started
    report.finish("training", f"{trained.epochs_done} epochs" + (" (cancelled)" if trained.cancelled else ""))

    started = time.perf_counter()
    report("prediction", 0.0, "predicting")
    ground_truth = {r.relpath: r.gt_class for r in records}
    predicted = predict(trained.model, regions, map_set, binarization, labels, config, device, ground_truth)
    problems += predicted.notes
    timings["prediction"] = time.perf_counter() - started
    report.finish("prediction", f"{len(predicted.regions)} regions, {len(predicted.images)} images classified")

    started = time.perf_counter()
    metrics = compute_metrics(predicted.images, predicted.regions, predicted.normal_cluster)
    timings["metrics"] = time.perf_counter() - started
    report.finish("metrics", "metrics computed" if metrics else "no ground truth: no metrics")

    return DiscoveryResult(
        regions=predicted.regions, images=predicted.images, cluster_names=predicted.cluster_names,
        normal_cluster=predicted.normal_cluster, n_novel=n_novel, base_classes=labels.base_classes,
        binarization=binarization, normalized_maps=map_set.normalized, metrics=metrics, timings=timings, estimate=estimate, model=trained.model,
        train_result=trained, cancelled=bool(trained.cancelled), problems=problems,
    )
