"""Progress of a discovery run: the stages' shares of one bar, the reporter, the cancel check."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from core.errors import DiscoveryCancelled
from core.results import PipelineProgress

if TYPE_CHECKING:
    from core.mgvit.train import TrainProgress

__all__ = ["STAGES", "StageReporter", "check_cancel"]

#: Stages in order, with their share of the overall progress bar.
STAGES: dict[str, float] = {
    "maps": 0.10,
    "mebin": 0.04,
    "regions": 0.04,
    "estimate": 0.04,
    "training": 0.70,
    "prediction": 0.06,
    "metrics": 0.02,
}


class StageReporter:
    """Turns (stage, fraction) into PipelineProgress on one overall bar (STAGES gives the shares)."""

    def __init__(self, callback: Callable[[PipelineProgress], None] | None) -> None:
        self.callback = callback
        self.done = 0.0  # overall share of finished stages

    def __call__(self, stage: str, fraction: float, message: str = "", train: TrainProgress | None = None) -> None:
        if self.callback is None:
            return
        fraction = float(min(max(fraction, 0.0), 1.0))
        overall = min(1.0, self.done + STAGES[stage] * fraction)
        self.callback(PipelineProgress(stage, fraction, overall, message, train))

    def finish(self, stage: str, message: str = "") -> None:
        self(stage, 1.0, message)
        self.done += STAGES[stage]


def check_cancel(should_cancel: Callable[[], bool] | None, stage: str) -> None:
    """Raise DiscoveryCancelled when should_cancel() is true (checked between stages)."""
    if should_cancel is not None and should_cancel():
        raise DiscoveryCancelled(f"cancelled before {stage}")
