"""Discovery quality against k-means baselines and ablations, one table, image level.

    python benchmarks/quality.py [--dataset DIR] [--per-class 60] [--epochs N] [--seeds 1] [--device auto]

On the demo set (generated on the fly by core.demo) or any MVTec-layout folder. The generated
demo has --per-class defective images per type (default 60: 300 defective images). The app's
one-click demo keeps 14 per type to stay quick, but 70 images are too few to tell methods apart:
the NMI of a random 5-way labeling of 70 images is 0.08 +- 0.03 (0.02 +- 0.006 for 300), and
seed-to-seed spread is of the same size as the differences being measured. Rows:
  k-means on untrained backbone features of whole images
  k-means on untrained backbone features of the crops (same maps, MEBin and regions as discovery)
  full discovery (built-in detector maps, MEBin, mask-guided MGViT)
  discovery without mask guidance
  discovery with Otsu instead of MEBin
  discovery with the ground-truth masks as maps
  supervised reference: the same MGViT trained with the true classes of half the images, scored on
  the other half (not a discovery method; how far the backbone gets on this data when told)
NMI / ARI / F1 over the defective test images (ground truth not "good"), as metrics.json's
"image" block. The baselines get K and are run on the defective images only (an advantage the
discovery does not have: it sees every test image, normal ones included, and K + 1 slots).
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

import numpy as np  # noqa: E402

from core.dataset import load_dataset  # noqa: E402
from core.device import resolve_device  # noqa: E402
from core.imageio import read_gray, read_image  # noqa: E402
from core.metrics import cluster_metrics  # noqa: E402
from core.records import GOOD  # noqa: E402


def kmeans_labels(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)


def baseline_whole_images(manifest, model_config, device, k: int, seed: int) -> dict:
    """k-means on the CLS features of whole defective images (all-ones mask: nothing hidden)."""
    from core.inference import backbone_features

    records = [r for r in manifest.unlabeled if r.gt_class != GOOD]
    images = [read_image(r.path) for r in records]
    masks = [np.full(i.shape[:2], 255, np.uint8) for i in images]
    features = backbone_features(images, masks, model_config, device, seed=seed, guided=False)
    return cluster_metrics([r.gt_class for r in records], kmeans_labels(features, k, seed))


def defect_regions(manifest, maps: dict, config) -> tuple[list, list]:
    """Defective test records and their regions: discovery's own maps, binarization and crop stages."""
    from core.pipeline import binarize_maps, cut_regions, prepare_maps

    prepared = prepare_maps(manifest.unlabeled, maps)
    binarization = binarize_maps(prepared, config.mebin, config.binarizer)
    defective = [r for r in manifest.unlabeled if r.gt_class != GOOD]
    keys = {r.relpath for r in defective}
    return defective, [r for r in cut_regions(prepared, binarization, config.regions) if r.image in keys]


def image_votes(records, regions, region_probabilities: np.ndarray, tau: float) -> tuple[list, list]:
    """Ground truth and area-weighted fused class of each record (METHOD.md stage 6)."""
    from core.fusion import fuse_image

    truth, predicted = [], []
    for record in records:
        rows = [i for i, r in enumerate(regions) if r.image == record.relpath]
        fused = fuse_image(region_probabilities[rows], [regions[i].area for i in rows], tau)
        truth.append(record.gt_class)
        predicted.append(int(fused.argmax()))
    return truth, predicted


def baseline_crops(records, regions, config, device, k: int, seed: int) -> dict:
    """k-means on CLS features of the crops of defective images; image = area-weighted vote."""
    from core.inference import backbone_features

    features = backbone_features([r.image_crop for r in regions], [r.mask_crop for r in regions], config.model,
                                 device, seed=seed, guided=True)
    labels = kmeans_labels(features, k, seed)
    truth, predicted = image_votes(records, regions, np.eye(k)[labels], config.tau)
    return cluster_metrics(truth, predicted)


def two_folds(records, seed: int) -> dict[str, int]:
    """Image key -> fold 0 or 1: each class's images shuffled (seeded) and dealt alternately."""
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for name in sorted({r.gt_class for r in records}):
        members = [r.relpath for r in records if r.gt_class == name]
        for position, key in enumerate(rng.permutation(members)):
            fold_of[str(key)] = position % 2
    return fold_of


def supervised_reference(records, regions, config, device, seed: int) -> dict:
    """The same MGViT and training with the true classes of half the defective images, scored on the other half.

    Two folds (images split per class, seeded); training is the product's labeled regime (every crop
    labeled, the classes as base classes) with the run's backbone, epochs and augmentations; held-out
    images are classified by the area-weighted vote of their crops' class probabilities. Not a
    discovery method: it shows how far this backbone gets on this data even when told the answers.
    Not a strict bound either: discovery trains on all images (transductively), this on half.
    """
    from core.predict import region_probabilities
    from core.inference import infer
    from core.train import TrainingData, train

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
            labels=np.array([class_of[regions[i].image] for i in train_rows], np.int64), base_classes=names,
        )
        trained = train(data, 1, config.model, config.train, device, seed=seed)
        inference = infer(trained.model, [regions[i].image_crop for i in test_rows],
                          [regions[i].mask_crop for i in test_rows], device, guided=config.train.guided)
        probabilities = region_probabilities(inference.logits[:, :len(names)], 0, config.predict.temperature)
        held_out = [r for r in records if fold_of[r.relpath] == fold]
        fold_truth, fold_predicted = image_votes(held_out, [regions[i] for i in test_rows], probabilities,
                                                 config.tau)
        truth += fold_truth
        predicted += [names[p] for p in fold_predicted]
    return cluster_metrics(truth, predicted)


def gt_maps(manifest) -> dict:
    maps = {}
    for record in manifest.unlabeled:
        if record.gt_mask_path is not None:
            maps[record.relpath] = read_gray(record.gt_mask_path).astype(np.float32)
        else:
            maps[record.relpath] = np.zeros(record.size, np.float32)
    return maps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="MVTec-layout folder (default: the demo set, generated)")
    parser.add_argument("--per-class", type=int, default=60,
                        help="generated demo only: defective images per defect type [60; the app's demo has 14]")
    parser.add_argument("--demo-seed", type=int, default=0, help="generated demo only: its seed [0]")
    parser.add_argument("--epochs", type=int, help="training epochs [SCRATCH_EPOCHS for scratch backbones]")
    parser.add_argument("--backbone", default=None, help="MGViT backbone [vit_tiny_scratch]")
    parser.add_argument("--weights", type=Path, help="local backbone weights")
    parser.add_argument("--classes", type=int, help="K [number of ground-truth defect classes]")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per row (mean and spread shown) [1]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", default="all", help="comma list of: whole,crops,full,unguided,otsu,gt,supervised [all]")
    args = parser.parse_args(argv)

    from core.detection import DetectorConfig, detect
    from core.config import DiscoveryConfig, MGViTConfig, TrainConfig, recommended_epochs
    from core.pipeline import run_discovery

    device = resolve_device(args.device)
    temp = None
    if args.dataset is None:
        from core.demo import DemoConfig, generate_demo

        temp = tempfile.TemporaryDirectory()
        started = time.perf_counter()
        root = generate_demo(Path(temp.name) / "demo", DemoConfig(seed=args.demo_seed, n_per_class=args.per_class))
        print(f"demo set generated in {time.perf_counter() - started:.1f} s: {root}")
    else:
        root = args.dataset
    manifest = load_dataset(root)
    classes = sorted({r.gt_class for r in manifest.unlabeled if r.gt_class not in (None, GOOD)})
    k = args.classes or len(classes)
    model = MGViTConfig()
    if args.backbone:
        model = replace(model, backbone=args.backbone)
    if args.weights:
        model = replace(model, weights=args.weights)
    epochs = args.epochs or recommended_epochs(model)
    config = DiscoveryConfig(model=model, train=replace(TrainConfig(), epochs=epochs), classes=k,
                             device=str(device))
    n_defective = sum(r.gt_class not in (None, GOOD) for r in manifest.unlabeled)
    print(f"data set: {len(manifest.unlabeled)} test images ({n_defective} defective, {len(classes)} classes: "
          f"{', '.join(classes)}), {len(manifest.normal)} normal references; K = {k}; backbone {model.backbone}, "
          f"{epochs} epochs, device {device}, {args.seeds} seed(s)")

    rows = {"whole", "crops", "full", "unguided", "otsu", "gt", "supervised"} if args.rows == "all" else set(args.rows.split(","))
    started = time.perf_counter()
    detection = detect(manifest, DetectorConfig(method="patchcore" if manifest.normal else "zero-shot"), device)
    maps = detection.maps
    print(f"built-in detector maps in {time.perf_counter() - started:.1f} s")

    table: list[tuple[str, list[dict], float]] = []

    def record(name: str, runs: list[dict], seconds: float) -> None:
        table.append((name, runs, seconds))
        mean = {m: np.mean([r[m] for r in runs]) for m in ("nmi", "ari", "f1")}
        print(f"  {name}: NMI {mean['nmi']:.3f} ARI {mean['ari']:.3f} F1 {mean['f1']:.3f} ({seconds:.0f} s)",
              flush=True)

    seeds = list(range(args.seeds))
    cut: list[tuple[list, list]] = []

    def defects() -> tuple[list, list]:
        """Defective records and their regions, cut once for every row and seed that needs them."""
        if not cut:
            cut.append(defect_regions(manifest, maps, config))
        return cut[0]

    if "whole" in rows:
        t = time.perf_counter()
        record("k-means, whole images", [baseline_whole_images(manifest, model, device, k, s) for s in seeds],
               time.perf_counter() - t)
    if "crops" in rows:
        t = time.perf_counter()
        record("k-means, crops", [baseline_crops(*defects(), config, device, k, s) for s in seeds],
               time.perf_counter() - t)

    variants = {
        "full": ("discovery (MEBin, guided)", config, maps),
        "unguided": ("discovery, unguided", replace(config, train=replace(config.train, guided=False)), maps),
        "otsu": ("discovery, Otsu", replace(config, binarizer="otsu"), maps),
        "gt": ("discovery, gt masks as maps", config, gt_maps(manifest)),
    }
    extra: dict[str, list[dict]] = {}
    for key, (name, variant, variant_maps) in variants.items():
        if key not in rows:
            continue
        t = time.perf_counter()
        runs = []
        for seed in seeds:
            seeded = replace(variant, seed=seed)
            result = run_discovery(manifest, seeded, maps=variant_maps)
            runs.append(result.metrics["image"])
            extra.setdefault(name, []).append(result.metrics)
        record(name, runs, time.perf_counter() - t)

    if "supervised" in rows:
        t = time.perf_counter()
        record("supervised 2-fold (reference)",
               [supervised_reference(*defects(), config, device, s) for s in seeds], time.perf_counter() - t)

    print()
    print(f"{'method (image level, defective images)':<40} {'NMI':>13} {'ARI':>13} {'F1':>13} {'time s':>7}")
    for name, runs, seconds in table:
        cells = []
        for metric in ("nmi", "ari", "f1"):
            values = np.array([r[metric] for r in runs], dtype=float)
            cells.append(f"{values.mean():.3f}" + (f" ±{values.std():.3f}" if len(values) > 1 else "       "))
        print(f"{name:<40} {cells[0]:>13} {cells[1]:>13} {cells[2]:>13} {seconds:>7.0f}")
    for name, metrics in extra.items():
        normal = np.mean([m["normal_images"]["share_predicted_normal"] or 0 for m in metrics])
        with_good = np.mean([m["image_with_good"]["nmi"] for m in metrics])
        print(f"  {name}: normal test images predicted normal {normal:.0%}; NMI with good as a class {with_good:.3f}")
    if temp is not None:
        temp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
