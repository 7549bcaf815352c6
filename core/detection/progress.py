"""Progress of a detection run as one share that only moves forward, and a quiet log for pipes."""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Rough share of a run's time per stage (stages not listed share what is left equally).
STAGE_WEIGHTS = {
    "hashing images": 0.03,
    "fit: features of normal images": 0.25,
    "fit: training": 0.35,
    "fit: coreset": 0.15,
    "predict: anomaly maps": 0.3,
    "template: registered differences": 0.95,
    "zero-shot: features": 0.3,
    "zero-shot: mutual scoring": 0.65,
}


class OverallProgress:
    """(stage, done, total) -> overall share 0..1 that never goes backwards across stages."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.base = 0.0
        self.value = 0.0

    def __call__(self, stage: str, done: int, total: int) -> float:
        if stage != self.stage:
            if self.stage is not None:
                self.base = min(1.0, self.base + STAGE_WEIGHTS.get(self.stage, 0.1))
            self.stage = stage
        weight = min(STAGE_WEIGHTS.get(stage, 0.1), 1.0 - self.base)
        self.value = max(self.value, min(1.0, self.base + weight * done / max(total, 1)))
        return self.value


class LineProgress:
    """Progress for a log file or pipe: one line per stage start and end, and at most one a minute."""

    def __init__(self, stream: TextIO = sys.stderr, every_s: float = 60.0) -> None:
        self.stream = stream
        self.every_s = every_s
        self.stage: str | None = None
        self.last = 0.0
        self.finished = False

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self.stage:
            self.stage = stage
            self.last = now
            self.finished = done >= total
            print(f"{stage}: {done}/{total}", file=self.stream, flush=True)
        elif (done >= total and not self.finished) or (done < total and now - self.last >= self.every_s):
            self.last = now
            self.finished = done >= total
            print(f"{stage}: {done}/{total}", file=self.stream, flush=True)

    def close(self) -> None:
        """Nothing to release (same interface as the terminal bar)."""
