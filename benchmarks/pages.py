"""Every page of the Studio timed in a real browser (Chromium via Playwright), cold and warm.

Fills a temporary workspace through the storage API (a project with N regions and one finished
discovery run, as benchmarks/explore.py does), starts `streamlit run webapp/app.py` on 127.0.0.1
and opens each page through the sidebar, twice: the first visit (the server's caches cold for
this run) and a second one after a round through the other pages (warm). Time runs from the click
on the sidebar link to the idle page (script run over, every image loaded, the page's title
shown). The baseline, measured in the same run, is a rerun of the Projects page by its own
sidebar link.

    python -m benchmarks.pages --regions 5000   (from the repository root)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.explore import timed, wait_idle
from tests.builders import fill_store
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, start_server

#: (sidebar link, a text the page shows when it is done).
PAGES = [("Projects", "Projects"), ("Detection & MEBin", "Detection & MEBin"), ("Discover", "Discover"),
         ("Explore", "Most doubtful regions"), ("Labels & runs", "Labels & runs"),
         ("Classify new images", "Classify new images"), ("Evaluate", "Evaluate"),
         ("Export", "Export")]


def visit(page, title: str, text: str) -> float:
    link = page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title)
    return timed(page, link.click, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=5000, help="number of regions (2 per image)")
    parser.add_argument("--rounds", type=int, default=3, help="warm rounds to take the median of")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="studio-bench-") as folder:
        filled = fill_store(Path(folder), n_images=args.regions // 2, regions_per_image=2, n_classes=8, image_size=48)
        workspace = Path(filled.store.workspace)
        filled.store.close()
        with start_server(workspace) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.set_default_timeout(120_000)
                start = time.perf_counter()
                page.goto(f"{url}/?project=1&run=1")
                wait_idle(page, "Projects")
                load = time.perf_counter() - start
                times: dict[str, list[float]] = {title: [] for title, _ in PAGES}
                for _ in range(1 + args.rounds):
                    for title, text in PAGES:
                        times[title].append(visit(page, title, text))
                baseline = sorted(visit(page, "Projects", "Projects") for _ in range(args.rounds))[args.rounds // 2]
            finally:
                browser.close()

    print(f"Pages in Chromium, {args.regions:,} regions (first load of the app {load:.2f} s)")
    print(f"{'page':<20} {'first s':>8} {'warm s':>8} {'warm vs baseline':>17}")
    for title, values in times.items():
        warm = sorted(values[1:])[len(values[1:]) // 2]
        print(f"{title:<20} {values[0]:>8.3f} {warm:>8.3f} {warm / baseline:>16.1f}x")
    print(f"{'baseline: Projects again':<20} {'':>8} {baseline:>8.3f}")
    worst = max(sorted(v[1:])[len(v[1:]) // 2] for v in times.values())
    print(f"slowest warm page: {worst:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
