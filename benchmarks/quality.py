"""Discovery quality: one table, rows = how regions are represented, columns = data sets.

    python benchmarks/quality.py [--sets demo,template,annotated] [--rows paper,descriptors,hybrid,taught,unguided,otsu]
                                 [--pcb-images 0] [--per-class 14] [--dataset DIR] [--seeds 1] [--baselines crops,...]

Rows: the paper's path (MEBin, reference crops, mask-guided MGViT and its heads), descriptors
only (no MGViT is trained), hybrid (MGViT embedding beside the descriptors, the paper's
teacher-student), the hybrid whose MGViT is taught the descriptor groups (--prior descriptors),
and the unguided and Otsu ablations of the hybrid. Columns:

- demo: the generated demo (or --dataset, an MVTec-layout folder) with the built-in detector's
  maps; image level over the defective images, K = its number of defect types;
- DeepPCB, template: the built-in detector's golden-template maps; region level through the
  COCO annotations (a region on no annotated box is a false detection, class "normal"), K = 6;
- DeepPCB, annotated: the differing pixels inside each annotated box as the maps (detection made
  perfect, only discovery judged). The paper's MEBin finds no stable threshold on such binary
  maps; a row it refuses prints "refused".
- AITEX, masks: real woven fabric (4096 x 256 strips, 11 defect types, one per image); its
  ground-truth masks as the maps (blurred, light noise: core.demo.build.maps_from_ground_truth),
  image level, K = 11, so only discovery is judged;
- AITEX, detector: the built-in detector's maps (defaults, fitted to train/good), end to end
  (slow on 2 cores: tens of minutes; --sets names it to run it).

Each cell: NMI / ARI / F1 (mean over seeds), then the share of defect-free test images called
normal ("no anomaly found" or the normal slot) where the set has them. Below the table, per set: the K that `--classes auto`
estimates with the descriptors and the hybrid representation, and the region recall (share of
annotated defects some region covers) and precision of each extraction. --baselines adds, on the
demo column only: k-means on untrained backbone features of whole images or of the crops, and a
supervised 2-fold reference (the same MGViT trained with the true classes of half the images).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.detection.config import METHODS
from core.imageio import read_gray, read_image
from core.evaluation.metrics import cluster_metrics
from core.records import GOOD

ROOT = Path(__file__).resolve().parents[1]

#: Rows: key -> (shown name, extraction, binarizer, representation, guided training, what the hybrid's MGViT is taught).
ROWS = {
    "paper": ("paper-MGViT", "reference", "mebin", "vit", True, "none"),
    "descriptors": ("descriptors only (auto offline)", "components", "mebin", "descriptors", True, "none"),
    "hybrid": ("hybrid (auto with weights)", "components", "mebin", "hybrid", True, "none"),
    "taught": ("hybrid, taught groups", "components", "mebin", "hybrid", True, "descriptors"),
    "unguided": ("hybrid, unguided", "components", "mebin", "hybrid", False, "none"),
    "otsu": ("hybrid, Otsu", "components", "otsu", "hybrid", True, "none"),
}
BASELINES = ("whole", "crops", "supervised")


def row_config(base, row: str):
    """The DiscoveryConfig of one row: extraction, binarizer, representation and guidance."""
    _, extraction, binarizer, representation, guided, prior = ROWS[row]
    return replace(base, regions=replace(base.regions, extraction=extraction), binarizer=binarizer,
                   representation=representation, train=replace(base.train, guided=guided), prior=prior)


def estimates_and_coverage(manifest, maps, base, device, normal_peaks=()) -> tuple[dict, dict]:
    """What `--classes auto` answers (descriptors, hybrid; no training) and each extraction's coverage."""
    from core.config import RegionConfig
    from core.pipeline import (binarize_maps, cut_regions, estimate_classes, plan_labels, prepare_maps,
                               region_descriptors, region_truth_for)

    from core.regions.refine import references_for

    map_set = prepare_maps(manifest.unlabeled, maps, normal_peaks)
    binarization = binarize_maps(map_set, base.mebin, base.binarizer)
    references = references_for([r.path for r in manifest.normal], base.regions)
    coverage = {}
    for extraction in ("reference", "components"):
        regions = cut_regions(map_set, binarization, RegionConfig(extraction=extraction), references=references)
        truth = region_truth_for(manifest, regions, map_set, base.ground_truth)
        if truth is not None:
            coverage[extraction] = truth.coverage
    regions = cut_regions(map_set, binarization, base.regions, references=references)
    plan = plan_labels(regions, None, None)
    estimates = {}
    for representation in ("descriptors", "hybrid"):
        auto = replace(base, classes=None, representation=representation)
        _, estimate = estimate_classes(regions, plan, auto, device, region_descriptors(regions, map_set, auto))
        estimates[representation] = estimate
    return estimates, coverage


# ----------------------------------------------------------------------------------- sets


def demo_set(dataset: Path | None, per_class: int, seed: int, device, method: str = "auto"):
    """The demo (generated unless a folder is given), its built-in detector maps, the detector's choice and the
    held-out normal images' map peaks."""
    from core.dataset import load_dataset
    from core.demo.build import DemoConfig, generate_demo
    from core.detection import DetectorConfig, detect

    if dataset is None:
        dataset = generate_demo(Path(tempfile.mkdtemp(prefix="demo-")) / "demo", DemoConfig(seed=seed, n_per_class=per_class))
    manifest = load_dataset(dataset)
    detection = detect(manifest, DetectorConfig(method=method), device)
    maps = {k: np.asarray(v, np.float32) for k, v in detection.maps.items()}
    return manifest, maps, detection.choice, list(detection.normal_peaks)


def template_of(path: Path, root: Path) -> Path | None:
    """DeepPCB's golden template of a tested image: normal/<id>_temp.jpg beside images/<id>_test.jpg."""
    stem = path.stem[:-5] if path.stem.endswith("_test") else path.stem
    for candidate in (root / "normal" / f"{stem}_temp{path.suffix}", root / "normal" / path.name):
        if candidate.is_file():
            return candidate
    return None


def deeppcb_set(root: Path, n_images: int, seed: int):
    """DeepPCB as a plain folder (all images, or a seeded draw): manifest, defect count and both kinds of maps."""
    from core.evaluation.coco import find_annotations, load_coco
    from core.dataset import load_dataset
    from core.detection import DetectorConfig, detect
    from core.records import Manifest

    manifest = load_dataset(root)
    records = sorted(manifest.unlabeled, key=lambda r: r.relpath)
    if n_images and n_images < len(records):
        pick = np.random.default_rng(seed).choice(len(records), size=n_images, replace=False)
        records = [records[i] for i in sorted(pick)]
    manifest = Manifest(manifest.root, manifest.layout, manifest.normal + records, manifest.problems)
    sizes = {r.relpath: read_image(r.path).shape[:2] for r in records}
    truth = load_coco(find_annotations(root), sizes)
    annotated = {}
    for record in records:
        gray = read_gray(record.path).astype(np.float32)
        template = template_of(record.path, Path(root))
        difference = np.abs(gray - read_gray(template).astype(np.float32)) if template else np.zeros_like(gray)
        inside = np.zeros(gray.shape, bool)
        for annotation in truth.by_image.get(record.relpath, []):
            inside |= annotation.mask(gray.shape)
        annotated[record.relpath] = ((difference > 128) & inside).astype(np.float32)
    found = detect(manifest, DetectorConfig(method="template"), "cpu").maps
    template_maps = {key: np.asarray(value, np.float32) for key, value in found.items() if key in sizes}
    n_defects = sum(len(truth.by_image.get(r.relpath, [])) for r in records)
    return manifest, n_defects, {"template": template_maps, "annotated": annotated}


# ------------------------------------------------------------------------------ baselines


def kmeans_labels(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)


def image_votes(records, regions, region_probabilities: np.ndarray, tau: float) -> tuple[list, list]:
    """Ground truth and area-weighted fused class of each record (docs/method.md stage 6)."""
    from core.grouping.fusion import fuse_image

    truth, predicted = [], []
    for record in records:
        rows = [i for i, r in enumerate(regions) if r.image == record.relpath]
        fused = fuse_image(region_probabilities[rows], [regions[i].area for i in rows], tau)
        truth.append(record.gt_class)
        predicted.append(int(fused.argmax()))
    return truth, predicted


def defect_regions(manifest, maps: dict, config, normal_peaks=()) -> tuple[list, list]:
    """Defective test records and their regions: discovery's own maps, binarization and crop stages."""
    from core.pipeline import binarize_maps, cut_regions, prepare_maps

    prepared = prepare_maps(manifest.unlabeled, maps, normal_peaks)
    binarization = binarize_maps(prepared, config.mebin, config.binarizer)
    defective = [r for r in manifest.unlabeled if r.gt_class != GOOD]
    keys = {r.relpath for r in defective}
    from core.regions.refine import references_for

    references = references_for([r.path for r in manifest.normal], config.regions)
    regions = [r for r in cut_regions(prepared, binarization, config.regions, references=references) if r.image in keys]
    covered = {r.image for r in regions}
    return [r for r in defective if r.relpath in covered], regions


def two_folds(records, seed: int) -> dict[str, int]:
    """Image key -> fold 0 or 1: each class's images shuffled (seeded) and dealt alternately."""
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for name in sorted({r.gt_class for r in records}):
        members = [r.relpath for r in records if r.gt_class == name]
        for position, key in enumerate(rng.permutation(members)):
            fold_of[str(key)] = position % 2
    return fold_of


def baseline(name: str, manifest, maps, config, device, k: int, seed: int, normal_peaks=()) -> dict:
    """One demo baseline: k-means on whole images or crops, or the supervised 2-fold reference."""
    from core.mgvit.inference import backbone_features

    if name == "whole":
        records = [r for r in manifest.unlabeled if r.gt_class != GOOD]
        images = [read_image(r.path) for r in records]
        masks = [np.full(i.shape[:2], 255, np.uint8) for i in images]
        features = backbone_features(images, masks, config.model, device, seed=seed, guided=False)
        return cluster_metrics([r.gt_class for r in records], kmeans_labels(features, k, seed))
    records, regions = defect_regions(manifest, maps, config, normal_peaks)
    if name == "crops":
        features = backbone_features([r.image_crop for r in regions], [r.mask_crop for r in regions],
                                     config.model, device, seed=seed, guided=True)
        truth, predicted = image_votes(records, regions, np.eye(k)[kmeans_labels(features, k, seed)], config.tau)
        return cluster_metrics(truth, predicted)
    from core.mgvit.inference import infer
    from core.grouping.predict import region_probabilities
    from core.mgvit.train import TrainingData, train

    names = sorted({r.gt_class for r in records})
    fold_of = two_folds(records, seed)
    class_of = {r.relpath: names.index(r.gt_class) for r in records}
    truth, predicted = [], []
    for fold in (0, 1):
        train_rows = [i for i, r in enumerate(regions) if fold_of[r.image] != fold]
        test_rows = [i for i, r in enumerate(regions) if fold_of[r.image] == fold]
        data = TrainingData(
            crops=[regions[i].image_crop for i in train_rows], masks=[regions[i].mask_crop for i in train_rows],
            scores=np.ones(len(train_rows), np.float32),
            labels=np.array([class_of[regions[i].image] for i in train_rows], np.int64), base_classes=names)
        trained = train(data, 1, config.model, config.train, device, seed=seed)
        inference = infer(trained.model, [regions[i].image_crop for i in test_rows],
                          [regions[i].mask_crop for i in test_rows], device, guided=config.train.guided)
        probabilities = region_probabilities(inference.logits[:, :len(names)], 0, config.predict.temperature)
        held_out = [r for r in records if fold_of[r.relpath] == fold]
        fold_truth, fold_predicted = image_votes(held_out, [regions[i] for i in test_rows], probabilities, config.tau)
        truth += fold_truth
        predicted += [names[p] for p in fold_predicted]
    return cluster_metrics(truth, predicted)


# ----------------------------------------------------------------------------------- main


def _shared(name: str) -> Path:
    """shared/datasets/<name> in the nearest folder above the repository that has it (worktrees sit deeper)."""
    for parent in ROOT.parents:
        candidate = parent / "shared" / "datasets" / name
        if candidate.is_dir():
            return candidate
    return ROOT.parent / "shared" / "datasets" / name


def aitex_sets(root: Path, wanted: set[str], device) -> list[tuple]:
    """AITEX columns: its masks as maps and, when asked, the built-in detector's maps (with its held-out peaks)."""
    from core.dataset import load_dataset
    from core.demo.build import maps_from_ground_truth
    from core.detection import DetectorConfig, detect

    manifest = load_dataset(root)
    k = len({r.gt_class for r in manifest.unlabeled if r.gt_class not in (None, GOOD)})
    sets = []
    if "aitex" in wanted:
        sets.append((f"AITEX masks ({len(manifest.unlabeled)}), image", manifest,
                     maps_from_ground_truth(manifest.unlabeled), k, "image", []))
    if "aitex-detector" in wanted:
        started = time.perf_counter()
        detection = detect(manifest, DetectorConfig(), device)
        print(f"AITEX: built-in detector maps in {time.perf_counter() - started:.0f} s ({detection.choice})", flush=True)
        sets.append((f"AITEX detector ({len(manifest.unlabeled)}), image", manifest, detection.maps, k, "image",
                     list(detection.normal_peaks)))
    return sets


def _cell(runs: list[dict] | str | None) -> str:
    if runs is None:
        return "not run"
    if isinstance(runs, str):
        return runs
    cell = " / ".join(f"{np.mean([r[m] for r in runs]):.3f}" for m in ("nmi", "ari", "f1"))
    shares = [r["normal_share"] for r in runs if r.get("normal_share") is not None]
    return cell + (f", normal {np.mean(shares):.0%}" if shares else "")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="demo,template,annotated,aitex",
                        help="comma list of demo,template,annotated,aitex,aitex-detector [demo,template,annotated,aitex]")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of rows [{','.join(ROWS)}]")
    parser.add_argument("--baselines", default="", help=f"demo only, comma list of {','.join(BASELINES)} [none]")
    parser.add_argument("--dataset", type=Path, help="MVTec-layout folder for the demo column (default: generated)")
    parser.add_argument("--detector", default="auto", choices=METHODS,
                        help="built-in detector of the demo column [auto: offline, the learned detector or the filter bank, whichever separates better]")
    parser.add_argument("--per-class", type=int, default=14, help="generated demo: defective images per type [14]")
    parser.add_argument("--aitex", type=Path, default=_shared("aitex"), help="AITEX folder (MVTec layout) "
                        "[shared/datasets/aitex in a folder above the repository]")
    parser.add_argument("--deeppcb", type=Path, default=_shared("deeppcb"),
                        help="DeepPCB folder (images/, normal/, annotations.json) [shared/datasets/deeppcb in a "
                             "folder above the repository]")
    parser.add_argument("--pcb-images", type=int, default=0, help="DeepPCB images drawn (0 = all 500) [0]")
    parser.add_argument("--epochs", type=int, help="training epochs [the backbone's recommended]")
    parser.add_argument("--backbone", help="MGViT backbone [vit_tiny_scratch]")
    parser.add_argument("--weights", type=Path, help="local backbone weights (e.g. DINO)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def _sets(args: argparse.Namespace, device) -> list[tuple]:
    """(column name, manifest, maps, k, metrics level, held-out normal peaks) of every set asked for."""
    wanted = {s for s in args.sets.split(",") if s}
    sets = []
    if "demo" in wanted:
        started = time.perf_counter()
        manifest, maps, choice, peaks = demo_set(args.dataset, args.per_class, 0, device, args.detector)
        classes = sorted({r.gt_class for r in manifest.unlabeled if r.gt_class not in (None, GOOD)})
        print(f"demo: {len(manifest.unlabeled)} images, {len(classes)} defect types, built-in detector maps in "
              f"{time.perf_counter() - started:.0f} s ({choice})", flush=True)
        sets.append((f"demo ({len(manifest.unlabeled)}), image", manifest, maps, len(classes), "image", peaks))
    if {"template", "annotated"} & wanted:
        if not args.deeppcb.is_dir():
            print(f"{args.deeppcb}: not there, DeepPCB columns left out")
        else:
            started = time.perf_counter()
            manifest, n_defects, maps = deeppcb_set(args.deeppcb, args.pcb_images, 0)
            print(f"DeepPCB: {len(manifest.unlabeled)} images, {n_defects} annotated defects, maps in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
            sets += [(f"DeepPCB {kind} ({len(manifest.unlabeled)}), region", manifest, maps[kind], 6, "region", [])
                     for kind in ("template", "annotated") if kind in wanted]
    if {"aitex", "aitex-detector"} & wanted:
        if not args.aitex.is_dir():
            print(f"{args.aitex}: not there, AITEX columns left out")
        else:
            sets += aitex_sets(args.aitex, wanted, device)
    return sets


def _score(sets: list[tuple], rows: list[str], base, seeds: int, device) -> tuple[dict, list[str]]:
    """Every row on every set: the table's cells and, per set, the class-count estimate and coverage line."""
    from core.pipeline import PipelineError, run_discovery

    table: dict[tuple[str, str], list[dict] | str] = {}
    notes = []
    for column, manifest, maps, k, level, peaks in sets:
        for row in rows:
            for seed in range(seeds):
                started = time.perf_counter()
                config = replace(row_config(base, row), classes=k, seed=seed)
                try:
                    result = run_discovery(manifest, config, maps=maps, normal_peaks=peaks)
                except PipelineError as error:
                    table[(row, column)] = "refused"
                    print(f"  {column} | {ROWS[row][0]}: refused ({error})", flush=True)
                    break
                metrics = dict(result.metrics[level])
                metrics["normal_share"] = (result.metrics.get("normal_images") or {}).get("share_predicted_normal")
                runs = table.setdefault((row, column), [])
                assert isinstance(runs, list)
                runs.append(metrics)
                print(f"  {column} | {ROWS[row][0]} seed {seed}: {len(result.regions)} regions, {_cell([metrics])} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
        estimates, coverage = estimates_and_coverage(manifest, maps, base, device, peaks)
        line = f"{column} (truth K = {k}): --classes auto " + ", ".join(
            f"{name} {estimate.k} ({estimate.sureness}, {estimate.confidence:.2f})" for name, estimate in estimates.items())
        for extraction, found in coverage.items():
            line += (f"; {extraction} extraction: {found['regions']} regions, recall {found['recall']:.1%}, "
                     f"precision {found['precision']:.1%}")
        notes.append(line)
        print(line, flush=True)
    return table, notes


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    from core.config import DiscoveryConfig, MGViTConfig, TrainConfig, recommended_epochs
    from core.device import resolve_device

    device = resolve_device(args.device)
    model = MGViTConfig()
    if args.backbone:
        model = replace(model, backbone=args.backbone)
    if args.weights:
        model = replace(model, weights=args.weights)
    base = DiscoveryConfig(model=model, train=replace(TrainConfig(), epochs=args.epochs or recommended_epochs(model)),
                           device=str(device))
    rows = [r for r in args.rows.split(",") if r]
    sets = _sets(args, device)
    table, notes = _score(sets, rows, base, args.seeds, device)
    columns = [s[0] for s in sets]
    width = max([32] + [len(c) + 2 for c in columns] + [len(_cell(v)) + 2 for v in table.values()])
    print()
    print(f"{'NMI / ARI / F1':<32}" + "".join(f"{c:>{width}}" for c in columns))
    for row in rows:
        print(f"{ROWS[row][0]:<32}" + "".join(f"{_cell(table.get((row, c))):>{width}}" for c in columns))
    print()
    for line in notes:
        print(line)
    chosen = [b for b in args.baselines.split(",") if b]
    demo = next((s for s in sets if s[0].startswith("demo")), None)
    if chosen and demo is not None:
        _, manifest, maps, k, _, peaks = demo
        config = replace(base, classes=k)
        print()
        print(f"{'method (image level, demo)':<32}{'NMI / ARI / F1':>{width}}")
        for name in chosen:
            runs = [baseline(name, manifest, maps, config, device, k, seed, peaks) for seed in range(args.seeds)]
            label = {"whole": "k-means, whole images", "crops": "k-means, crops",
                     "supervised": "supervised 2-fold (reference)"}[name]
            print(f"{label:<32}{_cell(runs):>{width}}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
