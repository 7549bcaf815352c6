"""Region-level ground truth of a run: its regions matched to COCO annotations (core.evaluation.coco)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import PipelineError
from core.records import Manifest, Region
from core.results import MapSet, RegionResult

__all__ = ["RegionTruth", "region_metrics", "region_truth_for"]


class RegionTruth:
    """Region-level ground truth of one run from COCO annotations: class per region and coverage."""

    def __init__(self, source: Path, classes: dict[str, str], coverage: dict[str, Any], problems: str) -> None:
        self.source = source
        self.classes = classes  # region key -> category name or NORMAL_CLASS
        self.coverage = coverage  # core.evaluation.coco.region_coverage
        self.problems = problems  # one message naming what in the file was left out ("" when nothing)


def region_truth_for(manifest: Manifest, regions: Sequence[Region], maps: MapSet,
                     explicit: Path | None = None) -> RegionTruth | None:
    """Match the regions to COCO annotations (explicit file, or annotations.json at the root); None without."""
    from core.evaluation.coco import CocoError, find_annotations, load_coco, match_regions, region_coverage

    try:
        path = find_annotations(manifest.root, explicit)
        if path is None:
            return None
        sizes = {key: image.shape[:2] for key, image in maps.images.items()}
        truth = load_coco(path, sizes)
    except CocoError as error:
        raise PipelineError(str(error)) from error
    matches = match_regions(regions, truth, sizes)
    return RegionTruth(path, {m.region: m.gt for m in matches}, region_coverage(matches, truth, maps.keys),
                       truth.problem_summary())


def region_metrics(regions: Sequence[RegionResult], region_truth: RegionTruth) -> dict[str, Any]:
    """The `region` block of metrics.json from region-level truth, with the coverage and the source file.

    Every region counts; a region on no annotation is class NORMAL_CLASS.
    """
    from core.evaluation.metrics import cluster_metrics

    truth = [region_truth.classes[r.key] for r in regions]
    block: dict[str, Any] = cluster_metrics(truth, [r.cluster for r in regions]) if truth else {
        "nmi": None, "ari": None, "f1": None}
    block = {k: (None if v is None or not np.isfinite(v) else float(v)) for k, v in block.items()}
    block["n"] = len(truth)
    return {"region": block, "region_coverage": region_truth.coverage, "region_truth": str(region_truth.source),
            "region_classes": sorted(set(truth))}
