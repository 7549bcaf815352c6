"""Stage 5: regions grouped into novel classes and fused back to images (docs/method.md).

- `descriptors`: weight-free region descriptors; `spectral`: spectral grouping on the
  descriptors / ViT / hybrid representation; `estimate`: the class count with its confidence.
- `predict`: region probabilities and the 2-D map; `fusion`: image classes by area-weighted fusion.
- `clustering`: the engineer's "split"; `matching`: two runs' clusters matched by overlap.
"""

from core.grouping.descriptors import Descriptors, combine, describe_regions
from core.grouping.estimate import ClassEstimate, estimate_num_classes
from core.grouping.fusion import FusionConfig, fuse_image, fuse_regions
from core.grouping.spectral import LABELED_NORMAL, Grouping, group_regions, grouped_probabilities

__all__ = [
    "LABELED_NORMAL",
    "ClassEstimate",
    "Descriptors",
    "FusionConfig",
    "Grouping",
    "combine",
    "describe_regions",
    "estimate_num_classes",
    "fuse_image",
    "fuse_regions",
    "group_regions",
    "grouped_probabilities",
]
