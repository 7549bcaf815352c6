"""The discovery pipeline: maps -> MEBin -> regions -> estimate -> MGViT training -> prediction -> metrics.

One public function per stage: the first ones (detector_for + run_detection, prepare_maps, binarize_maps,
cut_regions, and find_regions that chains MEBin, the floor, the references and the cut) are in
core.stages and re-exported here; region_descriptors, estimate_classes, descriptor_prior, train_model,
predict and compute_metrics are here. `run_discovery` runs them as named stages through one runner
(core.stages.Stages: cancel, timing, progress). What the representation needs (descriptors, a trained
MGViT, grouping or the heads) is asked of `config.space` (core.representation). The CLI, the app's
job process and its Review page call these functions, so every stage runs one way. Knows nothing of
Streamlit or SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import DiscoveryConfig
from core.dataset import LabeledCrops
from core.errors import PipelineError
from core.evaluation.region_truth import RegionTruth, region_metrics, region_truth_for
from core.grouping.estimate import ClassEstimate, estimate_num_classes
from core.labels import plan_labels
from core.records import Manifest, Region
from core.regions.mebin import MEBinResult
from core.results import DiscoveryResult, ImageResult, LabelPlan, MapSet, PipelineProgress, Prediction, RegionResult
from core.stages import (Stages, binarize_maps, cut_regions, detection_share, detector_for, find_regions,
                         plan_seconds, prepare_maps, run_detection)

if TYPE_CHECKING:
    import torch

    from core.mgvit.heads import DiscoveryModel
    from core.mgvit.train import TrainProgress, TrainResult

__all__ = [
    "Stages",
    "binarize_maps",
    "compute_metrics",
    "cut_regions",
    "descriptor_prior",
    "detection_share",
    "detector_for",
    "estimate_classes",
    "find_regions",
    "plan_labels",
    "plan_seconds",
    "predict",
    "prepare_maps",
    "region_descriptors",
    "run_detection",
    "run_discovery",
    "train_model",
]

# --------------------------------------------------------------------------------- stages


def region_descriptors(regions: Sequence[Region], maps: MapSet, config: DiscoveryConfig) -> np.ndarray | None:
    """Standardized, group-weighted descriptors of the regions; None for the paper's "vit" path."""
    if not config.space.descriptors or not regions:
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
        if config.space.embedding:
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
    if not config.space.can_be_taught or config.prior != "descriptors" or descriptors is None or not len(regions):
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
    report: Callable[[float, str], None] | None = None,
) -> Prediction:
    """Region probabilities, classes and 2-D map coordinates; image classes by area-weighted fusion.

    With the "descriptors" or "hybrid" representation the novel classes come from spectral
    grouping on it (core.grouping.spectral) instead of the classifier heads, and the embedding stored
    and drawn (UMAP, "split") is that representation. Regions labeled normal go to the normal slot.
    ground_truth: image key -> ground-truth class, copied onto the results for the metrics;
    region_truth: region key -> class from region-level annotations (COCO), which wins when given.
    model None (the "descriptors" representation trains none): n_novel novel classes are grouped.
    report(fraction, message): where it is (grouping, then the 2-D map: UMAP, most of its time).
    """
    from core.grouping.predict import assemble_results, predict_regions

    report = report or (lambda fraction, message: None)
    report(0.0, "grouping the regions")

    if model is None:
        if config.space.trains_model or n_novel is None:
            raise ValueError("without a model, prediction needs a representation that trains none and n_novel")
        features = None
        logits = np.zeros((len(regions), len(labels.base_classes) + n_novel + 1), np.float32)
    else:
        from core.mgvit.inference import infer

        inference = infer(model, [r.image_crop for r in regions], [r.mask_crop for r in regions], device,
                          guided=config.train.guided)
        features, logits = inference.features, inference.logits
        if config.space.grouped and n_novel is not None:  # grouped: only the layout of the heads counts
            logits = np.zeros((len(regions), len(labels.base_classes) + n_novel + 1), np.float32)
    predict_config = config.predict
    if labels.include_base != predict_config.include_base:
        predict_config = replace(predict_config, include_base=labels.include_base)
    embedding = features
    if config.space.grouped:
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
        report(0.1, "drawing the 2-D map")
        predictions = predict_regions(embedding, logits, len(labels.base_classes), labels.base_classes,
                                      predict_config, seed=config.seed, probabilities=probabilities)
    else:
        report(0.1, "drawing the 2-D map")
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


def _check_inputs(manifest: Manifest, config: DiscoveryConfig) -> torch.device:
    from core.device import resolve_device

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
    return device


def _maps(manifest: Manifest, config: DiscoveryConfig, stages: Stages, device: torch.device,
          maps: Mapping[str, np.ndarray] | None, normal_peaks: Sequence[float], workdir: Path | None) -> MapSet:
    """Stage "maps": the given raw maps, or the built-in detector's, on one global scale."""
    with stages("maps", "anomaly maps") as stage:
        if maps is None:
            detector = detector_for(manifest, config.detector, config.seed)
            summary: dict[str, Any] = {}
            maps = run_detection(manifest, detector, device, summary=summary,
                                 cache_dir=None if workdir is None else Path(workdir) / "detection_cache",
                                 progress=lambda step, done, total: stage.report(
                                     done / max(total, 1), f"{detector.method}: {step} {done}/{total}"))
            normal_peaks = summary.get("normal_peaks", ())
        map_set = prepare_maps(manifest.unlabeled, maps, normal_peaks)
        stage.summary = f"{len(map_set.keys)} maps normalized globally"
    return map_set


def _train(regions: Sequence[Region], labels: LabelPlan, labeled: LabeledCrops | None, n_novel: int,
           descriptors: np.ndarray | None, config: DiscoveryConfig, device: torch.device, stages: Stages,
           workdir: Path | None) -> TrainResult:
    """Stage "training": the MGViT, when the representation trains one."""
    from core.mgvit.train import TrainResult

    with stages("training") as stage:
        if not config.space.trains_model:  # grouping uses no embedding: nothing to train
            stage.summary = f"no training: the {config.space.name} representation uses no MGViT"
            return TrainResult(model=None, history=[], cancelled=False, epochs_done=0, model_config=config.model,
                               train_config=config.train)

        def on_train(step: TrainProgress) -> None:
            total = max(1, step.epochs * step.steps_per_epoch)
            stage.report((step.epoch * step.steps_per_epoch + step.step) / total,
                         f"epoch {step.epoch + 1}/{step.epochs} loss {step.loss:.4f}", train=step)

        prior = descriptor_prior(regions, labels, descriptors, n_novel, config)
        trained = train_model(regions, labels, labeled, n_novel, config, device, progress=on_train,
                              should_cancel=stages.should_cancel, workdir=workdir, prior=prior)
        taught = ", taught the descriptor groups" if prior is not None else ""
        stage.summary = f"{trained.epochs_done} epochs{taught}" + (" (cancelled)" if trained.cancelled else "")
    return trained


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
    device = _check_inputs(manifest, config)
    stages = Stages(progress, should_cancel)
    stages.plan(plan_seconds(manifest, config, maps is None))
    map_set = _maps(manifest, config, stages, device, maps, normal_peaks, workdir)
    found = find_regions(map_set, manifest.normal, config, stages, thresholds=thresholds)
    regions = found.regions
    stages.plan(plan_seconds(manifest, config, False, len(regions)))  # the bar's rest by the regions counted
    labels = plan_labels(regions, labeled, region_labels)
    region_truth = region_truth_for(manifest, regions, map_set, config.ground_truth)
    problems = [str(p) for p in manifest.problems] + found.problems + labels.problems
    problems += [region_truth.problems] if region_truth is not None and region_truth.problems else []
    with stages("estimate", "" if config.classes is not None else "estimating the number of classes") as stage:
        descriptors = region_descriptors(regions, map_set, config)
        n_novel, estimate = estimate_classes(regions, labels, config, device, descriptors)
        stage.summary = f"K = {n_novel}" + (" (estimated)" if estimate else "")
    trained = _train(regions, labels, labeled, n_novel, descriptors, config, device, stages, workdir)
    with stages("prediction", "predicting", cancellable=False) as stage:
        predicted = predict(trained.model, regions, map_set, found.binarization, labels, config, device,
                            {r.relpath: r.gt_class for r in manifest.unlabeled}, descriptors,
                            None if region_truth is None else region_truth.classes, n_novel=n_novel,
                            report=stage.report)
        stage.summary = f"{len(predicted.regions)} regions, {len(predicted.images)} images classified"
    with stages("metrics", cancellable=False) as stage:
        metrics = compute_metrics(predicted.images, predicted.regions, predicted.normal_cluster, region_truth)
        stage.summary = "metrics computed" if metrics else "no ground truth: no metrics"
    return DiscoveryResult(
        regions=predicted.regions, images=predicted.images, cluster_names=predicted.cluster_names,
        normal_cluster=predicted.normal_cluster, n_novel=n_novel, base_classes=labels.base_classes,
        binarization=found.binarization, normalized_maps=map_set.normalized, metrics=metrics,
        timings=stages.timings, estimate=estimate, model=trained.model, train_result=trained,
        cancelled=bool(trained.cancelled), problems=problems + predicted.notes, floor=found.floor,
    )
