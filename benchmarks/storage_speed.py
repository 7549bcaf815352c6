"""Storage benchmark on SQLite: import 10,000 regions with assignments, page the largest
cluster, fetch the UMAP points. Each figure is compared with a naive baseline measured in
the same run (one ORM object per row; load a whole cluster and slice it in Python).

    python benchmarks/storage_speed.py [--regions 10000] [--clusters 10] [--dim 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.imageio import write_image
from core.records import ImageRecord, Region
from storage import models as m
from storage.api import Store, open_workspace
from storage.records import AssignmentInput, ClusterInput


def timed(function: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    """Best wall time in ms over `repeat` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best * 1000, result


def make_inputs(regions: int, per_image: int, seed: int) -> tuple[list[ImageRecord], list[Region]]:
    rng = np.random.default_rng(seed)
    images = [ImageRecord(Path(f"/nonexistent/img_{i:05d}.png"), f"test/img_{i:05d}.png", "unlabeled", None) for i in range(regions // per_image)]
    crop = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    mask = np.full((16, 16), 255, dtype=np.uint8)
    out = [
        Region(images[i // per_image].relpath, i % per_image, (0, 0, 16, 16), crop, mask, 200 + i % 50, float(rng.random()))
        for i in range(regions)
    ]
    return images, out


Row = tuple[str, float, str, float | None]


def write_phase(store: Store, folder: str, args: argparse.Namespace, rng: np.random.Generator) -> tuple[list[Row], int, list, int]:
    """Record images, regions and a run's result, each against its baseline; (rows, run id, clusters, images)."""
    project = store.create_project("bench", folder)
    images, regions = make_inputs(args.regions, 5, 0)
    t_images, _ = timed(lambda: store.record_images(project.id, images))

    def files_only() -> None:
        target = Path(folder) / "files_only"
        target.mkdir(exist_ok=True)
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
            list(pool.map(lambda i: (write_image(target / f"c{i}.png", regions[i].image_crop),
                                     write_image(target / f"m{i}.png", regions[i].mask_crop)), range(len(regions))))  # fmt: skip

    t_files, _ = timed(files_only)  # first, so both create new files on a cold folder
    t_regions, infos = timed(lambda: store.record_regions(project.id, regions))
    region_ids = [r.id for r in infos]  # type: ignore[union-attr]
    # Skewed cluster sizes so one cluster is clearly the largest (about a third of the regions).
    weights = np.array([1.0 / (k + 1) for k in range(args.clusters)])
    slots = rng.choice(args.clusters, size=len(region_ids), p=weights / weights.sum())
    embeddings = rng.normal(size=(len(region_ids), args.dim)).astype(np.float32)
    umap = rng.normal(size=(len(region_ids), 2))
    assignments = [
        AssignmentInput(r, int(s), float(rng.random()), float(u[0]), float(u[1]), e)
        for r, s, u, e in zip(region_ids, slots, umap, embeddings)
    ]
    clusters = [ClusterInput(k, is_normal=k == 0) for k in range(args.clusters)]
    run = store.start_run(project.id, "discover")
    t_results, written = timed(lambda: store.write_results(run.id, clusters, assignments))

    # Baseline: the same assignments as one ORM object each, in one session.
    baseline_run = store.start_run(project.id, "discover")
    baseline_clusters = store.write_results(baseline_run.id, clusters, [])

    def naive_insert() -> None:
        by_slot = {c.slot: c.id for c in baseline_clusters}
        with Session(store.engine) as session, session.begin():
            session.add_all(
                m.Assignment(run_id=baseline_run.id, region_id=a.region_id, cluster_id=by_slot[a.slot], original_cluster_id=by_slot[a.slot],
                             confidence=a.confidence, umap_x=a.umap_x, umap_y=a.umap_y, embedding=np.asarray(a.embedding, np.float32).tobytes(),
                             is_normal=False)  # fmt: skip
                for a in assignments
            )

    t_naive_insert, _ = timed(naive_insert)
    rows = [(f"record {len(images)} images", t_images, "-", None),
            (f"record {len(regions)} regions (+ crop/mask PNGs)", t_regions, "same PNGs, no DB", t_files),
            (f"write {len(assignments)} assignments (dim {args.dim})", t_results, "ORM add_all", t_naive_insert)]
    return rows, run.id, written, len(images)  # type: ignore[return-value]


def read_phase(store: Store, run_id: int, written: list, images: int, args: argparse.Namespace) -> list[Row]:
    """Page the largest cluster, read the UMAP points and image classes, rename and undo."""
    largest = max(written, key=lambda c: c.region_count)
    t_list, _ = timed(lambda: store.list_clusters(run_id), args.repeat)
    t_first, page = timed(lambda: store.cluster_regions(largest.id, offset=0, limit=args.page), args.repeat)
    last_offset = max(0, largest.region_count - args.page)
    t_last, _ = timed(lambda: store.cluster_regions(largest.id, offset=last_offset, limit=args.page), args.repeat)

    def naive_page() -> list[m.Assignment]:
        with Session(store.engine) as session:
            everything = session.scalars(select(m.Assignment).where(m.Assignment.cluster_id == largest.id)).all()
            return sorted(everything, key=lambda a: (a.confidence, a.region_id))[last_offset : last_offset + args.page]

    t_naive_page, _ = timed(naive_page, args.repeat)
    t_umap, frame = timed(lambda: store.umap_points(run_id), args.repeat)

    def naive_umap() -> list[tuple]:
        with Session(store.engine) as session:
            out = []
            for a in session.scalars(select(m.Assignment).where(m.Assignment.run_id == run_id)):
                cluster = session.get(m.Cluster, a.cluster_id)
                region = session.get(m.Region, a.region_id)
                out.append((a.region_id, a.umap_x, a.umap_y, cluster.name, cluster.color, region.score))  # type: ignore[union-attr]
            return out

    t_naive_umap, _ = timed(naive_umap, max(1, args.repeat // 2))
    t_classes, _ = timed(lambda: store.image_classes(run_id), max(1, args.repeat // 2))
    t_rename, _ = timed(lambda: store.rename_cluster(largest.id, f"name {time.time()}"), args.repeat)
    t_undo, _ = timed(lambda: store.undo(run_id), 1)
    assert len(page.items) == min(args.page, largest.region_count)  # type: ignore[union-attr]
    return [(f"list {len(written)} clusters with counts", t_list, "-", None),
            (f"page largest cluster ({largest.region_count} regions), first {args.page}", t_first, "-", None),
            (f"page largest cluster, last {args.page} (offset {last_offset})", t_last, "load all + slice", t_naive_page),
            (f"UMAP points ({len(frame)} rows, DataFrame)", t_umap, "ORM per row", t_naive_umap),  # type: ignore[arg-type]
            (f"image classes ({images} images, fusion)", t_classes, "-", None),
            ("rename a cluster (one logged edit)", t_rename, "-", None),
            ("undo the rename", t_undo, "-", None)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=10_000)
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--dim", type=int, default=64, help="embedding size stored per assignment")
    parser.add_argument("--page", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        store: Store = open_workspace(Path(folder) / "ws", f"sqlite:///{folder}/bench.sqlite")
        rows, run_id, written, images = write_phase(store, folder, args, np.random.default_rng(0))
        rows += read_phase(store, run_id, written, images, args)
        store.close()

    print(f"storage benchmark, SQLite (WAL), {args.regions} regions, {args.clusters} clusters, best of {args.repeat}")
    print(f"{'operation':<62} {'ms':>9}  {'baseline':<17} {'ms':>9} {'speed-up':>8}")
    for name, ms, baseline, baseline_ms in rows:
        extra = f"{baseline_ms:9.1f} {baseline_ms / ms:7.2f}x" if baseline_ms is not None else f"{'':9} {'':>8}"
        print(f"{name:<62} {ms:9.1f}  {baseline:<17} {extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
