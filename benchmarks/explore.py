"""How fast the Explore page answers in a real browser (Chromium via Playwright) at N regions.

Fills a temporary workspace through the storage API (synthetic images, crops, masks, a finished
run with clusters, UMAP points and embeddings), starts `streamlit run webapp/app.py` on 127.0.0.1
and times, from the action to the updated page (script run over, the expected text shown, every
gallery thumbnail loaded, the plot drawn): the first render of Explore in a fresh session (server
caches cold for the run), a reload, and the interactions: select by box and by lasso (-> gallery),
hover (-> hover label), the next gallery page, colour by confidence and back, select a cluster,
rename, merge, move. Each interaction is measured twice; the second (warm) counts. The baseline,
measured in the same run, is a reload of the Projects page (the browser's and Streamlit's floor).

    python -m benchmarks.explore --regions 50000   (from the repository root)

The last line reads `worst warm interaction: X s` (target: under 1 s on 2 cores; first render
under 3 s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.builders import fill_store
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, start_server

#: JavaScript: the page is idle (no script run) and every image under `root` has loaded.
IDLE = """(args) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') === 'running') return false;
  if (document.querySelector('[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"]')) return false;
  const imgs = [...document.querySelectorAll('[data-testid="stMain"] img')];
  if (!imgs.every(i => i.complete && i.naturalWidth > 0)) return false;
  const text = document.querySelector('[data-testid="stMain"]').innerText;
  return args.every(t => text.includes(t));
}"""
PLOT = '[data-testid="stPlotlyChart"]'


def wait_idle(page, *texts: str, timeout_s: float = 120) -> None:
    """Until the script run is over and `texts` show; polled every 25 ms."""
    page.wait_for_function(IDLE, arg=list(texts), timeout=timeout_s * 1000, polling=25)


def timed(page, action, *texts: str, before: float = 0.15) -> float:
    """Seconds from `action()` to the idle page showing `texts` (after a short pause to start clean)."""
    page.wait_for_timeout(before * 1000)
    start = time.perf_counter()
    action()
    page.wait_for_timeout(50)  # the rerun starts: do not mistake the previous idle page for the answer
    wait_idle(page, *texts)
    return time.perf_counter() - start


def plot_box(page) -> dict:
    drag_layer = page.locator(f"{PLOT} .draglayer .nsewdrag").first
    drag_layer.wait_for(state="visible")
    box = drag_layer.bounding_box()
    assert box, "the UMAP plot is not drawn"
    return box


def drag(page, points: list[tuple[float, float]]) -> None:
    page.mouse.move(*points[0])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()


def modebar(page, title: str) -> None:
    page.locator(f'{PLOT} .modebar-btn[data-title="{title}"]').first.click()


def select_box(page, fraction: float) -> None:
    """Box-select the plot's central `fraction` (of width and height)."""
    modebar(page, "Box Select")
    b = plot_box(page)
    cx, cy, w, h = b["x"] + b["width"] / 2, b["y"] + b["height"] / 2, b["width"] * fraction, b["height"] * fraction
    drag(page, [(cx - w / 2, cy - h / 2), (cx + w / 2, cy + h / 2)])


def select_lasso(page, fraction: float) -> None:
    """Lasso a diamond in the middle of the plot."""
    modebar(page, "Lasso Select")
    b = plot_box(page)
    cx, cy, r = b["x"] + b["width"] / 2, b["y"] + b["height"] / 2, min(b["width"], b["height"]) * fraction / 2
    drag(page, [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy), (cx, cy - r)])


#: JavaScript: the page coordinates of point `i` of the plot's first trace.
POINT_XY = """(step) => {
  const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  const trace = gd._fullData.reduce((a, b) => ((b.x || []).length > (a.x || []).length ? b : a));
  const inside = [];
  for (let i = 0; i < trace.x.length; i++) {
    const x = box.left + xa._offset + xa.l2p(trace.x[i]), y = box.top + ya._offset + ya.l2p(trace.y[i]);
    if (y > 40 && y < window.innerHeight - 40 && x > 0 && x < window.innerWidth) inside.push([x, y]);
  }
  return inside.length ? inside[(7 * step) % inside.length] : null;
}"""


def hover(page, step: int) -> float:
    """Seconds from moving the mouse onto a point of the plot (one in the window) to its hover label."""
    page.locator(PLOT).first.scroll_into_view_if_needed()
    b = plot_box(page)
    point = page.evaluate(POINT_XY, step)
    assert point, "no point of the plot lies inside the window"
    page.mouse.move(min(point[0] + 30, b["x"] + b["width"] - 2), min(point[1] + 30, b["y"] + b["height"] - 2))
    page.wait_for_timeout(300)
    start = time.perf_counter()
    page.mouse.move(*point, steps=5)
    page.locator(f"{PLOT} .hoverlayer .hovertext").first.wait_for(state="attached", timeout=30_000)
    return time.perf_counter() - start


def clusters_tab(page) -> None:
    page.get_by_role("tab", name="Clusters").click()


def form(page, title: str):
    return page.locator('[data-testid="stForm"]').filter(has=page.get_by_text(title, exact=True))


def choose(page, scope, label: str, index: int) -> None:
    """Pick the index-th option of a selectbox (or multiselect) by keyboard."""
    box = scope.get_by_role("combobox", name=label, exact=True).first
    box.scroll_into_view_if_needed()
    box.click()
    for _ in range(index):
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")


def measure(page, url: str, n_regions: int) -> list[tuple[str, float, float]]:
    """(interaction, first, second) seconds."""
    rows: list[tuple[str, float, float]] = []

    def twice(name: str, run) -> None:
        rows.append((name, run(1), run(2)))
        print(f"  {name}: {rows[-1][1]:.3f} / {rows[-1][2]:.3f} s", file=sys.stderr, flush=True)

    explore = f"{url}/explore?project=1&run=1"
    twice("baseline: reload the Projects page", lambda i: timed(page, lambda: page.goto(url), "Projects"))
    first = timed(page, lambda: page.goto(explore), f"{n_regions:,}", "Most doubtful regions")
    rows.append(("first render of Explore (cold caches)", first, timed(page, page.reload, "Most doubtful regions")))
    twice("hover a point -> label", lambda i: hover(page, i))
    twice("select by box -> gallery", lambda i: timed(page, lambda: select_box(page, 0.3 + 0.05 * i), "Selection ·"))
    twice("next gallery page", lambda i: timed(page, lambda: page.get_by_role("button", name="Next").first.click(),
                                                f"Page {i + 1} of"))
    twice("select by lasso -> gallery", lambda i: timed(page, lambda: select_lasso(page, 0.2 + 0.05 * i), "Selection ·"))
    radio = page.locator('[data-testid="stRadio"]').filter(has_text="Colour by")
    twice("colour by confidence (and back)",
          lambda i: max(timed(page, lambda: radio.get_by_text("confidence", exact=True).click(), "Selection ·"),
                        timed(page, lambda: radio.get_by_text("cluster", exact=True).click(), "Selection ·")))

    def select_cluster(i: int) -> float:
        clusters_tab(page)
        choose(page, page, "Cluster to show in the gallery", i)
        return timed(page, lambda: page.get_by_role("button", name="Select", exact=True).click(), "(cluster ")
    twice("select a cluster -> gallery", select_cluster)

    def rename(i: int) -> float:
        clusters_tab(page)
        box = form(page, "Rename a cluster").get_by_role("textbox")
        box.fill(f"renamed {i}")
        return timed(page, lambda: box.press("Enter"), f"renamed {i}")
    twice("rename a cluster", rename)

    def merge(i: int) -> float:
        clusters_tab(page)
        scope = form(page, "Merge clusters")
        choose(page, scope, "Merge into (keeps its name)", 0)
        choose(page, scope, "Clusters to merge into it", 2)  # a multiselect highlights nothing at first
        return timed(page, lambda: scope.get_by_role("button", name="Merge").click(), "Merged")
    twice("merge two clusters", merge)

    def move(i: int) -> float:
        page.get_by_role("tab", name="Selection").click()
        scope = page.locator('[data-testid="stForm"]').filter(has=page.get_by_role("button", name="Move"))
        choose(page, scope, "Move the selected regions to", i)
        return timed(page, lambda: scope.get_by_role("button", name="Move").click(), "Moved")
    twice("move the selection", move)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=50_000, help="number of regions (2 per image)")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--workspace", type=Path, help="reuse a workspace an earlier run filled (skips the fill)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="studio-bench-") as folder:
        start = time.perf_counter()
        if args.workspace:  # a workspace filled by an earlier run (project 1, run 1): no fill
            workspace, n_regions = args.workspace.resolve(), args.regions
        else:
            filled = fill_store(Path(folder), n_images=args.regions // 2, regions_per_image=2,
                                n_classes=args.classes, image_size=48)
            workspace, n_regions = Path(filled.store.workspace), len(filled.region_ids)
            filled.store.close()
        fill_s = time.perf_counter() - start
        with start_server(workspace) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.set_default_timeout(120_000)
                try:
                    rows = measure(page, url, n_regions)
                except Exception:
                    page.screenshot(path=str(Path(tempfile.gettempdir()) / "explore-benchmark-failed.png"))
                    print(f"failed; the page as it was: {tempfile.gettempdir()}/explore-benchmark-failed.png",
                          file=sys.stderr)
                    raise
            finally:
                browser.close()

    baseline = rows[0][2]
    print(f"Explore in Chromium, {n_regions:,} regions, {args.classes} clusters (fill {fill_s:.0f} s)")
    print(f"{'interaction':<42} {'first s':>8} {'warm s':>8} {'warm vs baseline':>17}")
    for name, first, warm in rows:
        print(f"{name:<42} {first:>8.3f} {warm:>8.3f} {warm / baseline:>16.1f}x")
    worst = max(warm for name, _, warm in rows[2:])
    print(f"first render: {rows[1][1]:.2f} s (target < 3 s)")
    print(f"worst warm interaction: {worst:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
