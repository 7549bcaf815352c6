"""The synthetic data sets: the demo (`build`, drawing its flange scene in `scene`) and the hard
textured-tile set (`hard`). Synthetic sets do not predict real data: judge changes on the real
sets as well (docs/results.md)."""

from core.demo.build import DemoConfig, generate_demo, gt_masks_to_maps, maps_from_ground_truth
from core.demo.hard import HardDemoConfig, generate_hard_demo

__all__ = [
    "DemoConfig",
    "HardDemoConfig",
    "generate_demo",
    "generate_hard_demo",
    "gt_masks_to_maps",
    "maps_from_ground_truth",
]
