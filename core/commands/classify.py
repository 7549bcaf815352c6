"""`python -m core classify`: new images placed in a finished run's named classes, or flagged unknown.

Writes into --out: images.csv (image, class, confidence, unknown), regions.csv (image, region, box, class,
confidence, unknown, novelty), classification.json (the open-set threshold in words, counts, timings),
crops/<class>/ and unknown/ (the images with unknown regions: the next discovery round's data set).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import UserError

HELP = "classify new images with a run's named classes (its model bundle); flag the unknown"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True,
                        help="a run folder (its bundle/) or a model bundle folder")
    parser.add_argument("--images", type=Path, required=True,
                        help="folder of images to classify (a normal/ subfolder: their references)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must be new or empty)")
    parser.add_argument("--maps", type=Path, help="the images' anomaly maps, when the run's maps were imported")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N | mps [cpu]")
    parser.add_argument("--workdir", type=Path, help="keep the detector's map cache here (a rerun reuses it)")


def run(args: argparse.Namespace) -> int:
    from core.classify import classify_images, load_bundle, load_images
    from core.classify.outputs import write_classification
    from core.device import resolve_device

    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserError(f"{args.out}: exists and is not an empty folder; give a new output folder")
    bundle = load_bundle(args.model)
    manifest = load_images(args.images, bundle)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise UserError(str(error)) from error
    result = classify_images(bundle, manifest, device=device, maps_folder=args.maps, cache_dir=args.workdir)
    summary = write_classification(result, bundle, args.images, args.out)
    print(f"classify: {result.detector}")
    print(f"classify: {result.threshold}")
    print(f"{summary['images']} images, {summary['regions']} regions ({summary['unknown_regions']} unknown); "
          "images per class: " + ", ".join(f"{k}: {v}" for k, v in sorted(summary["images_per_class"].items())))
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
    if summary["unknown_images_folder"]:
        labeled = f" --labels {summary['labeled_set']}" if summary["labeled_set"] else ""
        print(f"next round: python -m core discover --dataset {args.out / 'unknown'}{labeled} --out ...",
              file=sys.stderr)
    return 0
