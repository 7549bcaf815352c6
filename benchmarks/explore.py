"""How fast the Explore page renders with 5,000 regions (target: under 3 s once cached).

Fills a temporary workspace through the storage API (synthetic images, crops, masks, a finished
run with clusters, UMAP points and embeddings), then renders webapp/views/explore.py with
Streamlit's AppTest: cold (empty caches: the baseline), warm (figure, points and thumbnails
cached), with a 500-point selection, and right after an edit (new revision: the figure is
rebuilt). Prints a table; run `python -m benchmarks.explore [--regions N]` from the repository root
(it fills the store with the tests' `builders.fill_store`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.builders import fill_store
from webapp import selection as explore_selection

ROOT = Path(__file__).resolve().parents[1]

PAGE = ROOT / "webapp" / "views" / "explore.py"


def render(at: AppTest) -> float:
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(at.exception[0].value)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=5000, help="number of regions (2 per image)")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5, help="warm renders to take the median of")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="studio-bench-") as folder:
        start = time.perf_counter()
        filled = fill_store(Path(folder), n_images=args.regions // 2, regions_per_image=2,
                            n_classes=args.classes, image_size=48)
        fill_s = time.perf_counter() - start
        os.environ["STUDIO_WORKSPACE"] = str(filled.store.workspace)
        store, run_id = filled.store, filled.run_id

        start = time.perf_counter()
        store.umap_points(run_id)
        query_s = time.perf_counter() - start

        def app(**session: object) -> AppTest:
            at = AppTest.from_file(str(PAGE), default_timeout=120)
            at.session_state["project_id"] = filled.project_id
            at.session_state["run_id"] = run_id
            for key, value in session.items():
                at.session_state[key] = value
            return at

        rows: list[tuple[str, float]] = []
        cold = []
        for _ in range(2):
            st.cache_resource.clear()
            st.cache_data.clear()
            cold.append(render(app()))
        rows.append(("cold render (empty caches) [baseline]", min(cold)))
        at = app()
        render(at)
        warm = [render(at) for _ in range(args.repeat)]
        rows.append(("warm rerun, nothing selected", statistics.median(warm)))

        selection = filled.region_ids[: min(500, len(filled.region_ids))]
        at.session_state[explore_selection.SELECTION_KEY] = selection
        rows.append(("first render of a 500-region selection", render(at)))
        rows.append(("warm rerun with the selection", statistics.median(render(at) for _ in range(args.repeat))))

        store.rename_cluster(filled.cluster_ids[0], "renamed")
        rows.append(("rerun after an edit (figure rebuilt)", render(at)))
        rows.append(("warm rerun after the edit", statistics.median(render(at) for _ in range(args.repeat))))
        store.close()

    baseline = rows[0][1]
    print(f"Explore page, {len(filled.region_ids):,} regions, {args.classes} clusters "
          f"(fill {fill_s:.1f} s, umap_points query {1000 * query_s:.0f} ms)")
    print(f"{'case':<44} {'seconds':>8} {'vs cold':>8}")
    for name, seconds in rows:
        print(f"{name:<44} {seconds:>8.3f} {seconds / baseline:>7.2f}x")
    worst_warm = max(s for name, s in rows[1:] if "warm" in name)
    print(f"target: warm render < 3 s -> {'met' if worst_warm < 3.0 else 'NOT met'} ({worst_warm:.3f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
