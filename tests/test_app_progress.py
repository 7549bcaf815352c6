"""The job progress the app shows: one forward-only bar over the detector's phases and stages, a
remaining time from the bar's measured speed, and core's messages in the app's words."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core.decisions import decide
from jobs import discover, wording
from jobs.progress import LINEAR_BAND, Reporter, RemainingTime, StepSpan, linear_remaining


def test_detector_phases_make_one_bar_that_never_goes_back():
    # The detector restarts its counter for every phase (6% -> 1% -> 9% ... in the issue).
    span = StepSpan(0.02, 0.80, {"hashing images": 0.03, "fit: features of normal images": 0.30, "fit: coreset": 0.37,
                                 "predict: anomaly maps": 0.30})
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
    # The bar stalls: the estimate runs down with the clock but never below the job's average
    # speed's time left divided by the band, which grows with the stall (it said "0 s" for minutes).
    stalled = [remaining.update(float(second), 0.40) for second in range(41, 160)]
    floors = [linear_remaining(float(second), 0.40) / LINEAR_BAND for second in range(41, 160)]
    assert all(e >= f - 1e-9 for e, f in zip(stalled, floors)) and stalled[-1] > 60


def test_a_tiny_move_after_a_stall_does_not_make_hours():
    """Issue 24: 80 % for 130 s, then a hair of movement, said '49 min 06 s' (done 2 min later)."""
    remaining = RemainingTime(window_s=30)
    for second in range(1, 81):
        remaining.update(float(second), second / 100)
    for second in range(81, 211):
        remaining.update(float(second), 0.80)
    estimate = remaining.update(211.0, 0.8005)
    assert estimate <= linear_remaining(211.0, 0.8005) * LINEAR_BAND < 120


def trace(segments: list[tuple[float, float, bool]], dt: float = 0.5):
    """(time, bar, true time left) of a job made of (seconds, bar share, moves smoothly?) segments;
    a segment that does not move holds the bar and jumps at its end."""
    total, now, bar = sum(s for s, _, _ in segments), 0.0, 0.0
    for seconds, share, smooth in segments:
        steps = int(seconds / dt)
        for i in range(1, steps + 1):
            now += dt
            yield now, bar + (share * i / steps if smooth else (share if i == steps else 0.0)), total - now
        bar += share


def test_the_estimate_is_within_a_factor_of_two_after_the_first_tenth():
    """A discovery whose stage shares match their times, with one stage holding the bar for 8 % of
    the job (the most the stage shares should allow): within a factor of 2 once 10 % is done."""
    job = [(20, .10, True), (8, .04, True), (8, .04, True), (16, .04, False), (140, .70, True), (12, .06, True),
           (4, .02, True)]
    remaining, worst = RemainingTime(), 1.0
    for now, bar, truth in trace(job):
        estimate = remaining.update(now, bar)
        if estimate is not None and bar >= 0.1 and truth >= 5:
            worst = max(worst, estimate / truth, truth / estimate)
    assert worst < 2.0


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
    text = wording.app_wording("the regions look like a single class (k=2); pass --classes K to split them anyway")
    assert "--" not in text and "set the number of classes (K)" in text
    assert wording.app_wording("--classes 7 is larger than the number of regions found (3)").startswith("K = 7")
    assert "--" not in wording.app_wording("no weights: pass --weights FILE or --backbone NAME")


def test_a_retrain_with_auto_leaves_room_for_new_classes():
    config = decide({"classes": "auto"}).config
    labeled = SimpleNamespace(base_classes=["scratch"])
    roomy = discover.with_room_for_new_classes(config, labeled, {"a#0": "hole", "b#0": "scratch", "c#0": "stain"})
    assert roomy.estimate.k_min == 3 + 2 and roomy.estimate.k_max >= roomy.estimate.k_min
    assert discover.with_room_for_new_classes(config, None, None) is config  # nothing named: unchanged
    fixed = decide({"classes": 4}).config
    assert discover.with_room_for_new_classes(fixed, None, {"a#0": "hole"}) is fixed


def test_the_page_runs_a_stalled_workers_estimate_down_but_not_to_zero():
    from datetime import datetime, timedelta, timezone

    from webapp.widgets import run_remaining

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    run = SimpleNamespace(status="running", progress=0.98, started_at=start, finished_at=None,
                          heartbeat_at=start + timedelta(seconds=100), timings={"remaining_s": 2.0})
    later = start + timedelta(seconds=256)  # 156 s at 98 % without a write: it said "1 s", then "0 s"
    assert run_remaining(run, later) == pytest.approx(linear_remaining(256, 0.98) / LINEAR_BAND)
    soon = start + timedelta(seconds=101)  # just after the write: its estimate, run down by a second
    assert run_remaining(run, soon) == pytest.approx(max(1.0, linear_remaining(101, 0.98) / LINEAR_BAND))


@pytest.mark.parametrize("normal", [30, 8])
def test_the_detectors_plan_sizes_its_steps_by_the_data_set(tmp_path, normal):
    """auto offline compares two detectors on a sample, then fits one in full: the comparison's
    six steps took half of what was left each, so the full fit moved nothing for a third of a
    demo detection. The plan gives every step the share its image count says, and either full
    fit (learned or filter bank) completes the bar."""
    from core.dataset import load_dataset
    from core.demo.build import DemoConfig, generate_demo
    from core.detection.config import DetectorConfig
    from core.detection.plan import step_shares

    root = generate_demo(tmp_path / "demo", DemoConfig(image_size=64, n_train_good=normal, n_test_good=4,
                                                        n_per_class=6, defect_types=("scratch", "hole")))
    shares = step_shares(load_dataset(root), DetectorConfig())
    compare = sum(v for k, v in shares.items() if k.startswith("choosing the detector"))
    learned_path = compare + sum(v for k, v in shares.items() if k.startswith(("learned:", "predict:", "hashing")))
    bank_path = compare + sum(v for k, v in shares.items() if k.startswith(("fit:", "predict:", "hashing")))
    if normal >= 22:  # enough references to learn from: auto compares on a sample first
        assert 0.2 < compare < 0.8 and shares["predict: anomaly maps"] > 0.1
        assert learned_path == pytest.approx(1.0, abs=0.01) and bank_path == pytest.approx(1.0, abs=0.1)
    else:  # too few for the learned detector: the filter bank alone, no comparison
        assert compare == 0 and sum(shares.values()) == pytest.approx(1.0)
    span, bar = StepSpan(0.0, 1.0, shares), []
    for step in shares:  # the learned path as auto reports it (the filter bank's full fit skipped)
        if step.startswith("fit:") and normal >= 22:
            continue
        bar += [span.position(step, done, 4) for done in range(5)]
    assert all(b >= a for a, b in zip(bar, bar[1:])) and bar[-1] > 0.9
