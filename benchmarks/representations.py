"""Discovery quality per representation: one table, demo (image level) and DeepPCB (region level).

    python benchmarks/representations.py [--deeppcb DIR] [--pcb-images 100] [--per-class 14] [--seeds 1]

Rows: the paper's path (MEBin, reference crops, mask-guided MGViT and its heads), descriptors
only, hybrid (MGViT embedding beside the descriptors), and the unguided and Otsu ablations of
the hybrid. Columns: the demo set (generated; built-in detector maps; image level, defective
images, K = 5) and DeepPCB (region level through its COCO annotations, K = 6; a region overlapping
no annotation is a false detection and counts as class "normal") with two kinds of maps: the
golden-template difference (each image against its own normal/<id>_temp.jpg, blurred; the
built-in detector's template method when core.detection has one) and the annotated defect
pixels (the differing pixels inside each annotated box: detection made perfect, only discovery
judged). The template column uses the built-in detector's template method (its own blurred
difference as a stand-in where the detector lacks it). Below the table: region recall / precision of each extraction and the class count
`--classes auto` estimates, per set. Each cell: NMI / F1 (mean over seeds).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from core.imageio import read_gray, read_image  # noqa: E402

#: Rows: key -> (shown name, extraction, binarizer, representation, guided training).
ROWS = {
    "paper": ("paper-MGViT", "reference", "mebin", "vit", True),
    "descriptors": ("descriptors only", "components", "mebin", "descriptors", True),
    "hybrid": ("hybrid", "components", "mebin", "hybrid", True),
    "unguided": ("hybrid, unguided", "components", "mebin", "hybrid", False),
    "otsu": ("hybrid, Otsu", "components", "otsu", "hybrid", True),
}


def row_config(base, row: str):
    """The DiscoveryConfig of one row: extraction, binarizer, representation and guidance."""
    from core.config import RegionConfig

    _, extraction, binarizer, representation, guided = ROWS[row]
    return replace(base, regions=RegionConfig(extraction=extraction), binarizer=binarizer,
                   representation=representation, train=replace(base.train, guided=guided))


def estimate_and_coverage(manifest, maps, config, device) -> tuple[str, dict]:
    """What `--classes auto` answers on the set (stage functions, no training) and region coverage per extraction."""
    from core.config import RegionConfig
    from core.labels import plan_labels
    from core.pipeline import binarize_maps, cut_regions, estimate_classes, prepare_maps, region_descriptors
    from core.region_truth import region_truth_for

    map_set = prepare_maps(manifest.unlabeled, maps)
    binarization = binarize_maps(map_set, config.mebin, config.binarizer)
    coverage = {}
    for extraction in ("reference", "components"):
        regions = cut_regions(map_set, binarization, RegionConfig(extraction=extraction))
        truth = region_truth_for(manifest, regions, map_set, config.ground_truth)
        if truth is not None:
            coverage[extraction] = truth.coverage
    regions = cut_regions(map_set, binarization, config.regions)
    plan = plan_labels(regions, None, None)
    auto = replace(config, classes=None)
    _, estimate = estimate_classes(regions, plan, auto, device, region_descriptors(regions, map_set, auto))
    return estimate.summary(), coverage


# ----------------------------------------------------------------------------------- sets


def demo_set(per_class: int, seed: int, device):
    """The generated demo: records, images, {"built-in": maps} (PatchCore on its normal images)."""
    from core.dataset import load_dataset
    from core.demo import DemoConfig, generate_demo
    from core.detection import DetectorConfig, detect

    temp = tempfile.mkdtemp(prefix="demo-")
    root = generate_demo(Path(temp) / "demo", DemoConfig(seed=seed, n_per_class=per_class))
    manifest = load_dataset(root)
    maps = detect(manifest, DetectorConfig(method="patchcore"), device).maps
    return manifest, {"built-in": {k: np.asarray(v, np.float32) for k, v in maps.items()}}


def template_of(path: Path, root: Path) -> Path | None:
    """DeepPCB's golden template of a tested image: normal/<id>_temp.jpg beside images/<id>_test.jpg."""
    stem = path.stem[:-5] if path.stem.endswith("_test") else path.stem
    for candidate in (root / "normal" / f"{stem}_temp{path.suffix}", root / "normal" / path.name):
        if candidate.is_file():
            return candidate
    return None


def deeppcb_set(root: Path, n_images: int, seed: int):
    """DeepPCB as a plain folder (a seeded draw of its images): manifest and the two kinds of maps."""
    from core.coco import find_annotations, load_coco
    from core.dataset import load_dataset
    from core.records import Manifest

    manifest = load_dataset(root)
    records = sorted(manifest.unlabeled, key=lambda r: r.relpath)
    if n_images and n_images < len(records):
        pick = np.random.default_rng(seed).choice(len(records), size=n_images, replace=False)
        records = [records[i] for i in sorted(pick)]
    manifest = Manifest(manifest.root, manifest.layout, manifest.normal + records, manifest.problems)
    images = {r.relpath: read_image(r.path) for r in records}
    sizes = {key: image.shape[:2] for key, image in images.items()}
    truth = load_coco(find_annotations(root), sizes)
    template_maps, annotated = {}, {}
    for record in records:
        gray = read_gray(record.path).astype(np.float32)
        template = template_of(record.path, Path(root))
        difference = np.abs(gray - read_gray(template).astype(np.float32)) if template else np.zeros_like(gray)
        template_maps[record.relpath] = cv2.GaussianBlur(difference, (0, 0), 2.0)  # used without the detector
        inside = np.zeros(gray.shape, bool)
        for annotation in truth.by_image.get(record.relpath, []):
            inside |= annotation.mask(gray.shape)
        annotated[record.relpath] = ((difference > 128) & inside).astype(np.float32)
    try:  # the built-in detector's golden-template method, when this version has it
        from core.detection import DetectorConfig, detect

        found = detect(manifest, DetectorConfig(method="template"), "cpu").maps
        template_maps = {key: np.asarray(value, np.float32) for key, value in found.items() if key in images}
    except (ImportError, ValueError) as error:
        print(f"built-in template detector not used ({error}); blurred template difference instead")
    return manifest, len(truth.annotations), {"template": template_maps, "annotated": annotated}


# ----------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deeppcb", type=Path, default=ROOT.parent / "shared" / "datasets" / "deeppcb",
                        help="DeepPCB folder (images/, normal/, annotations.json) [../shared/datasets/deeppcb]")
    parser.add_argument("--pcb-images", type=int, default=100, help="DeepPCB images drawn (0 = all 500) [100]")
    parser.add_argument("--per-class", type=int, default=14, help="demo defective images per type [14, as the app's]")
    parser.add_argument("--epochs", type=int, help="training epochs [the scratch default]")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of rows [{','.join(ROWS)}]")
    parser.add_argument("--sets", default="demo,template,annotated", help="comma list of demo,template,annotated")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from core.config import SCRATCH_EPOCHS, DiscoveryConfig, TrainConfig
    from core.device import resolve_device
    from core.pipeline import run_discovery

    device = resolve_device(args.device)
    base = DiscoveryConfig(train=replace(TrainConfig(), epochs=args.epochs or SCRATCH_EPOCHS), device=str(device))
    rows = [r for r in args.rows.split(",") if r]
    wanted = [s for s in args.sets.split(",") if s]
    sets = []  # (column name, manifest, maps, k, metrics block)
    if "demo" in wanted:
        started = time.perf_counter()
        manifest, maps = demo_set(args.per_class, 0, device)
        print(f"demo: {len(manifest.unlabeled)} images, built-in detector maps in {time.perf_counter() - started:.0f} s",
              flush=True)
        sets.append(("demo, image", manifest, maps["built-in"], 5, "image"))
    if {"template", "annotated"} & set(wanted):
        if not args.deeppcb.is_dir():
            print(f"{args.deeppcb}: not there, DeepPCB columns left out")
        else:
            manifest, n_defects, maps = deeppcb_set(args.deeppcb, args.pcb_images, 0)
            print(f"DeepPCB: {len(manifest.unlabeled)} images, {n_defects} annotated defects", flush=True)
            for kind in ("template", "annotated"):
                if kind in wanted:
                    sets.append((f"DeepPCB {kind}, region", manifest, maps[kind], 6, "region"))

    table: dict[tuple[str, str], list[dict]] = {}
    notes = []
    for column, manifest, maps, k, level in sets:
        for row in rows:
            for seed in range(args.seeds):
                started = time.perf_counter()
                config = replace(row_config(base, row), classes=k, seed=seed)
                result = run_discovery(manifest, config, maps=maps)
                metrics = result.metrics[level]
                table.setdefault((row, column), []).append(metrics)
                print(f"  {column} | {ROWS[row][0]} seed {seed}: {len(result.regions)} regions, NMI {metrics['nmi']:.3f} "
                      f"ARI {metrics['ari']:.3f} F1 {metrics['f1']:.3f} ({time.perf_counter() - started:.0f} s)",
                      flush=True)
        summary, coverage = estimate_and_coverage(manifest, maps, base, device)
        line = f"{column}: --classes auto estimates {summary} (truth {k})"
        for extraction, found in coverage.items():
            line += (f"; {extraction} extraction: {found['regions']} regions, recall {found['recall']:.1%}, "
                     f"precision {found['precision']:.1%}")
        notes.append(line)
        print(line, flush=True)

    columns = [s[0] for s in sets]
    print()
    print(f"{'representation (NMI / F1)':<22}" + "".join(f"{c:>28}" for c in columns))
    for row in rows:
        cells = []
        for column in columns:
            runs = table.get((row, column), [])
            cells.append(f"{np.mean([r['nmi'] for r in runs]):.3f} / {np.mean([r['f1'] for r in runs]):.3f}"
                         if runs else "not run")
        print(f"{ROWS[row][0]:<22}" + "".join(f"{c:>28}" for c in cells))
    print()
    for line in notes:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
