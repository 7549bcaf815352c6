"""The job progress the app shows: one forward-only bar over the detector's phases and stages, a
remaining time from the bar's measured speed, and core's messages in the app's words."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core.decisions import decide
from webapp import worker
from webapp.progress import Reporter, RemainingTime, StepSpan


def test_detector_phases_make_one_bar_that_never_goes_back():
    # The detector restarts its counter for every phase (6% -> 1% -> 9% ... in the issue).
    span = StepSpan(0.02, 0.80)
    reports = ([("hashing images", d, 10) for d in range(11)]
               + [("fit: features of normal images", d, 6) for d in range(7)]
               + [("fit: coreset", d, 50) for d in range(0, 51, 5)]
               + [("some new phase", d, 4) for d in range(5)]
               + [("predict: anomaly maps", d, 11) for d in range(12)])
    values = [span.position(name, done, total) for name, done, total in reports]
    assert all(b >= a for a, b in zip(values, values[1:])), values
    assert values[0] == pytest.approx(0.02) and 0.02 < values[-1] <= 0.80
    # Known phases take their share: after hashing and the normal features about a third is done.
    assert values[10 + 7] == pytest.approx(0.02 + 0.78 * 0.33, abs=0.01)


def test_remaining_time_comes_from_the_measured_speed():
    remaining = RemainingTime(window_s=30)
    assert remaining.update(0.0, 0.0) is None
    estimate = None
    for second in range(1, 41):  # 1 % per second: 60 s left at 40 %
        estimate = remaining.update(float(second), second / 100)
    assert estimate == pytest.approx(60, rel=0.1)
    # The bar stalls: first the measured speed drops (more time left), then, once the window
    # holds only the stall, the estimate runs down with the clock instead of jumping.
    stalled = [remaining.update(float(second), 0.40) for second in range(41, 80)]
    assert stalled[0] >= estimate * 0.95
    tail = stalled[-5:]
    assert all(b == pytest.approx(a - 1, abs=0.01) for a, b in zip(tail, tail[1:])), tail


class FakeStore:
    """Records what the reporter writes (the database side is tested in storage)."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, dict | None]] = []

    def update_progress(self, run_id, progress, stage, message, *, timings=None, loss_history=None):
        self.writes.append((progress, timings))
        return False

    def is_cancel_requested(self, run_id):
        return False


def test_reporter_keeps_the_bar_monotonic_whatever_the_stages_report():
    store = FakeStore()
    report = Reporter(store, 1, interval_s=0.0)
    for value, stage in ((0.06, "maps"), (0.01, "maps"), (0.09, "maps"), (0.04, "mebin"), (0.5, "regions")):
        report(value, stage, force=True)
    written = [p for p, _ in store.writes]
    assert written == [0.06, 0.06, 0.09, 0.09, 0.5]


def test_core_messages_reach_the_page_without_command_line_options():
    text = worker.app_wording("the regions look like a single class (k=2); pass --classes K to split them anyway")
    assert "--" not in text and "set the number of classes (K)" in text
    assert worker.app_wording("--classes 7 is larger than the number of regions found (3)").startswith("K = 7")
    assert "--" not in worker.app_wording("no weights: pass --weights FILE or --backbone NAME")


def test_a_retrain_with_auto_leaves_room_for_new_classes():
    config = decide({"classes": "auto"}).config
    labeled = SimpleNamespace(base_classes=["scratch"])
    roomy = worker.with_room_for_new_classes(config, labeled, {"a#0": "hole", "b#0": "scratch", "c#0": "stain"})
    assert roomy.estimate.k_min == 3 + 2 and roomy.estimate.k_max >= roomy.estimate.k_min
    assert worker.with_room_for_new_classes(config, None, None) is config  # nothing named: unchanged
    fixed = decide({"classes": 4}).config
    assert worker.with_room_for_new_classes(fixed, None, {"a#0": "hole"}) is fixed
