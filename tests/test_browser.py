"""The whole Studio in a real browser: Debian's Chromium driven by Playwright.

Starts `streamlit run webapp/app.py` on 127.0.0.1 (free port, temporary workspace, tiny demo),
creates the demo project, runs a tiny discovery to the end on the Discover page, renames a
cluster, merges two, undoes, marks one region (clicked on the UMAP plot) as normal, downloads
the regions CSV and checks its rows against the database. Every page is screenshotted at
1280x800 into tests/artifacts/screenshots/ (git-ignored). The server is always stopped.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The Studio on a free local port with a fresh workspace; stopped (with its workers) at the end."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (bash dev.sh test does)")
    workspace = tmp_path_factory.mktemp("browser-workspace")
    port = free_port()
    env = {**os.environ, "STUDIO_WORKSPACE": str(workspace), "STUDIO_DEMO_SIZE": "tiny", "PYTHONUNBUFFERED": "1"}
    env.pop("STUDIO_DATABASE_URL", None)
    log = open(workspace / "server.log", "w")
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
        yield url, workspace
    finally:
        _stop_workers(workspace)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        log.close()


def _stop_workers(workspace: Path) -> None:
    """Stop job processes the server launched (they run in their own sessions) if still alive."""
    from storage import open_workspace

    try:
        store = open_workspace(workspace)
    except Exception:  # noqa: BLE001 - nothing was created, nothing to stop
        return
    try:
        for project in store.list_projects():
            for run in store.list_runs(project.id):
                if run.pid and run.status in ("queued", "running"):
                    try:
                        os.killpg(run.pid, signal.SIGTERM)
                    except (ProcessLookupError, PermissionError):
                        pass
    finally:
        store.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


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
    centers = []
    for i in range(points.count()):
        box = points.nth(i).bounding_box()
        if box:
            centers.append((box["x"] + box["width"] / 2, box["y"] + box["height"] / 2))
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
    """Region ids of the gallery thumbnails (captions '#<id> · <confidence>')."""
    captions = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
    return [int(m.group(1)) for c in captions if (m := re.match(r"#(\d+) ·", c.strip()))]


# ------------------------------------------------------------------------------ the flow


def test_whole_flow_in_a_browser(server, browser):
    from storage import open_workspace
    from storage.export import regions_frame

    url, workspace = server
    page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page.set_default_timeout(30_000)
    page.goto(url)
    settle(page)
    page.get_by_role("heading", name="Projects").first.wait_for()

    # 1. Create the demo project.
    button(page, "Create the demo project").click()
    settle(page, 120)
    page.get_by_text("Demo project created").first.wait_for(timeout=120_000)
    shot(page, "01_projects")

    # 2. A tiny discovery through the Discover page, run to the end.
    goto(page, "Discover")
    page.get_by_text("Estimate the number of classes").click()
    settle(page)
    for label, value in (("Defect classes (K)", "3"), ("Epochs", "1")):
        field = page.get_by_role("spinbutton", name=label, exact=True)
        field.fill(value)
        field.press("Enter")
        settle(page)
    choose(page, "Backbone", re.compile("vit_micro_scratch"))
    button(page, "Start discovery").click()
    settle(page)
    page.get_by_role("button", name="Explore the clusters").wait_for(timeout=DISCOVERY_TIMEOUT_S * 1000)
    shot(page, "03_discover")

    store = open_workspace(workspace)
    try:
        project = store.list_projects()[0]
        run = store.list_runs(project.id, kind="discover", status="done")[0]
        clusters = [c for c in store.list_clusters(run.id) if c.region_count > 0 and not c.is_normal]
        assert clusters and sum(c.region_count for c in clusters) >= 2

        # 3. Explore: rename a cluster (Enter submits the form).
        button(page, "Explore the clusters").click()
        settle(page)
        page.get_by_role("heading", name="Explore").first.wait_for()
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
        shot(page, "04_explore")
        if len(clusters) < 2:  # one epoch may leave a single cluster: split it to have two to merge
            split = page.locator('[data-testid="stForm"]').filter(has=page.get_by_text("Split a cluster"))
            choose(page, "Cluster", re.compile(re.escape(clusters[0].display_name) + r" \("), scope=split)
            button(page, "Split", scope=split).click()
            settle(page)
            page.get_by_text("into 2 clusters").first.wait_for()
            clusters = [c for c in store.list_clusters(run.id) if c.region_count > 0 and not c.is_normal]
            assert len(clusters) == 2
        first, second = clusters[0], clusters[1]
        rename = page.locator('[data-testid="stForm"]').filter(has=page.get_by_text("Rename a cluster"))
        choose(page, "Cluster", re.compile(re.escape(first.display_name) + r" \("), scope=rename)
        name_box = rename.get_by_role("textbox", name="New name (Enter to save; empty clears the name)", exact=True)
        name_box.fill("deep scratch")
        name_box.press("Enter")
        settle(page)
        page.get_by_text("Renamed").first.wait_for()
        assert store.get_cluster(first.id).name == "deep scratch"

        # Merge two clusters, then undo the merge.
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

        # Lasso one point on the UMAP plot and mark that region as normal.
        lasso_one_point(page)
        page.get_by_role("heading", name=re.compile(r"Selection · 1 region$")).wait_for()
        selected = gallery_region_ids(page)
        assert len(selected) == 1
        page.get_by_role("tab", name=re.compile(r"Selected regions \(1\)")).click()
        button(page, "Mark normal").click()
        settle(page)
        page.get_by_text("Marked 1 region as normal").first.wait_for()
        marked = [a.region.id for a in store.run_assignments(run.id) if a.is_normal]
        assert marked == selected
        shot(page, "06_explore_selection")

        # Every other page renders without a traceback and looks finished.
        goto(page, "Detection & MEBin")
        shot(page, "02_review")
        goto(page, "Labels & runs")
        shot(page, "07_labels")
        goto(page, "Evaluate")
        shot(page, "08_evaluate")

        # 4. Export the regions CSV and compare it with the database.
        goto(page, "Export")
        shot(page, "09_export")
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
    finally:
        store.close()
        page.close()
