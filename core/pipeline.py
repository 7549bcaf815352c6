"""The discovery pipeline: maps -> MEBin -> regions -> estimate -> MGViT training -> prediction -> metrics.

One public function per stage (detector_for + run_detection, prepare_maps, binarize_maps, cut_regions,
region_descriptors, estimate_classes, descriptor_prior, train_model, predict, compute_metrics); `run_discovery` is their
composition with progress, timings and cancellation; the results of a prediction are assembled by
core.grouping.predict.assemble_results. Beside them: label planning (core.labels),
region-level truth (core.evaluation.region_truth), progress and cancel (core.progress), one image recut at an
engineer's threshold (core.regions.crops.recut_image), the errors (core.errors). The CLI, the app's job runner and its
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
from core.errors import PipelineError
from core.grouping.estimate import ClassEstimate, estimate_num_classes
from core.regions.mebin import MEBinResult
from core.labels import plan_labels
from core.progress import StageReporter, check_cancel
from core.records import ImageRecord, Manifest, Region
from core.regions.refine import ReferenceImages, refine_regions, references_for
from core.regions.crops import set_floor
from core.evaluation.region_truth import RegionTruth, region_metrics, region_truth_for
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

    from core.mgvit.heads import DiscoveryModel
    from core.mgvit.train import TrainProgress, TrainResult

__all__ = [
    "binarize_maps",
    "compute_metrics",
    "cut_regions",
    "descriptor_prior",
    "detector_for",
    "estimate_classes",
    "predict",
    "prepare_maps",
    "region_descriptors",
    "run_detection",
    "run_discovery",
    "train_model",
]

# --------------------------------------------------------------------------------- stages


def detector_for(manifest: Manifest, detector: DetectorConfig, seed: int) -> DetectorConfig:
    """The detector a run uses: seeded with the run's seed; zero-shot when the set has no normal references."""
    detector = replace(detector, seed=seed)
    if not manifest.normal and detector.method in ("patchcore", "learned"):
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


def prepare_maps(records: Sequence[ImageRecord], raw: Mapping[str, np.ndarray],
                 normal_peaks: Sequence[float] = ()) -> MapSet:
    """Read the images, bring every raw map (any scale) to its image's size and normalize them globally.

    normal_peaks: raw map maxima of held-out normal images (the detector's), brought to the same scale.
    Raises PipelineError naming an image without a map, an unreadable image or a bad map.
    """
    from core.imageio import ImageReadError, read_image
    from core.detection.maps import normalize_global, on_global_scale, resize_to

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
    return MapSet(keys, images, dict(zip(keys, normalize_global(resized))), on_global_scale(normal_peaks, resized))


def binarize_maps(
    maps: MapSet, config: MEBinConfig, binarizer: str = "mebin", thresholds: Mapping[str, int] | None = None
) -> dict[str, MEBinResult]:
    """Masks, thresholds and anomaly counts of every map: MEBin over the set, or Otsu per map.

    thresholds: image key -> threshold set by an engineer; it replaces the chosen one for that
    image (mask = erode(map > t)), the evidence stays.
    """
    from core.regions.mebin import at_threshold, binarize, binarize_otsu

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
    exact: Sequence[str] = (),
    references: ReferenceImages | None = None,
    floor: float | None = None,
) -> list[Region]:
    """Anomaly-centred crops of every image from its mask; progress(images done, total).

    exact: images whose threshold an engineer set; per-component extraction cuts them exactly
    there (no lower cut, no refinement), so "nothing above t" stays nothing. references: the
    normal images (core.regions.refine.ReferenceImages) the components masks are redrawn against; None keeps the map's.
    floor: the components cut's floor when already known (core.regions.crops.set_floor computes it otherwise).
    """
    from core.regions.crops import extract_regions

    if config.extraction != "components":
        floor = 0.0
    elif floor is None:
        floor = set_floor([maps.normalized[k] for k in maps.keys], maps.normal_peaks, config)
    # Per-component extraction in an image where MEBin found no stable threshold cuts at the set's
    # median threshold, so noise in a defect-free image does not become regions.
    found = [int(b.threshold) for b in binarization.values() if b.threshold < 255]
    fallback = int(np.median(found)) if found else 255
    regions: list[Region] = []
    for index, key in enumerate(maps.keys):
        result = binarization[key]
        threshold = result.threshold if result.threshold < 255 else fallback
        regions += extract_regions(key, maps.images[key], result.normalized, result.mask, result.num_anomalies,
                                   replace(config, low_fraction=1.0, mask_fraction=0.0, fallback="whole") if key in exact
                                   else config,
                                   map_u8=maps.normalized[key], threshold=threshold, floor=floor)
        if progress is not None:
            progress(index + 1, len(maps.keys))
    if config.extraction == "components":
        regions, _ = refine_regions(regions, maps.images, references, config, exact)
    return regions


def region_descriptors(regions: Sequence[Region], maps: MapSet, config: DiscoveryConfig) -> np.ndarray | None:
    """Standardized, group-weighted descriptors of the regions; None for the paper's "vit" path."""
    if config.representation == "vit" or not regions:
        return None
    from core.grouping.descriptors import combine, describe_regions

    return combine(describe_regions(regions, maps.images, config.descriptors), config.descriptors)


def estimate_classes(
    regions: Sequence[Region], labels: LabelPlan, config: DiscoveryConfig, device: torch.device | str,
    descriptors: np.ndarray | None = None,
) -> tuple[int, ClassEstimate | None]:
    """K, the number of novel defect classes: config.classes, or estimated on the run's representation.

    The estimate never fails a run: it answers the best-supported K (at least 2 novel classes
    beside the named ones) and how sure it is. Raises PipelineError when K exceeds the unlabeled
    regions.
    """
    from core.grouping.spectral import fuse_representation

    estimate = None
    if config.classes is None:
        embedding = None
        if config.representation != "descriptors":
            from core.mgvit.inference import backbone_features

            embedding = backbone_features([r.image_crop for r in regions], [r.mask_crop for r in regions],
                                          config.model, device, seed=config.seed, guided=config.train.guided)
        features = fuse_representation(config.representation, embedding, descriptors, config.grouping.vit_weight)
        # Regions of images where nothing cleared the floor (weak: the strongest spot or the whole
        # image stands in) say little about defect classes.
        found_mask = np.array([r.area > 0 and not r.weak for r in regions])
        scores = np.array([r.score for r in regions], dtype=np.float64)
        if found_mask.sum() >= 3:
            features, scores = features[found_mask], scores[found_mask]
        estimate = estimate_num_classes(features, config.estimate, scores=scores, seed=config.seed)
        named = len(labels.base_classes) if labels.include_base else 0
        n_novel = max(2, estimate.k - named)
    else:
        n_novel = int(config.classes)
    unlabeled_regions = int((labels.region_label_index == -1).sum())
    if n_novel > unlabeled_regions:
        if config.classes is None:
            n_novel = max(1, unlabeled_regions)
        else:
            raise PipelineError(
                f"--classes {n_novel} is larger than the number of regions found ({unlabeled_regions}); "
                "ask for fewer classes or add images"
            )
    return n_novel, estimate


def descriptor_prior(regions: Sequence[Region], labels: LabelPlan, descriptors: np.ndarray | None, n_novel: int,
                     config: DiscoveryConfig) -> np.ndarray | None:
    """What the hybrid's MGViT is taught (config.prior "descriptors"): the descriptors' grouping of the
    regions in include_base column order; None for the other representations, prior "none" or no descriptors.

    A ViT trained from scratch on a few hundred crops has no features to start its teacher from;
    taught the descriptor groups, its embedding beside the descriptors groups the demo better (mean of
    four generated demos 0.44 -> 0.50) but DeepPCB worse (0.81 -> 0.77), so it is not the default.
    """
    if config.representation != "hybrid" or config.prior != "descriptors" or descriptors is None or not len(regions):
        return None
    from core.grouping.spectral import grouped_probabilities

    probabilities, _, _ = grouped_probabilities(
        "descriptors", None, descriptors, n_novel, scores=np.array([r.score for r in regions]),
        labels=labels.region_label_index, base_classes=labels.base_classes, include_base=True,
        config=config.grouping, seed=config.seed, weak=np.array([r.weak for r in regions], bool))
    return probabilities


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
    prior: np.ndarray | None = None,
) -> TrainResult:
    """Train the discovery model on the regions (and an imported labeled set) for K = n_novel classes.

    workdir: where training keeps its resumable checkpoint (training.pt). prior: the descriptors'
    grouping of the regions (include_base columns, descriptor_prior); with it every region is
    taught its group (core.labels.prior_training_data) and the novel heads stay unused.
    """
    from core.labels import prior_training_data, training_data
    from core.mgvit.train import train

    if prior is not None:
        data = prior_training_data(regions, labels, labeled, prior)
        n_novel = 1  # every region is labeled: the grouping, not the heads, gives the novel classes
    else:
        data = training_data(regions, labels, labeled)
    checkpoint = None
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        checkpoint = Path(workdir) / "training.pt"
    return train(data, n_novel + 1, config.model, config.train, device, progress=progress,
                 should_cancel=should_cancel, checkpoint_path=checkpoint, resume=checkpoint is not None,
                 seed=config.seed)


def predict(
    model: DiscoveryModel | None,
    regions: Sequence[Region],
    maps: MapSet,
    binarization: Mapping[str, MEBinResult],
    labels: LabelPlan,
    config: DiscoveryConfig,
    device: torch.device | str,
    ground_truth: Mapping[str, str | None] | None = None,
    descriptors: np.ndarray | None = None,
    region_truth: Mapping[str, str] | None = None,
    n_novel: int | None = None,
) -> Prediction:
    """Region probabilities, classes and 2-D map coordinates; image classes by area-weighted fusion.

    With the "descriptors" or "hybrid" representation the novel classes come from spectral
    grouping on it (core.grouping.spectral) instead of the classifier heads, and the embedding stored
    and drawn (UMAP, "split") is that representation. Regions labeled normal go to the normal slot.
    ground_truth: image key -> ground-truth class, copied onto the results for the metrics;
    region_truth: region key -> class from region-level annotations (COCO), which wins when given.
    model None (the "descriptors" representation trains none): n_novel novel classes are grouped.
    """
    from core.grouping.predict import assemble_results, predict_regions

    if model is None:
        if config.representation != "descriptors" or n_novel is None:
            raise ValueError("without a model, prediction needs the descriptors representation and n_novel")
        features = None
        logits = np.zeros((len(regions), len(labels.base_classes) + n_novel + 1), np.float32)
    else:
        from core.mgvit.inference import infer

        inference = infer(model, [r.image_crop for r in regions], [r.mask_crop for r in regions], device,
                          guided=config.train.guided)
        features, logits = inference.features, inference.logits
        if config.representation != "vit" and n_novel is not None:  # grouped: only the layout of the heads counts
            logits = np.zeros((len(regions), len(labels.base_classes) + n_novel + 1), np.float32)
    predict_config = config.predict
    if labels.include_base != predict_config.include_base:
        predict_config = replace(predict_config, include_base=labels.include_base)
    embedding = features
    if config.representation != "vit":
        from core.grouping.spectral import grouped_probabilities

        if descriptors is None:
            descriptors = region_descriptors(regions, maps, config)
        probabilities, embedding, _ = grouped_probabilities(
            config.representation, features, descriptors, logits.shape[1]
            - len(labels.base_classes) - 1, scores=np.array([r.score for r in regions]),
            labels=labels.region_label_index, base_classes=labels.base_classes,
            include_base=predict_config.include_base, config=config.grouping, seed=config.seed,
            weak=np.array([r.weak for r in regions], bool))
        # stored and drawn like the CLS feature: L2-normalized rows ("split" and UMAP work on them)
        embedding = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
        predictions = predict_regions(embedding, logits, len(labels.base_classes), labels.base_classes,
                                      predict_config, seed=config.seed, probabilities=probabilities)
    else:
        predictions = predict_regions(embedding, logits, len(labels.base_classes),
                                      labels.base_classes, predict_config, seed=config.seed)
        marked = labels.region_label_index < -1
        if marked.any():  # the engineer's word wins: regions labeled normal are predicted normal
            predictions.probabilities[marked] = np.eye(predictions.probabilities.shape[1])[predictions.normal_class]
            predictions.classes[marked] = predictions.normal_class
            predictions.confidence[marked] = 1.0
    region_results, image_results = assemble_results(
        regions, maps.keys, binarization, predictions, embedding, labels.region_labels, config.tau,
        ground_truth or {}, region_truth or {})
    return Prediction(region_results, image_results, list(predictions.names), predictions.normal_class,
                      list(predictions.notes))


def compute_metrics(
    images: Sequence[ImageResult], regions: Sequence[RegionResult], normal_cluster: int,
    region_truth: RegionTruth | None = None,
) -> dict[str, Any] | None:
    """metrics.json of the run (core.evaluation.metrics.discovery_metrics); None without ground truth.

    With region-level truth (COCO annotations) the `region` block is computed from it over every
    region (a region on no annotation is class NORMAL_CLASS), and `region_coverage` says how
    many annotated defects some region covers; the source file is named in `region_truth`.
    """
    from core.evaluation.metrics import discovery_metrics

    metrics = discovery_metrics([i.gt for i in images], [i.cluster for i in images],
                                [r.gt for r in regions], [r.cluster for r in regions], normal_cluster)
    if region_truth is None:
        return metrics
    return {**(metrics or {}), **region_metrics(regions, region_truth)}


# ------------------------------------------------------------------------------- the run


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
    normal_peaks: Sequence[float] = (),
) -> DiscoveryResult:
    """Discover defect classes in the manifest's unlabeled images: every stage in order.

    maps: raw anomaly maps by image relpath (any scale; resized to the images); None runs the
    built-in detector. labeled: an imported labeled set. region_labels: region key -> class name
    given by the user; those names become base classes and are predicted too. workdir: where
    training keeps its resumable checkpoint. thresholds: image relpath -> threshold on the
    normalized map's 0..255 scale set by an engineer (see binarize_maps). normal_peaks: raw map
    maxima of the detector's held-out normal images, for the regions' floor (core.regions.crops.set_floor).
    Raises PipelineError for input it cannot use, DiscoveryCancelled when cancelled early.
    """
    from core.device import resolve_device

    report = StageReporter(progress)
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
        check_cancel(should_cancel, name)
        return time.perf_counter()

    started = stage("maps")
    report("maps", 0.0, "anomaly maps")
    if maps is None:
        cache = None if workdir is None else Path(workdir) / "detection_cache"
        detector = detector_for(manifest, config.detector, config.seed)

        def on_step(step: str, done: int, total: int) -> None:
            report("maps", done / max(total, 1), f"{detector.method}: {step} {done}/{total}")

        summary: dict[str, Any] = {}
        maps = run_detection(manifest, detector, device, progress=on_step, cache_dir=cache, summary=summary)
        normal_peaks = summary.get("normal_peaks", ())
    map_set = prepare_maps(records, maps, normal_peaks)
    timings["maps"] = time.perf_counter() - started
    report.finish("maps", f"{len(map_set.keys)} maps normalized globally")

    started = stage("mebin")
    binarization = binarize_maps(map_set, config.mebin, config.binarizer, thresholds)
    found = sum(1 for b in binarization.values() if b.num_anomalies > 0)
    # Per-component extraction still finds the peaks of maps MEBin cannot calibrate (e.g. all
    # maxima equal); only flat maps leave it nothing.
    flat = not any(int(m.max()) > 0 for m in map_set.normalized.values())
    if found == 0 and (config.regions.extraction == "reference" or flat):
        raise PipelineError(
            f"no anomalies found: {config.binarizer} found no anomalous region in any of the {len(map_set.keys)} "
            "maps (flat or all-alike maps); check the anomaly maps or give the detector normal reference images"
        )
    timings["mebin"] = time.perf_counter() - started
    report.finish("mebin", f"{found} of {len(map_set.keys)} images with anomalies")

    started = stage("regions")
    references = references_for([r.path for r in manifest.normal], config.regions)
    problems += references.problems if references is not None else []
    floor = set_floor([map_set.normalized[k] for k in map_set.keys], map_set.normal_peaks, config.regions)
    regions = cut_regions(map_set, binarization, config.regions, exact=list(thresholds or {}), references=references,
                          floor=floor,
                          progress=lambda done, total: report("regions", done / total))
    timings["regions"] = time.perf_counter() - started
    redrawn = f", masks redrawn against {len(references)} normal references" if references else ""
    report.finish("regions", f"{len(regions)} regions{redrawn}")
    labels = plan_labels(regions, labeled, region_labels)
    problems += labels.problems
    region_truth = region_truth_for(manifest, regions, map_set, config.ground_truth)
    if region_truth is not None and region_truth.problems:
        problems.append(region_truth.problems)
    descriptors = region_descriptors(regions, map_set, config)
    timings["regions"] = time.perf_counter() - started

    started = stage("estimate")
    if config.classes is None:
        report("estimate", 0.0, "estimating the number of classes")
    n_novel, estimate = estimate_classes(regions, labels, config, device, descriptors)
    timings["estimate"] = time.perf_counter() - started
    report.finish("estimate", f"K = {n_novel}" + (" (estimated)" if estimate else ""))

    started = stage("training")

    def on_train(step: TrainProgress) -> None:
        total = max(1, step.epochs * step.steps_per_epoch)
        done = step.epoch * step.steps_per_epoch + step.step
        report("training", done / total, f"epoch {step.epoch + 1}/{step.epochs} loss {step.loss:.4f}", train=step)

    if config.representation == "descriptors":  # grouping uses no embedding: nothing to train
        from core.mgvit.train import TrainResult

        trained = TrainResult(model=None, history=[], cancelled=False, epochs_done=0, model_config=config.model,
                              train_config=config.train)
        report.finish("training", "no training: the descriptors representation uses no MGViT")
    else:
        prior = descriptor_prior(regions, labels, descriptors, n_novel, config)
        trained = train_model(regions, labels, labeled, n_novel, config, device, progress=on_train,
                              should_cancel=should_cancel, workdir=workdir, prior=prior)
        taught = ", taught the descriptor groups" if prior is not None else ""
        report.finish("training", f"{trained.epochs_done} epochs{taught}" + (" (cancelled)" if trained.cancelled else ""))
    timings["training"] = time.perf_counter() - started

    started = time.perf_counter()
    report("prediction", 0.0, "predicting")
    ground_truth = {r.relpath: r.gt_class for r in records}
    predicted = predict(trained.model, regions, map_set, binarization, labels, config, device, ground_truth,
                        descriptors, None if region_truth is None else region_truth.classes,
                        n_novel=n_novel)
    problems += predicted.notes
    timings["prediction"] = time.perf_counter() - started
    report.finish("prediction", f"{len(predicted.regions)} regions, {len(predicted.images)} images classified")

    started = time.perf_counter()
    metrics = compute_metrics(predicted.images, predicted.regions, predicted.normal_cluster, region_truth)
    timings["metrics"] = time.perf_counter() - started
    report.finish("metrics", "metrics computed" if metrics else "no ground truth: no metrics")

    return DiscoveryResult(
        regions=predicted.regions, images=predicted.images, cluster_names=predicted.cluster_names,
        normal_cluster=predicted.normal_cluster, n_novel=n_novel, base_classes=labels.base_classes,
        binarization=binarization, normalized_maps=map_set.normalized, metrics=metrics, timings=timings, estimate=estimate, model=trained.model,
        train_result=trained, cancelled=bool(trained.cancelled), problems=problems,
        floor=floor,
    )
