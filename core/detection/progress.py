"""Progress of a detection run for a log file or pipe: a few lines, not one per step."""

from __future__ import annotations

import sys
import time
from typing import TextIO


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
