"""The whole Studio in a real browser: Debian's Chromium driven by Playwright.

Starts `streamlit run webapp/app.py` on 127.0.0.1 (free port, temporary workspace, tiny demo),
creates the demo project, makes its anomaly maps on the Detection page while reading the progress
bar (it must never go back), runs a tiny discovery to the end on the Discover page, renames a
cluster, merges two, undoes, marks one region (lassoed on the UMAP plot, which keeps it
highlighted) as normal, retrains with "New classes to discover = auto" and follows it on the
Labels page to its end, reloads pages and opens shared links (project, run and page kept),
downloads the regions CSV and checks its rows against the database. Every page is screenshotted
at 1440x900 into tests/artifacts/screenshots/ (git-ignored). The server is always stopped.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "tests" / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
#: Seconds the tiny discovery may take on two CPU cores.
DISCOVERY_TIMEOUT_S = 480


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def start_server(workspace: Path) -> Iterator[str]:
    """`streamlit run webapp/app.py` and one job worker over `workspace` (free local port); both stopped at the end."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (bash dev.sh test does)")
    port = free_port()
    env = {**os.environ, "STUDIO_WORKSPACE": str(workspace), "STUDIO_DEMO_SIZE": "tiny", "PYTHONUNBUFFERED": "1"}
    env.pop("STUDIO_DATABASE_URL", None)
    log = open(workspace / "server.log", "w")
    # As `bash dev.sh app`: the app and one local worker taking the jobs of both queues.
    worker = subprocess.Popen([sys.executable, "-m", "jobs.worker", "--queue", "gpu,cpu", "--concurrency", "1"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "webapp/app.py", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.time() > deadline:
                log.flush()
                raise RuntimeError("the Studio did not start:\n" + (workspace / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        for running in (process, worker):
            if running.poll() is None:
                os.killpg(running.pid, signal.SIGTERM)
                try:
                    running.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(running.pid, signal.SIGKILL)
                    running.wait(timeout=15)
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The Studio on a free local port with a fresh workspace; stopped (with its workers) at the end."""
    workspace = tmp_path_factory.mktemp("browser-workspace")
    with start_server(workspace) as url:
        yield url, workspace


# ------------------------------------------------------------------------------ helpers


def settle(page, timeout_s: float = 60) -> None:
    """Wait until the app's script run is over (and the page stopped changing for a moment)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => { const app = document.querySelector('[data-testid=\"stApp\"]');"
        " return app && app.getAttribute('data-test-script-state') !== 'running'; }",
        timeout=timeout_s * 1000,
    )
    page.wait_for_timeout(400)


def no_traceback(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator('[data-testid="stException"]').first.inner_text()


def shot(page, name: str) -> None:
    settle(page)
    no_traceback(page)
    page.evaluate("() => document.querySelectorAll('[data-testid=\"stMain\"], [data-testid=\"stAppViewContainer\"], section')"
                  ".forEach(e => e.scrollTo(0, 0))")
    page.wait_for_timeout(300)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def goto(page, title: str) -> None:
    """Open a page through the sidebar navigation (keeps the session)."""
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    settle(page)
    page.get_by_role("heading", name=title).first.wait_for(timeout=30_000)


def choose(page, label: str, option: str | re.Pattern, scope=None) -> None:
    """Pick an option of a selectbox or multiselect identified by its label."""
    root = scope or page
    box = root.get_by_role("combobox", name=label, exact=True).first
    box.scroll_into_view_if_needed()
    box.click()
    try:
        page.get_by_role("option", name=option).first.click(timeout=10_000)
    except Exception:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "failure_choose.png"))
        options = page.get_by_role("option")
        raise AssertionError(f"no option {option!r} in {label!r}: "
                             f"{[options.nth(i).inner_text() for i in range(options.count())]}") from None
    page.keyboard.press("Escape")
    settle(page)


def button(page, name: str, scope=None):
    return (scope or page).get_by_role("button", name=name, exact=True).first


def lasso_one_point(page) -> None:
    """Draw a small lasso around the first point of the UMAP plot, away from its neighbours."""
    points = page.locator('[data-testid="stPlotlyChart"] .scatterlayer .trace .points path')
    points.first.wait_for()
    page.wait_for_timeout(500)  # let a re-sent figure finish drawing
    # All centers in one call: the plot may redraw between separate per-point queries.
    centers = [tuple(c) for c in page.evaluate(
        "() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .scatterlayer .trace .points path')]"
        ".map(p => p.getBoundingClientRect()).filter(r => r.width > 0)"
        ".map(r => [r.x + r.width / 2, r.y + r.height / 2])")]
    assert centers, "the UMAP plot shows no point"
    # The point farthest from every other point, so a small lasso holds only it.
    def clearance(c):
        return min([((c[0] - o[0]) ** 2 + (c[1] - o[1]) ** 2) ** 0.5 for o in centers if o != c] or [99.0])
    cx, cy = max(centers, key=clearance)
    r = max(4.0, min(10.0, clearance((cx, cy)) / 2 - 1))
    page.mouse.move(cx - r, cy - r)
    page.mouse.down()
    for x, y in ((cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r), (cx - r, cy - r)):
        page.mouse.move(x, y, steps=6)
    page.mouse.up()
    settle(page)


def gallery_region_ids(page) -> list[int]:
    """Region ids of the gallery thumbnails (their open buttons read '#<id> · <confidence>')."""
    labels = page.get_by_role("button", name=re.compile(r"^#\d+ · ")).all_inner_texts()
    return [int(m.group(1)) for c in labels if (m := re.match(r"#(\d+) ·", c.strip()))]


def progress_value(page) -> float | None:
    """The value (0..100) of the first progress bar on the page, None when there is none."""
    # One query: the bar may vanish (the job ended) between two separate ones.
    value = page.evaluate("() => { const bar = document.querySelector('[data-testid=\"stProgress\"] "
                          "[role=\"progressbar\"]'); return bar ? bar.getAttribute('aria-valuenow') : null; }")
    return None if value is None else float(value)


def dimmed_points(page) -> int:
    """Points the UMAP plot draws dimmed (not selected): a selection is highlighted when > 0."""
    return page.evaluate("() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .scatterlayer "
                         ".trace .points path')].filter(p => parseFloat(getComputedStyle(p).opacity) < 0.5).length")


# ------------------------------------------------------------------------------ the flow


def open_store(workspace: Path):
    from storage import open_workspace

    return open_workspace(workspace)


def test_whole_flow_in_a_browser(server, browser):
    from storage.export import regions_frame

    url, workspace = server
    page = browser.new_page(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page.set_default_timeout(30_000)
    page.goto(url)
    settle(page)
    page.get_by_role("heading", name="Projects").first.wait_for()

    # 1. Create the demo project.
    button(page, "Create the demo project").click()
    settle(page, 120)
    page.get_by_text("Demo project created").first.wait_for(timeout=120_000)
    shot(page, "01_projects")
    # A second click offers to open the existing demo instead of copying it silently.
    page.get_by_role("tab", name=re.compile("Demo")).click()
    assert page.get_by_role("button", name=re.compile(r"^Open demo project #1")).count() >= 1

    # 2. Anomaly maps on the Detection page: the progress bar only moves forward.
    goto(page, "Detection & MEBin")
    button(page, "Make maps and run MEBin").click()
    values: list[float] = []
    deadline = time.time() + DISCOVERY_TIMEOUT_S
    while time.time() < deadline:
        value = progress_value(page)
        if value is not None:
            values.append(value)
        if page.get_by_text("Per image").count() and value is None:
            break
        page.wait_for_timeout(250)
    settle(page)
    assert values, "the Detection page showed no progress bar"
    assert all(b >= a for a, b in zip(values, values[1:])), f"the progress bar went back: {values}"
    page.get_by_role("heading", name="Per image").wait_for()
    shot(page, "02_review")

    store = open_store(workspace)
    try:
        project = store.list_projects()[0]
        detect_run = store.list_runs(project.id, kind="detect")[0]
        assert detect_run.status == "done", detect_run.message
        assert detect_run.progress == 1.0

        # 3. A tiny discovery through the Discover page, run to the end.
        goto(page, "Discover")
        page.get_by_text("Estimate the number of classes").click()
        settle(page)
        for label, value in (("Defect classes (K)", "3"), ("Epochs (0 = auto)", "1")):
            field = page.get_by_role("spinbutton", name=label, exact=True)
            field.fill(value)
            field.press("Enter")
            settle(page)
        choose(page, "Backbone", re.compile("vit_micro_scratch"))
        button(page, "Start discovery").click()
        settle(page)
        page.get_by_role("button", name="Explore the clusters").wait_for(timeout=DISCOVERY_TIMEOUT_S * 1000)
        shot(page, "03_discover")
        run = store.list_runs(project.id, kind="discover", status="done")[0]
        clusters = [c for c in store.list_clusters(run.id) if c.region_count > 0 and not c.is_normal]
        assert clusters and sum(c.region_count for c in clusters) >= 2

        # 4. Explore: the URL names project and run; rename a cluster (Enter submits the form).
        button(page, "Explore the clusters").click()
        settle(page)
        page.get_by_role("heading", name="Explore").first.wait_for()
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
        assert f"project={project.id}" in page.url and f"run={run.id}" in page.url, page.url
        shot(page, "04_explore")
        page.get_by_role("tab", name="Clusters").click()
        if len(clusters) < 2:  # one epoch may leave a single cluster: split it to have two to merge
            split = page.locator('[data-testid="stForm"]').filter(has=page.get_by_text("Split a cluster"))
            choose(page, "Cluster", re.compile(re.escape(clusters[0].display_name) + r" \("), scope=split)
            button(page, "Split", scope=split).click()
            settle(page)
            page.get_by_text("into 2 clusters").first.wait_for()
            clusters = [c for c in store.list_clusters(run.id) if c.region_count > 0 and not c.is_normal]
            assert len(clusters) == 2
            page.get_by_role("tab", name="Clusters").click()
        first, second = clusters[0], clusters[1]
        rename = page.locator('[data-testid="stForm"]').filter(has=page.get_by_text("Rename a cluster"))
        choose(page, "Cluster", re.compile(re.escape(first.display_name) + r" \("), scope=rename)
        name_box = rename.get_by_role("textbox", name=re.compile(r"^New name \(up to 200 characters"))
        name_box.fill("deep scratch")
        name_box.press("Enter")
        settle(page)
        page.get_by_text("Renamed").first.wait_for()
        assert store.get_cluster(first.id).name == "deep scratch"

        # Merge two clusters, then undo the merge.
        page.get_by_role("tab", name="Clusters").click()
        merge = page.locator('[data-testid="stForm"]').filter(has=page.get_by_text("Merge clusters"))
        choose(page, "Merge into (keeps its name)", re.compile("deep scratch"), scope=merge)
        choose(page, "Clusters to merge into it", re.compile(re.escape(second.display_name) + r" \("), scope=merge)
        button(page, "Merge", scope=merge).click()
        settle(page)
        page.get_by_text("Merged").first.wait_for()
        assert store.get_cluster(second.id).merged_into_id == first.id
        shot(page, "05_explore_merged")
        page.get_by_role("button", name=re.compile(r"^Undo")).first.click()
        settle(page)
        page.get_by_text("Undid: merge").first.wait_for()
        assert store.get_cluster(second.id).merged_into_id is None
        assert store.get_cluster(first.id).name == "deep scratch"

        # Lasso one point on the UMAP plot and mark that region as normal; the plot keeps it highlighted.
        lasso_one_point(page)
        page.get_by_role("heading", name=re.compile(r"Selection · 1 region$")).wait_for()
        selected = gallery_region_ids(page)
        assert len(selected) == 1
        button(page, "Mark normal").click()
        settle(page)
        page.get_by_text("Marked 1 region as normal").first.wait_for()
        marked = [a.region.id for a in store.run_assignments(run.id) if a.is_normal]
        assert marked == selected
        assert dimmed_points(page) > 0, "after the rerun the plot lost the selection highlight"
        # Clicking a thumbnail's label opens the region in its image.
        page.get_by_role("button", name=re.compile(rf"^#{selected[0]} · ")).first.click()
        settle(page)
        page.get_by_text(f"Region #{selected[0]}", exact=False).first.wait_for()
        shot(page, "06_explore_selection")

        # 5. Reload (F5) keeps the project, the run and the page.
        page.reload()
        settle(page)
        page.get_by_role("heading", name="Explore").first.wait_for()
        assert f"project={project.id}" in page.url and f"run={run.id}" in page.url, page.url
        assert "/explore" in page.url

        # Images where MEBin found nothing are counted as their own state, not as normal.
        none_found = len(store.run_assignments(run.id, state="no anomaly found"))
        cards = page.locator('[data-testid="stMetric"]').filter(has_text="No anomaly")
        assert cards.first.locator('[data-testid="stMetricValue"]').inner_text().strip() == str(none_found)

        # 6. Override one image's threshold: the finished run and its CSV stay as they were, the
        # page says the next run uses it.
        before_csv = regions_frame(store, run.id).sort_values("region_id").reset_index(drop=True)
        goto(page, "Detection & MEBin")
        slider = page.get_by_role("slider").first
        slider.scroll_into_view_if_needed()
        slider.focus()
        for _ in range(12):
            slider.press("ArrowLeft")
        settle(page)
        button(page, "Apply and re-crop").click()
        settle(page)
        page.get_by_text("recorded for the next discovery run").first.wait_for()
        page.get_by_text(re.compile(r"threshold override\(s\) wait for the next discovery run")).first.wait_for()
        (overridden,) = store.threshold_overrides(project.id)
        # The page still shows the image it changed (in the picker, the message and the captions).
        assert page.get_by_text(overridden).count() >= 2
        shot(page, "02b_review_override")
        after_csv = regions_frame(store, run.id).sort_values("region_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(before_csv, after_csv)

        # 7. Labels: name -> labeled set -> retrain with K = auto, followed here to its end.
        goto(page, "Labels & runs")
        page.get_by_role("button", name=re.compile(r"^Add the \d+ named clusters? to the labeled set")).click()
        settle(page)
        page.get_by_text("regions are now labeled").first.wait_for()
        form = page.locator('[data-testid="stForm"]').filter(has=page.get_by_text("New classes to discover"))
        classes = form.get_by_role("textbox", name="New classes to discover")
        classes.fill("auto")
        epochs = form.get_by_role("spinbutton", name="Epochs")
        epochs.fill("1")
        button(page, "Start the new run", scope=form).click()
        settle(page)
        page.get_by_text(re.compile(r"Discovery run #\d+ is in progress|Last retraining run #\d+")).first.wait_for()
        page.get_by_text(re.compile(r"Last retraining run #\d+")).first.wait_for(timeout=DISCOVERY_TIMEOUT_S * 1000)
        settle(page)
        retrain = store.list_runs(project.id, kind="discover")[0]
        assert retrain.parent_run_id == run.id and retrain.settings["classes"] == "auto"
        assert retrain.status == "done", retrain.message
        page.get_by_text("chosen automatically").first.wait_for()
        shot(page, "07_labels")
        # The next run used the override: its regions of that image are the image's current ones.
        assert "threshold override" in (retrain.message or "")
        current = sorted(r.box for r in store.image_regions(project.id, overridden))
        assert sorted(r.box for r in store.list_regions(project.id, run_id=retrain.id) if r.image == overridden) == current

        goto(page, "Evaluate")
        shot(page, "08_evaluate")

        # 8. Export the regions CSV of the first run: the database's, unchanged by the override.
        goto(page, "Export")
        shot(page, "09_export")
        assert f"run={run.id}" in page.url
        with page.expect_download() as download_info:
            button(page, "Download regions CSV").click()
        path = download_info.value.path()
        downloaded = pd.read_csv(path)
        expected = regions_frame(store, run.id)
        assert len(downloaded) == len(expected) > 0
        downloaded = downloaded.sort_values("region_id").reset_index(drop=True)
        expected = expected.sort_values("region_id").reset_index(drop=True)
        for column in ("region_id", "image", "x0", "y0", "x1", "y1", "cluster_id", "class_name", "is_normal"):
            assert downloaded[column].tolist() == expected[column].tolist(), column
        assert downloaded["confidence"].round(6).tolist() == expected["confidence"].round(6).tolist()
        assert downloaded.loc[downloaded["region_id"] == marked[0], "class_name"].item() == "normal"
        assert "deep scratch" in set(downloaded["class_name"])
        assert downloaded[["region_id", "image", "x0", "y0", "x1", "y1"]].equals(
            before_csv[["region_id", "image", "x0", "y0", "x1", "y1"]])  # the override changed nothing here
        placeholders = downloaded[downloaded["state"] == "no anomaly found"]
        assert len(placeholders) == none_found and set(placeholders["class_name"]) <= {"no anomaly found"}
        assert placeholders["image"].is_unique  # one row per image where nothing was found (strongest spot or whole image)
        weak = {a.region.id for a in store.run_assignments(run.id, state="no anomaly found") if a.region.weak}
        assert ((placeholders["area"] == 0) | placeholders["region_id"].isin(weak)).all()
        cards = page.locator('[data-testid="stMetric"]').filter(has_text="No anomaly")
        assert cards.first.locator('[data-testid="stMetricValue"]').inner_text().strip() == str(none_found)

        # 9. A shared link opens the same project, run and page in a fresh session.
        other = browser.new_page(viewport={"width": 1440, "height": 900})
        try:
            other.goto(f"{url}/evaluate?project={project.id}&run={run.id}")
            settle(other)
            other.get_by_role("heading", name="Evaluate").first.wait_for()
            assert other.get_by_text(f"Run #{run.id} as it is now").count() >= 1
            assert f"run={run.id}" in other.url
        finally:
            other.close()
    finally:
        store.close()
        page.close()
