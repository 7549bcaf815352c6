"""Progress of a discovery run: the stages' shares of one bar, the reporter, the cancel check."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from core.errors import DiscoveryCancelled
from core.results import PipelineProgress

if TYPE_CHECKING:
    from core.mgvit.train import TrainProgress

__all__ = ["STAGES", "StageReporter", "check_cancel", "stage_seconds"]

#: Stages in order, with their share of the overall progress bar until a run plans its own (stage_seconds).
STAGES: dict[str, float] = {
    "maps": 0.10,
    "mebin": 0.04,
    "regions": 0.04,
    "estimate": 0.04,
    "training": 0.70,
    "prediction": 0.06,
    "metrics": 0.02,
}
#: Seconds on 2 cores per image (i) or region (r), measured on DeepPCB (500 images, 3,660 regions)
#: and the demo (86 images, 89 regions): MEBin 2.1 s / 0.1 s, the cut 4.6 s, masks redrawn against
#: the references 38 s, descriptors and K 3.3 s, grouping and the 2-D map 13 s, MGViT training
#: about 0.013 s per region and epoch.
COST = {"mebin_i": 0.005, "cut_i": 0.01, "redraw_r": 0.0105, "estimate_r": 0.001, "train_r": 0.013,
        "predict_r": 0.0035, "predict": 3.0, "stored_maps_i": 0.002, "metrics_r": 0.0002}
#: Regions per image assumed before the cut has counted them.
REGIONS_PER_IMAGE = 3


def stage_seconds(n_images: int, *, n_regions: int | None = None, redraw: bool = False, epochs: int = 0,
                  detector_s: float = 0.0) -> dict[str, float]:
    """About how long each stage of a discovery takes on 2 cores (COST): the bar's plan.

    n_regions: None before the cut (REGIONS_PER_IMAGE per image is assumed); redraw: masks are
    redrawn against normal references; epochs: MGViT epochs (0: the descriptors train nothing);
    detector_s: the built-in detector's time when the run makes its maps (core.detection.plan)."""
    regions = REGIONS_PER_IMAGE * n_images if n_regions is None else n_regions
    return {
        "maps": detector_s or COST["stored_maps_i"] * n_images,
        "mebin": COST["mebin_i"] * n_images,
        "regions": COST["cut_i"] * n_images + (COST["redraw_r"] * regions if redraw else 0.0),
        "estimate": COST["estimate_r"] * regions,
        "training": COST["train_r"] * regions * epochs,
        "prediction": COST["predict"] + COST["predict_r"] * regions,
        "metrics": COST["metrics_r"] * regions,
    }


class StageReporter:
    """Turns (stage, fraction) into PipelineProgress on one overall bar: STAGES' shares, or a run's
    own plan (`plan`: what is left of the bar shared among the stages not yet finished)."""

    def __init__(self, callback: Callable[[PipelineProgress], None] | None) -> None:
        self.callback = callback
        self.done = 0.0  # overall share of finished stages
        self.shares = dict(STAGES)
        self.finished: set[str] = set()

    def plan(self, seconds: Mapping[str, float]) -> None:
        """Share what is left of the bar among the stages not finished, by their expected seconds
        (stage_seconds); a run plans again when it knows more (the regions counted)."""
        left = [stage for stage in STAGES if stage not in self.finished]
        total = sum(max(float(seconds.get(stage, 0.0)), 0.0) for stage in left)
        if total > 0:
            for stage in left:
                self.shares[stage] = (1.0 - self.done) * max(float(seconds.get(stage, 0.0)), 0.0) / total

    def __call__(self, stage: str, fraction: float, message: str = "", train: TrainProgress | None = None) -> None:
        if self.callback is None:
            return
        fraction = float(min(max(fraction, 0.0), 1.0))
        overall = min(1.0, self.done + self.shares[stage] * fraction)
        self.callback(PipelineProgress(stage, fraction, overall, message, train))

    def finish(self, stage: str, message: str = "") -> None:
        self(stage, 1.0, message)
        self.done += self.shares[stage]
        self.finished.add(stage)


def check_cancel(should_cancel: Callable[[], bool] | None, stage: str) -> None:
    """Raise DiscoveryCancelled when should_cancel() is true (checked between stages)."""
    if should_cancel is not None and should_cancel():
        raise DiscoveryCancelled(f"cancelled before {stage}")
