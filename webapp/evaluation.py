"""How a run's current (edited) classes match the ground truth, and how two runs relate.

Metrics and the choice of images and regions are core's (core.evaluation.metrics.protocol_levels, the
protocol of metrics.json); this module reads the run and builds the tables the pages show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from core.evaluation.metrics import cluster_metrics, protocol_levels
from core.records import GOOD
from storage import NORMAL_CLASS, SOURCE_GROUND_TRUTH, Store
from storage.export import regions_frame
from storage.records import STATE_NO_ANOMALY, display_name


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


def _protocol(store: Store, run_id: int) -> dict[str, tuple[list[str], list]]:
    """The run's current (edited) classes in core's metrics protocol (core.evaluation.metrics.protocol_levels).

    A region's truth is its ground-truth label when storage holds one, else its image's class. A
    whole-image placeholder (no anomaly found) counts in the cluster the engine put it in, as in
    metrics.json, so an unedited run scores here what it recorded; the engineer's marks count.
    """
    images = store.image_classes(run_id)
    run = store.get_run(run_id)
    gt_image = {c.image: c.gt_class or None for c in images}
    gt_labels = {label.region_id: label.class_name for label in store.list_labels(run.project_id, SOURCE_GROUND_TRUTH)}
    regions = regions_frame(store, run_id)
    region_truth = [gt_labels.get(row.region_id) or gt_image.get(row.image) for row in regions.itertuples(index=False)]
    clusters = {c.id: c for c in store.list_clusters(run_id, include_merged=True)}

    def predicted(row) -> str:
        if row.state != STATE_NO_ANOMALY:
            return row.class_name
        cluster = clusters[row.cluster_id]
        return NORMAL_CLASS if cluster.is_normal else display_name(cluster.name, cluster.slot)

    region_predicted = [predicted(row) for row in regions.itertuples(index=False)]
    return protocol_levels([c.gt_class or None for c in images], [c.class_name for c in images],
                           region_truth, region_predicted)


def evaluate_run(store: Store, run_id: int) -> dict[str, LevelEvaluation]:
    """NMI / ARI / F1 and confusion tables of a run's current (edited) classes, as in metrics.json:
    defective images and their regions. Returns {} when the project has no ground truth."""
    levels = _protocol(store, run_id)
    out: dict[str, LevelEvaluation] = {}
    for level in ("image", "region"):
        evaluation = _level(level, *levels[level])
        if evaluation is not None:
            out[level] = evaluation
    return out


def with_good(store: Store, run_id: int) -> LevelEvaluation | None:
    """Image-level metrics over all test images with ground truth, "good" as one more class
    (normal predicted as the normal class): the paper's protocol."""
    truth, predicted = _protocol(store, run_id)["image_with_good"]
    return _level("image (with good)", [NORMAL_CLASS if t == GOOD else t for t in truth], predicted)


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
