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
judged). Below the table: region recall / precision of each extraction and the class count
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
from core.maps import normalize_global, resize_to  # noqa: E402
from core.metrics import cluster_metrics  # noqa: E402
from core.records import GOOD  # noqa: E402

#: Rows: key -> (shown name, extraction, binarizer, representation, guided training).
ROWS = {
    "paper": ("paper-MGViT", "reference", "mebin", "vit", True),
    "descriptors": ("descriptors only", "components", "mebin", "descriptors", True),
    "hybrid": ("hybrid", "components", "mebin", "hybrid", True),
    "unguided": ("hybrid, unguided", "components", "mebin", "hybrid", False),
    "otsu": ("hybrid, Otsu", "components", "otsu", "hybrid", True),
}


def binarize_set(u8_maps: list[np.ndarray], binarizer: str) -> list:
    """MEBin (the method) or Otsu per map (the ablation) over the globally normalized maps."""
    from core import mebin

    return mebin.binarize(u8_maps) if binarizer == "mebin" else mebin.binarize_otsu(u8_maps)


def cut(keys, images, u8_maps, results, extraction: str) -> list:
    """Regions of every image with the given extraction (same maps and thresholds)."""
    from core.config import RegionConfig
    from core.regions import extract_regions

    config = RegionConfig(extraction=extraction)
    regions = []
    for key, map_u8, result in zip(keys, u8_maps, results):
        regions += extract_regions(key, images[key], result.normalized, result.mask, result.num_anomalies, config,
                                   map_u8=map_u8, threshold=result.threshold)
    return regions


def region_probabilities(regions, images, representation: str, k: int, guided: bool, model_config, train_config,
                         device, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, 1 + K] with column 0 the normal slot, the representation grouped on)."""
    from core.descriptors import combine, describe_regions
    from core.grouping import fuse_representation, grouped_probabilities
    from core.predict import region_probabilities as head_probabilities

    scores = np.array([r.score for r in regions], np.float32)
    embedding = logits = None
    if representation != "descriptors":
        from core.inference import infer
        from core.train import TrainingData, train

        data = TrainingData(crops=[r.image_crop for r in regions], masks=[r.mask_crop for r in regions],
                            scores=scores, labels=np.full(len(regions), -1, np.int64), base_classes=[])
        trained = train(data, k + 1, model_config, replace(train_config, guided=guided), device, seed=seed)
        inference = infer(trained.model, data.crops, data.masks, device, guided=guided)
        embedding, logits = inference.features, inference.logits
    if representation == "vit":
        return head_probabilities(logits, 0), fuse_representation("vit", embedding, None)
    descriptors = combine(describe_regions(regions, images))
    probabilities, features, _ = grouped_probabilities(representation, embedding, descriptors, k, scores=scores,
                                                       seed=seed)
    return probabilities, features


def image_level(records, regions, probabilities: np.ndarray, tau: float = 100.0) -> dict:
    """Image-level metrics over defective images: area-weighted fusion of their regions."""
    from core.fusion import fuse_image

    rows_of: dict[str, list[int]] = {}
    for index, region in enumerate(regions):
        rows_of.setdefault(region.image, []).append(index)
    truth, predicted = [], []
    for record in records:
        if record.gt_class in (None, GOOD):
            continue
        rows = rows_of.get(record.relpath, [])
        fused = fuse_image(probabilities[rows], [regions[i].area for i in rows], tau)
        truth.append(record.gt_class)
        predicted.append(int(fused.argmax()))
    return cluster_metrics(truth, predicted)


# ----------------------------------------------------------------------------------- sets


def demo_set(per_class: int, seed: int, device):
    """The generated demo: records, images, {"built-in": maps} (PatchCore on its normal images)."""
    from core.dataset import load_dataset
    from core.demo import DemoConfig, generate_demo
    from core.detection import DetectorConfig, detect

    temp = tempfile.mkdtemp(prefix="demo-")
    root = generate_demo(Path(temp) / "demo", DemoConfig(seed=seed, n_per_class=per_class))
    manifest = load_dataset(root)
    records = manifest.unlabeled
    images = {r.relpath: read_image(r.path) for r in records}
    maps = detect(manifest, DetectorConfig(method="patchcore"), device).maps
    return records, images, {"built-in": {k: np.asarray(v, np.float32) for k, v in maps.items()}}


def template_of(path: Path, root: Path) -> Path | None:
    """DeepPCB's golden template of a tested image: normal/<id>_temp.jpg beside images/<id>_test.jpg."""
    stem = path.stem[:-5] if path.stem.endswith("_test") else path.stem
    for candidate in (root / "normal" / f"{stem}_temp{path.suffix}", root / "normal" / path.name):
        if candidate.is_file():
            return candidate
    return None


def deeppcb_set(root: Path, n_images: int, seed: int):
    """DeepPCB as a plain folder: records, images, truth, sizes and the two kinds of maps."""
    from core.coco import find_annotations, load_coco
    from core.dataset import load_dataset

    manifest = load_dataset(root)
    records = sorted(manifest.unlabeled, key=lambda r: r.relpath)
    if n_images and n_images < len(records):
        pick = np.random.default_rng(seed).choice(len(records), size=n_images, replace=False)
        records = [records[i] for i in sorted(pick)]
    images = {r.relpath: read_image(r.path) for r in records}
    sizes = {key: image.shape[:2] for key, image in images.items()}
    truth = load_coco(find_annotations(root), sizes)
    template_maps, annotated = {}, {}
    for record in records:
        gray = read_gray(record.path).astype(np.float32)
        template = template_of(record.path, Path(root))
        difference = np.abs(gray - read_gray(template).astype(np.float32)) if template else np.zeros_like(gray)
        template_maps[record.relpath] = cv2.GaussianBlur(difference, (0, 0), 2.0)
        inside = np.zeros(gray.shape, bool)
        for annotation in truth.by_image.get(record.relpath, []):
            inside |= annotation.mask(gray.shape)
        annotated[record.relpath] = ((difference > 128) & inside).astype(np.float32)
    return records, images, truth, sizes, {"template": template_maps, "annotated": annotated}


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

    from core.coco import match_regions, region_coverage
    from core.descriptors import combine, describe_regions
    from core.device import resolve_device
    from core.estimate import estimate_num_classes
    from core.grouping import fuse_representation
    from core.config import SCRATCH_EPOCHS, MGViTConfig, TrainConfig

    device = resolve_device(args.device)
    model_config = MGViTConfig()
    train_config = replace(TrainConfig(), epochs=args.epochs or SCRATCH_EPOCHS)
    rows = [r for r in args.rows.split(",") if r]
    wanted = [s for s in args.sets.split(",") if s]
    sets = []  # (column name, records, images, maps, k, truth, sizes)
    if "demo" in wanted:
        started = time.perf_counter()
        records, images, maps = demo_set(args.per_class, 0, device)
        print(f"demo: {len(records)} images, built-in detector maps in {time.perf_counter() - started:.0f} s", flush=True)
        sets.append(("demo, image", records, images, maps["built-in"], 5, None, None))
    if {"template", "annotated"} & set(wanted):
        if not args.deeppcb.is_dir():
            print(f"{args.deeppcb}: not there, DeepPCB columns left out")
        else:
            records, images, truth, sizes, maps = deeppcb_set(args.deeppcb, args.pcb_images, 0)
            print(f"DeepPCB: {len(records)} images, {len(truth.annotations)} annotated defects", flush=True)
            for kind in ("template", "annotated"):
                if kind in wanted:
                    sets.append((f"DeepPCB {kind}, region", records, images, maps[kind], 6, truth, sizes))

    table: dict[tuple[str, str], list[dict]] = {}
    notes = []
    for column, records, images, raw, k, truth, sizes in sets:
        keys = [r.relpath for r in records]
        u8 = normalize_global([resize_to(raw[key], images[key].shape[:2]) for key in keys])
        binarized = {b: binarize_set(u8, b) for b in {ROWS[r][2] for r in rows}}
        for row in rows:
            _, extraction, binarizer, representation, guided = ROWS[row]
            regions = cut(keys, images, u8, binarized[binarizer], extraction)
            for seed in range(args.seeds):
                started = time.perf_counter()
                probabilities, _ = region_probabilities(regions, images, representation, k, guided, model_config,
                                                        train_config, device, seed)
                predicted = probabilities.argmax(axis=1)
                if truth is None:
                    metrics = image_level(records, regions, probabilities)
                else:
                    matches = match_regions(regions, truth, sizes)
                    metrics = cluster_metrics([m.gt for m in matches], list(predicted))
                table.setdefault((row, column), []).append(metrics)
                print(f"  {column} | {ROWS[row][0]} seed {seed}: {len(regions)} regions, NMI {metrics['nmi']:.3f} "
                      f"ARI {metrics['ari']:.3f} F1 {metrics['f1']:.3f} ({time.perf_counter() - started:.0f} s)",
                      flush=True)
        regions = cut(keys, images, u8, binarized.get("mebin") or binarize_set(u8, "mebin"), "components")
        descriptors = combine(describe_regions(regions, images))
        estimate = estimate_num_classes(fuse_representation("descriptors", None, descriptors),
                                        scores=np.array([r.score for r in regions]))
        line = f"{column}: --classes auto on the descriptors estimates {estimate.summary()} (truth {k})"
        if truth is not None:
            for extraction in ("reference", "components"):
                found = cut(keys, images, u8, binarized.get("mebin") or binarize_set(u8, "mebin"), extraction)
                coverage = region_coverage(match_regions(found, truth, sizes), truth, keys)
                line += (f"; {extraction} extraction: {coverage['regions']} regions, recall {coverage['recall']:.1%},"
                         f" precision {coverage['precision']:.1%}")
        notes.append(line)

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
