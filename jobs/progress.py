"""Progress of a job as the engineer sees it: one bar over all stages that never goes back, and a
remaining time measured from how fast the bar actually moved.

`Reporter` is what a job calls: it maps each stage's own 0..1 (or a detector sub-step's
done/total) onto the job's bar, keeps the bar monotonic, throttles the database writes and polls
the cancel flag. No `st.*` here: the worker process uses it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from storage import Store

#: Friendly names of the stages shown on the progress bar.
STAGE_LABELS = {
    "loading": "Reading the data set",
    "maps": "Anomaly maps",
    "mebin": "MEBin binarization",
    "regions": "Cropping anomaly regions",
    "estimate": "Estimating the number of classes",
    "training": "Training the mask-guided ViT",
    "prediction": "Predicting classes and the 2-D map",
    "metrics": "Computing metrics",
    "saving": "Saving results",
}
#: Most points kept in a run's loss history (older points are thinned out).
MAX_LOSS_POINTS = 1500
#: Shortest interval between two progress writes to the database, seconds.
PROGRESS_INTERVAL_S = 0.5
#: The remaining time is measured over the bar's movement in this many recent seconds.
RATE_WINDOW_S = 30.0
#: The estimate stays within this factor of the time left at the job's average speed.
LINEAR_BAND = 1.25
#: Less movement than this in the window counts as standing still.
MIN_MOVE = 0.002


class JobCancelled(Exception):
    """The engineer asked the run to stop."""


class StepSpan:
    """Sub-steps (detector phases) reported as (name, done, total) mapped onto one part of the bar.

    Known sub-steps take their share (core.detection.plan.step_shares: sized by the data set) in the
    order they start; an unknown one takes half of what is left. The position only moves forward.
    """

    def __init__(self, start: float, end: float, shares: Mapping[str, float]) -> None:
        self.start, self.end = start, end
        self.shares = dict(shares)
        self._base = 0.0  # share of the span finished by earlier sub-steps
        self._current: str | None = None
        self._width = 0.0
        self._position = 0.0

    def position(self, name: str, done: int, total: int) -> float:
        """Where on the whole bar sub-step `name` at done/total is."""
        if name != self._current:
            self._base = self._position if self._current is not None else 0.0
            left = max(0.0, 1.0 - self._base)
            self._width = min(left, self.shares.get(name, left / 2))
            self._current = name
        fraction = min(1.0, max(0.0, done / total)) if total > 0 else 1.0
        self._position = max(self._position, self._base + self._width * fraction)
        return self.start + (self.end - self.start) * min(1.0, self._position)


class RemainingTime:
    """Seconds left, from the bar's speed: the recent speed (last RATE_WINDOW_S seconds, smoothed)
    kept within a factor LINEAR_BAND of the whole job's average speed.

    The average anchors the estimate: a bar that barely moved in the window no longer makes it
    jump to hours (80 % for 130 s said "49 min"), and a stall no longer runs it down to "0 s" and
    keeps it there (98 % for 156 s said "1 s"): while the bar stands still the estimate runs down
    with the clock, but never below the average's time left divided by the band, which grows with
    the elapsed time.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, float]] = deque()
        self.estimate: float | None = None
        self._estimated_at = 0.0
        self._start: float | None = None

    def update(self, now: float, progress: float) -> float | None:
        """Add a sample (monotonic seconds, bar 0..1); returns the estimate or None while too early."""
        if self._start is None:
            self._start = now
        self.samples.append((now, progress))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()
        first_time, first_progress = self.samples[0]
        span, moved = now - first_time, progress - first_progress
        if span < 3.0 or progress < 0.01:
            return None
        linear = linear_remaining(now - self._start, progress)
        carried = None if self.estimate is None else max(0.0, self.estimate - (now - self._estimated_at))
        if moved <= MIN_MOVE:  # the bar stands still: the estimate runs down, never below the band
            estimate = linear if carried is None else carried
        else:
            measured = (1.0 - progress) * span / moved
            estimate = measured if carried is None else 0.6 * carried + 0.4 * measured
        self.estimate = min(max(estimate, linear / LINEAR_BAND), linear * LINEAR_BAND)
        self._estimated_at = now
        return self.estimate


def linear_remaining(elapsed: float, progress: float) -> float:
    """Seconds left if the rest of the bar moves at the whole job's average speed so far."""
    return elapsed * (1.0 - progress) / max(progress, 1e-6)


class Reporter:
    """Throttled, monotonic progress writes with a measured remaining time, plus the cancel flag."""

    def __init__(self, store: Store, run_id: int, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.store = store
        self.run_id = run_id
        self.interval_s = interval_s
        self.cancelled = False
        self.loss_history: list[dict[str, Any]] = []
        self.shown = 0.0  # the bar as last reported: never decreases
        self.remaining = RemainingTime()
        self._last_write = 0.0
        self._last_stage: str | None = None
        self._last_poll = 0.0
        self.metrics: dict[str, Any] | None = None  # a job's results kept with the run (detection summary)

    def __call__(self, progress: float, stage: str, message: str = "", *, force: bool = False) -> None:
        now = time.monotonic()
        self.shown = max(self.shown, float(min(max(progress, 0.0), 1.0)))
        remaining = self.remaining.update(now, self.shown)
        if not force and stage == self._last_stage and now - self._last_write < self.interval_s:
            return
        self._last_write = self._last_poll = now
        self._last_stage = stage
        label = STAGE_LABELS.get(stage, stage)
        timings = None if remaining is None else {"remaining_s": round(remaining, 1)}
        self.cancelled = bool(self.store.update_progress(
            self.run_id, self.shown, label, message or None, timings=timings,
            loss_history=self.loss_history or None,
        )) or self.cancelled

    def should_cancel(self) -> bool:
        """Whether the engineer asked to stop (the database is asked at most every interval_s)."""
        now = time.monotonic()
        if not self.cancelled and now - self._last_poll >= self.interval_s:
            self._last_poll = now
            self.cancelled = self.store.is_cancel_requested(self.run_id)
        return self.cancelled

    def check(self) -> None:
        """Raise JobCancelled when the engineer asked to stop."""
        if self.should_cancel():
            raise JobCancelled()

    def add_loss(self, point: dict[str, Any]) -> None:
        """Append a loss point, thinning per-step points when the history grows long."""
        self.loss_history.append(point)
        if len(self.loss_history) > MAX_LOSS_POINTS:
            # keep every epoch-end point and thin the per-step ones
            self.loss_history = [p for i, p in enumerate(self.loss_history) if p.get("epoch_done") or i % 2 == 0]
