"""`python -m core detect`: anomaly maps with the built-in detector, written as docs/architecture.md's output files say."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from core.cli import UserError

HELP = "write anomaly maps with the built-in detector (learned, PatchCore, template or zero-shot)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from core.detection.config import METHODS, OFFLINE_BACKBONE, PAPER_BACKBONE, DetectorConfig

    defaults = DetectorConfig()
    parser.add_argument("--dataset", type=Path, required=True, help="data set folder (MVTec layout or plain folder)")
    parser.add_argument("--out", type=Path, required=True, help="output folder: maps/ and scores.csv")
    parser.add_argument("--method", choices=METHODS, default=defaults.method,
                        help="auto: template comparison when every image has its own reference "
                             "(<id>_test.<ext> with normal/<id>_temp.<ext>, or --pairing); else, with normal images, "
                             "patchcore when a pretrained backbone is cached, else learned (fitted to the normal "
                             "images; patchcore on the filter bank below 20 of them); else zero-shot [auto]")
    parser.add_argument("--pairing", type=Path, help="CSV with columns image,reference: each image's own reference")
    parser.add_argument("--backbone", default=defaults.backbone,
                        help=f"auto: '{PAPER_BACKBONE}' when its pretrained weights are in the timm/Hugging Face "
                             f"cache (or --weights is given), else '{OFFLINE_BACKBONE}' (offline, no download); or "
                             f"name a timm CNN (downloaded once when not cached) [{defaults.backbone}]")
    parser.add_argument("--weights", type=Path, help="local .pth or .safetensors weights for a timm backbone")
    parser.add_argument("--random-init", action="store_true", help="timm backbone without pretrained weights")
    parser.add_argument("--image-size", type=int, default=defaults.image_size,
                        help=f"shorter side of the feature input, pixels [{defaults.image_size}]")
    parser.add_argument("--coreset-ratio", type=float, default=defaults.coreset_ratio,
                        help=f"share of normal patches kept in the memory bank [{defaults.coreset_ratio}]")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps [auto]")
    parser.add_argument("--cache", type=Path, help="map cache folder [<out>/cache]")
    parser.add_argument("--no-cache", action="store_true", help="always recompute the maps")


class _Bar:
    """One tqdm bar per stage, on stderr (a terminal; logs and pipes get LineProgress instead)."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, file=sys.stderr, leave=True, dynamic_ncols=True)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def detection_aurocs(manifest, maps: dict[str, np.ndarray]) -> dict[str, float]:
    """Image and pixel AUROC over the unlabeled images with a ground-truth class (masks where known), and
    the share of mask components found at 1% pixel false positives (recall)."""
    from core.imageio import read_gray
    from core.detection.maps import resize_to
    from core.evaluation.metrics import component_recall, image_auroc, pixel_auroc
    from core.records import GOOD

    records = [r for r in manifest.unlabeled if r.gt_class is not None and r.relpath in maps]
    labels = [r.gt_class != GOOD for r in records]
    result = {"image_auroc": image_auroc(labels, [float(maps[r.relpath].max()) for r in records])}
    with_masks = [r for r in records if r.gt_class == GOOD or r.gt_mask_path is not None]
    masks, pixel_maps = [], []
    for record in with_masks:
        score_map = maps[record.relpath]
        if record.gt_mask_path is None:
            masks.append(np.zeros(score_map.shape, np.uint8))
        else:
            mask = read_gray(record.gt_mask_path)
            if mask.shape != score_map.shape:
                mask = (resize_to(mask.astype(np.float32), score_map.shape) > 127).astype(np.uint8)
            masks.append(mask)
        pixel_maps.append(score_map)
    result["pixel_auroc"] = pixel_auroc(masks, pixel_maps) if masks else float("nan")
    result["recall"] = component_recall(masks, pixel_maps)["recall"] if masks else float("nan")
    return result


def run(args: argparse.Namespace) -> int:
    from core.dataset import DatasetError, load_dataset
    from core.detection import DetectionError, DetectorConfig, detect, write_detection
    from core.detection.backbones import resolve_backbone
    from core.detection.detector import resolve_method
    from core.detection.progress import LineProgress
    from core.detection.separation import MIN_NORMAL_FOR_HOLDOUT
    from core.device import resolve_device

    try:
        manifest = load_dataset(args.dataset)
    except DatasetError as error:
        raise UserError(str(error)) from error
    for problem in manifest.problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    if not manifest.unlabeled:
        raise UserError(f"{args.dataset}: no images to inspect (only normal references were found)")
    try:
        config = DetectorConfig(method=args.method, backbone=args.backbone, weights=args.weights, pairing=args.pairing,
                                pretrained=not args.random_init, image_size=args.image_size,
                                coreset_ratio=args.coreset_ratio, batch_size=args.batch_size)
        device = resolve_device(args.device)
    except ValueError as error:
        raise UserError(str(error)) from error
    cache_dir = None if args.no_cache else (args.cache or args.out / "cache")
    try:
        method, _, choice = resolve_method(manifest, config)
    except DetectionError as error:
        raise UserError(str(error)) from error
    backbone, why = resolve_backbone(config)
    no_backbone = method in ("template", "learned")
    print(f"detect: {choice}" + ("" if no_backbone else f"; {why}"))
    print(f"detect: {method}{'' if no_backbone else f' with backbone {backbone}'} on {device}; "
          f"{len(manifest.normal)} normal, {len(manifest.unlabeled)} images to inspect")
    started = time.perf_counter()
    bar = _Bar() if sys.stderr.isatty() else LineProgress(sys.stderr)
    try:
        detection = detect(manifest, config, device, progress=bar, cache_dir=cache_dir)
    except DetectionError as error:
        raise UserError(str(error)) from error
    finally:
        bar.close()
    try:
        write_detection(detection, manifest, args.out)
    except DetectionError as error:
        raise UserError(str(error)) from error
    print(f"maps: {len(detection.maps)} written to {args.out / 'maps'} ({len(detection.computed)} computed, "
          f"{len(detection.cached)} from the cache) in {time.perf_counter() - started:.1f} s; scores in "
          f"{args.out / 'scores.csv'}")
    if detection.separation is not None:
        print(detection.separation["summary"])
        if detection.separation["warning"]:
            print(f"warning: {detection.separation['warning']}")
    elif method in ("patchcore", "learned"):
        print(f"separation: not measured (fewer than {MIN_NORMAL_FOR_HOLDOUT} normal images to hold some out)")
    if manifest.has_ground_truth():
        aurocs = detection_aurocs(manifest, detection.maps)
        print(f"image AUROC {aurocs['image_auroc']:.3f}  pixel AUROC {aurocs['pixel_auroc']:.3f}")
    return 0
