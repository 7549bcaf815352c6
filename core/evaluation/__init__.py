"""Evaluation: clustering and detection metrics, COCO ground truth, regions matched to it.

- `metrics`: NMI / ARI / F1 (Hungarian), image and pixel AUROC, the protocol levels.
- `coco`: COCO annotation files, region coverage, labeled crops from boxes.
- `region_truth`: a run's regions matched to COCO annotations and the `region` metrics block.
"""

from core.evaluation.metrics import cluster_metrics, discovery_metrics, image_auroc, pixel_auroc

__all__ = ["cluster_metrics", "discovery_metrics", "image_auroc", "pixel_auroc"]
