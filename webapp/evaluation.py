"""How a run's current (edited) classes match the ground truth, and how two runs relate.

Metrics themselves are core's (core.metrics.cluster_metrics); this module picks the images and
regions the way metrics.json does and builds the tables the Evaluate and Labels pages show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from core.metrics import cluster_metrics
from core.records import GOOD
from storage import NORMAL_CLASS, SOURCE_GROUND_TRUTH, Store
from storage.export import regions_frame


@dataclass(frozen=True)
class LevelEvaluation:
    """Clustering quality at one level (images or regions) against ground truth."""

    level: str  # "image" or "region"
    n: int
    metrics: dict[str, float]  # nmi, ari, f1
    confusion: pd.DataFrame  # rows: ground-truth class, columns: predicted class, counts


def _level(level: str, truth: Sequence[str], predicted: Sequence[str]) -> LevelEvaluation | None:
    if not truth:
        return None
    table = pd.crosstab(pd.Series(list(truth), name="ground truth"), pd.Series(list(predicted), name="predicted"))
    table = table.reindex(sorted(table.index), axis=0)
    return LevelEvaluation(level, len(truth), cluster_metrics(list(truth), list(predicted)), table)


def evaluate_run(store: Store, run_id: int) -> dict[str, LevelEvaluation]:
    """NMI / ARI / F1 and confusion tables of a run's current (edited) classes.

    As in metrics.json: over defective images (ground-truth class set and not "good") and their
    regions; a region's truth is its ground-truth label when storage holds one, else its image's
    class. Returns {} when the project has no ground truth.
    """
    images = store.image_classes(run_id)
    defective = [c for c in images if c.gt_class and c.gt_class != GOOD]
    out: dict[str, LevelEvaluation] = {}
    image_level = _level("image", [c.gt_class for c in defective], [c.class_name for c in defective])  # type: ignore[misc]
    if image_level is not None:
        out["image"] = image_level
    run = store.get_run(run_id)
    gt_image = {c.image: c.gt_class for c in defective}
    gt_labels = {label.region_id: label.class_name for label in store.list_labels(run.project_id, SOURCE_GROUND_TRUTH)}
    regions = regions_frame(store, run_id)
    truth, predicted = [], []
    for row in regions.itertuples(index=False):
        gt = gt_labels.get(row.region_id) or gt_image.get(row.image)
        if gt is None or gt == GOOD:
            continue
        truth.append(gt)
        predicted.append(row.class_name)
    region_level = _level("region", truth, predicted)
    if region_level is not None:
        out["region"] = region_level
    return out


def with_good(store: Store, run_id: int) -> LevelEvaluation | None:
    """Image-level metrics over all test images with ground truth, "good" as one more class
    (normal predicted as the normal class): the paper's protocol."""
    images = [c for c in store.image_classes(run_id) if c.gt_class]
    truth = [NORMAL_CLASS if c.gt_class == GOOD else str(c.gt_class) for c in images]
    return _level("image (with good)", truth, [c.class_name for c in images])


# ------------------------------------------------------------------------------ run comparison


@dataclass(frozen=True)
class RunComparison:
    """How run B relates to run A: matched clusters, B's new clusters, regions that changed."""

    matches: pd.DataFrame  # cluster A, cluster B, shared regions, size A, size B
    new_clusters: pd.DataFrame  # clusters of B matched by no cluster of A
    changed: pd.DataFrame  # region id, image, cluster in A, cluster in B
    shared_regions: int


def compare_runs(store: Store, run_a: int, run_b: int) -> RunComparison:
    """Match the clusters of two runs by shared regions and list what changed."""
    clusters_a = {c.id: c for c in store.list_clusters(run_a)}
    clusters_b = {c.id: c for c in store.list_clusters(run_b)}
    matches = store.match_clusters(run_a, run_b)
    match_rows = [
        {
            "cluster in A": clusters_a[m.cluster_a_id].display_name if m.cluster_a_id in clusters_a else f"#{m.cluster_a_id}",
            "cluster in B": clusters_b[m.cluster_b_id].display_name if m.cluster_b_id in clusters_b else f"#{m.cluster_b_id}",
            "shared regions": m.overlap,
            "regions in A": clusters_a[m.cluster_a_id].region_count if m.cluster_a_id in clusters_a else None,
            "regions in B": clusters_b[m.cluster_b_id].region_count if m.cluster_b_id in clusters_b else None,
        }
        for m in matches
    ]
    matched_b = {m.cluster_b_id for m in matches}
    new_rows = [
        {"cluster in B": c.display_name, "regions": c.region_count, "images": c.image_count,
         "normal": c.is_normal}
        for c in clusters_b.values() if c.id not in matched_b and c.region_count > 0
    ]
    changes = store.changed_regions(run_a, run_b)
    changed = pd.DataFrame(
        [{"region": c.region_id, "image": c.image, "cluster in A": c.cluster_a_name, "cluster in B": c.cluster_b_name}
         for c in changes],
        columns=["region", "image", "cluster in A", "cluster in B"],
    )
    shared = sum(m.overlap for m in matches) + len(changes)  # unchanged (matched pair) + changed
    return RunComparison(
        matches=pd.DataFrame(match_rows, columns=["cluster in A", "cluster in B", "shared regions", "regions in A", "regions in B"]),
        new_clusters=pd.DataFrame(new_rows, columns=["cluster in B", "regions", "images", "normal"]),
        changed=changed,
        shared_regions=shared,
    )
