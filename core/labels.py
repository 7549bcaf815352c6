"""The run's labels: base classes from an imported labeled set and from names an engineer gave regions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from core.dataset import LabeledCrops
from core.records import NORMAL_CLASS, Region
from core.results import LabelPlan

if TYPE_CHECKING:
    from core.mgvit.train import TrainingData

__all__ = ["plan_labels", "prior_training_data", "training_data"]


def plan_labels(
    regions: Sequence[Region], labeled: LabeledCrops | None, region_labels: Mapping[str, str] | None
) -> LabelPlan:
    """Base classes from an imported labeled set and from names given to regions (gone regions noted).

    A region labeled NORMAL_CLASS is labeled normal (index LABELED_NORMAL): it seeds the normal /
    false-detection slot, it is not a base class.
    """
    from core.grouping.spectral import LABELED_NORMAL

    existing = {r.key for r in regions}
    unknown = [k for k in (region_labels or {}) if k not in existing]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} labeled region(s) no longer exist and were ignored: {', '.join(unknown[:5])}")
    kept = {k: v for k, v in (region_labels or {}).items() if k in existing}
    base_classes: list[str] = [c for c in (labeled.base_classes if labeled is not None else []) if c != NORMAL_CLASS]
    for name in sorted(set(kept.values()) - {NORMAL_CLASS}):
        if name not in base_classes:
            base_classes.append(name)
    index = np.array([LABELED_NORMAL if kept.get(r.key) == NORMAL_CLASS else
                      base_classes.index(kept[r.key]) if r.key in kept else -1 for r in regions], dtype=np.int64)
    return LabelPlan(base_classes, kept, index, problems)


def training_data(regions: Sequence[Region], labels: LabelPlan, labeled: LabeledCrops | None) -> TrainingData:
    """What the model trains on: the imported labeled crops first, then the run's regions with their plan labels."""
    from core.mgvit.train import TrainingData

    crops = [r.image_crop for r in regions]
    masks = [r.mask_crop for r in regions]
    # Regions labeled normal keep LABELED_NORMAL: training takes the normal slot as their target.
    targets = labels.region_label_index.copy()
    scores = np.array([r.score for r in regions], dtype=np.float32)
    if labeled is not None and len(labeled.crops):
        crops = list(labeled.crops) + crops
        masks = list(labeled.masks) + masks
        targets = np.concatenate([np.asarray(labeled.labels, dtype=np.int64), targets])
        scores = np.concatenate([np.ones(len(labeled.crops), np.float32), scores])
    return TrainingData(crops=crops, masks=masks, scores=scores, labels=targets, base_classes=labels.base_classes)


def prior_training_data(regions: Sequence[Region], labels: LabelPlan, labeled: LabeledCrops | None,
                        probabilities: np.ndarray) -> TrainingData:
    """Training data with every region labeled by its descriptor group (DiscoveryConfig.prior "descriptors").

    probabilities: the descriptors' grouping of the regions in core.grouping.spectral's include_base
    column order (base classes, the normal slot, the K novel groups); regions the engineer named
    or marked normal are already fixed there. Each region's target is its most likely column, so
    the MGViT learns what the descriptors group together and its embedding adds what the pixels
    say beside them. Imported labeled crops keep their base classes (the first columns).
    """
    data = training_data(regions, labels, labeled)
    n_base = len(labels.base_classes)
    n_novel = probabilities.shape[1] - n_base - 1
    targets = np.asarray(probabilities, np.float64).argmax(axis=1).astype(np.int64)
    n_imported = len(data.crops) - len(regions)
    data.labels = np.concatenate([data.labels[:n_imported], targets])
    data.base_classes = list(labels.base_classes) + [NORMAL_CLASS] + [f"descriptor group {i + 1}" for i in range(n_novel)]
    return data
