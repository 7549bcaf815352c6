"""Counts that must agree on the Detection & MEBin page (issue 24, defect 3).

The header's "With anomalies", the crops-per-image chart, the filter and the image picker count an
image's ordinary crops, as a discovery run (and Explore) sees them; the override caption counts
the crops that "Apply and re-crop" then records, not MEBin's raw components.
"""

from __future__ import annotations

import re

from core.demo import DemoConfig, generate_demo
from storage import DONE
from jobs import runner
from webapp import intake, job_control

from builders import TINY_DEMO, demo_maps
from test_app_core import assert_clean, open_page


def test_detection_counts_agree_with_the_crops_and_the_override_caption_with_what_it_records(workspace, tmp_path):
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    project = intake.create_project(workspace, "gt maps", intake.summarize_dataset(root, demo_maps(root, tmp_path / "maps")))
    at = open_page("views/review.py", project_id=project.id)
    at.button(key="maps_start").click().run()
    (run,) = workspace.list_runs(project.id, kind=job_control.DETECT)
    assert runner.execute(workspace, run.id) == DONE  # the page queued it; a worker's runner, here in this process

    at = open_page("views/review.py", project_id=project.id)
    assert_clean(at)
    regions = workspace.list_regions(project.id)
    images = {b["image"] for b in workspace.list_binarizations(project.id)}
    with_crops = {r.image for r in regions if not r.weak and r.area > 0}
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["With anomalies"] == f"{len(with_crops)} / {len(images)}"
    bars = at.get("plotly_chart")[1].proto.spec
    assert '"Crops per image' in bars
    at.selectbox(key="review_filter").set_value("without anomalies").run()
    shown = [o.split("  ·  ")[0] for o in at.selectbox(key="review_image").options]
    assert set(shown) == images - with_crops
    at.selectbox(key="review_filter").set_value("with anomalies").run()
    image = sorted(with_crops)[0]
    at.selectbox(key="review_image").set_value(image).run()

    # The override caption says how many crops the threshold makes; applying it records that many.
    for threshold in (8, 60, 200):
        at.slider(key=f"override_{image}").set_value(threshold).run()
        caption = next(c.value for c in at.caption if c.value.startswith(f"At {threshold}:"))
        promised = int(re.search(r"(\d+) crop\(s\)", caption).group(1))
        at.button(key=f"override_{image}_apply").click().run()
        assert_clean(at)
        recorded = [r for r in workspace.image_regions(project.id, image) if not r.weak and r.area > 0]
        assert len(recorded) == promised, (threshold, caption)
        assert any(f"threshold {threshold}, {promised} crop(s)" in s.value for s in at.success)
    # Making the maps again says it replaces the thresholds set by hand (it dropped them silently).
    assert any("set by hand" in w.value and "are replaced" in w.value for w in at.warning)
