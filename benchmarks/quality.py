"""Discovery quality against k-means baselines and ablations, one table, image level.

    python benchmarks/quality.py [--dataset DIR] [--epochs N] [--seeds 1] [--device auto]

On the demo set (generated on the fly by core.demo) or any MVTec-layout folder. Rows:
  k-means on untrained backbone features of whole images
  k-means on untrained backbone features of the crops (same maps, MEBin and regions as discovery)
  full discovery (built-in detector maps, MEBin, mask-guided MGViT)
  discovery without mask guidance
  discovery with Otsu instead of MEBin
  discovery with the ground-truth masks as maps
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
    from core.pipeline import backbone_features

    records = [r for r in manifest.unlabeled if r.gt_class != GOOD]
    images = [read_image(r.path) for r in records]
    masks = [np.full(i.shape[:2], 255, np.uint8) for i in images]
    features = backbone_features(images, masks, model_config, device, seed=seed, guided=False)
    return cluster_metrics([r.gt_class for r in records], kmeans_labels(features, k, seed))


def baseline_crops(manifest, maps: dict, config, device, k: int, seed: int) -> dict:
    """k-means on CLS features of the crops of defective images; image = area-weighted vote."""
    from core.fusion import fuse_image
    from core.maps import normalize_global, resize_to
    from core.mebin import binarize
    from core.pipeline import backbone_features
    from core.regions import extract_regions

    records = manifest.unlabeled
    images = {r.relpath: read_image(r.path) for r in records}
    normalized = normalize_global([resize_to(maps[r.relpath], images[r.relpath].shape[:2]) for r in records])
    results = binarize(normalized)
    regions = []
    for record, result in zip(records, results):
        if record.gt_class != GOOD:
            regions += extract_regions(record.relpath, images[record.relpath], result.normalized, result.mask,
                                       result.num_anomalies, config.regions)
    features = backbone_features([r.image_crop for r in regions], [r.mask_crop for r in regions], config.model,
                                 device, seed=seed, guided=True)
    labels = kmeans_labels(features, k, seed)
    onehot = np.eye(k)[labels]
    truth, predicted = [], []
    for record in records:
        if record.gt_class == GOOD:
            continue
        rows = [i for i, r in enumerate(regions) if r.image == record.relpath]
        fused = fuse_image(onehot[rows], [regions[i].area for i in rows], config.tau)
        truth.append(record.gt_class)
        predicted.append(int(fused.argmax()))
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
    parser.add_argument("--epochs", type=int, help="training epochs [SCRATCH_EPOCHS for scratch backbones]")
    parser.add_argument("--backbone", default=None, help="MGViT backbone [vit_tiny_scratch]")
    parser.add_argument("--weights", type=Path, help="local backbone weights")
    parser.add_argument("--classes", type=int, help="K [number of ground-truth defect classes]")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per row (mean and spread shown) [1]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", default="all", help="comma list of: whole,crops,full,unguided,otsu,gt [all]")
    args = parser.parse_args(argv)

    from core.detection import DetectorConfig, detect
    from core.mgvit import MGViTConfig, is_scratch
    from core.pipeline import DiscoveryConfig, run_discovery
    from core.train import SCRATCH_EPOCHS, TrainConfig

    device = resolve_device(args.device)
    temp = None
    if args.dataset is None:
        from core.demo import generate_demo

        temp = tempfile.TemporaryDirectory()
        started = time.perf_counter()
        root = generate_demo(Path(temp.name) / "demo")
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
    epochs = args.epochs or (SCRATCH_EPOCHS if is_scratch(model) else TrainConfig.epochs)
    config = DiscoveryConfig(model=model, train=replace(TrainConfig(), epochs=epochs), classes=k,
                             device=str(device))
    n_defective = sum(r.gt_class not in (None, GOOD) for r in manifest.unlabeled)
    print(f"data set: {len(manifest.unlabeled)} test images ({n_defective} defective, {len(classes)} classes: "
          f"{', '.join(classes)}), {len(manifest.normal)} normal references; K = {k}; backbone {model.backbone}, "
          f"{epochs} epochs, device {device}, {args.seeds} seed(s)")

    rows = {"whole", "crops", "full", "unguided", "otsu", "gt"} if args.rows == "all" else set(args.rows.split(","))
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
    if "whole" in rows:
        t = time.perf_counter()
        record("k-means, whole images", [baseline_whole_images(manifest, model, device, k, s) for s in seeds],
               time.perf_counter() - t)
    if "crops" in rows:
        t = time.perf_counter()
        record("k-means, crops", [baseline_crops(manifest, maps, config, device, k, s) for s in seeds],
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
            seeded = replace(variant, seed=seed, train=replace(variant.train, seed=seed))
            result = run_discovery(manifest, seeded, maps=variant_maps)
            runs.append(result.metrics["image"])
            extra.setdefault(name, []).append(result.metrics)
        record(name, runs, time.perf_counter() - t)

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
