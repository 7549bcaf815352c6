"""`python -m core discover`: the whole pipeline on a data set, results written as CSV/JSON files.

Writes into --out: regions.csv (one row per region), images.csv (one row per image),
metrics.json (when the data set has ground truth), run.json (settings, timings, class-count
evidence, the representation asked and used), embeddings.npy (rows of regions.csv) and model.pt
(the trained model, when the representation trains one).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.decisions import Decided, decide
from core.errors import UserError
from core.settings import SETTING, Setting, to_settings

HELP = "run the whole pipeline: maps -> MEBin -> regions -> MGViT -> classes"

#: The settings (core.settings) `python -m core discover` takes as options, in the order --help shows them.
CLI_SETTINGS = ("classes", "device", "backbone", "weights", "pretrained", "epochs", "batch_size", "seed",
                "detector_method", "binarizer", "tau", "representation", "prior", "extraction", "refine", "fallback",
                "ground_truth", "guided")


def _typed(setting: Setting) -> Any:
    def parse(text: str) -> Any:
        from core.config import SettingsError

        try:
            return setting.parse(text)
        except SettingsError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    parse.__name__ = setting.key  # argparse names it in "invalid ... value"
    return parse


def add_setting(parser: argparse.ArgumentParser, setting: Setting) -> None:
    """One option from the settings table: its help and default come from there; None = not given."""
    default = setting.default
    shown = f"{default:g}" if isinstance(default, float) else default
    options: dict[str, Any] = {"dest": setting.key, "default": None}
    if setting.kind is bool:  # a switch to the other value than the default
        options.update(action="store_const", const=not default)
    else:
        options.update(type=_typed(setting), metavar="K|auto" if setting.key == "classes" else None)
        if setting.choices:
            options["metavar"] = "{" + ",".join(setting.choices) + "}"
    help_text = setting.help if default is None or setting.kind is bool else f"{setting.help} [{shown}]"
    parser.add_argument(setting.option, help=help_text, **options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="data set folder (MVTec layout or plain folder)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--maps", type=Path, help="folder of anomaly maps from any detector (default: built-in detector)")
    for key in CLI_SETTINGS:
        add_setting(parser, SETTING[key])
    parser.add_argument("--labels", type=Path,
                        help="imported labeled set: a folder per class of crops (optional <crop>_mask.png), or a "
                             "COCO annotations .json (its images relative to the file) whose categories become classes")
    parser.add_argument("--region-labels", type=Path,
                        help="CSV with columns region,class naming regions of this data set (become base classes)")
    parser.add_argument("--save-crops", action="store_true", help="also write every crop under out/crops/<cluster>/")
    parser.add_argument("--workdir", type=Path, help="keep a resumable training checkpoint and the map cache here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


# ------------------------------------------------------------------------------ inputs


def _load_manifest(path: Path) -> Any:
    from core.dataset import DatasetError, load_dataset

    try:
        manifest = load_dataset(path)
    except DatasetError as error:
        raise UserError(str(error)) from error
    for problem in manifest.problems:
        print(f"warning: left out {problem}", file=sys.stderr)
    return manifest


def _load_maps(manifest: Any, folder: Path) -> dict[str, np.ndarray]:
    from core.detection import import_maps

    imported = import_maps(manifest.unlabeled, folder, strict=False)
    if len(imported.maps) < len(manifest.unlabeled):
        lines = "\n  ".join(str(p) for p in imported.problems)
        raise UserError(f"{len(imported.problems)} problem(s) with the anomaly maps in {folder}:\n  {lines}")
    for problem in imported.problems:  # usable but worth knowing: extra files, constant maps
        print(f"warning: {problem}", file=sys.stderr)
    return imported.maps


def _region_labels(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise UserError(f"{path}: region labels file does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"region", "class"} <= set(reader.fieldnames):
            raise UserError(f"{path}: needs a header with columns 'region' and 'class'")
        return {row["region"]: row["class"] for row in reader if row["region"] and row["class"]}


def _decided(args: argparse.Namespace) -> Decided:
    """The run's config and auto decisions from the command line, through the settings table the app uses too."""
    return decide({key: getattr(args, key) for key in CLI_SETTINGS if getattr(args, key) is not None})


# ------------------------------------------------------------------------------ progress


class _Progress:
    """tqdm bar on stderr for the whole run; a line with the time of every finished stage."""

    def __init__(self, quiet: bool) -> None:
        from tqdm import tqdm

        self.bar = None if quiet else tqdm(total=1000, file=sys.stderr, unit="‰", dynamic_ncols=True,
                                           bar_format="{desc:<12} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")
        self.started = time.perf_counter()  # end of the previous stage

    def __call__(self, progress: Any) -> None:
        if self.bar is not None:
            self.bar.set_description_str(progress.stage)
            self.bar.set_postfix_str(progress.message[:60], refresh=False)
            self.bar.n = int(progress.overall * 1000)
            self.bar.refresh()
        if progress.fraction >= 1.0 and progress.train is None and progress.message:
            line = f"{progress.stage}: {progress.message} ({time.perf_counter() - self.started:.1f} s)"
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr)
            self.started = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------ outputs


def _number(value: Any) -> Any:
    return f"{value:.6f}" if isinstance(value, (float, np.floating)) else value


def write_results(result: Any, out: Path, *, save_crops: bool = False) -> None:
    """Write regions.csv, images.csv, embeddings.npy, metrics.json (with ground truth) and run.json."""
    from core.imageio import write_image

    out.mkdir(parents=True, exist_ok=True)
    names = result.cluster_names
    prob_columns = [f"p_{i}" for i in range(len(names))]
    with open(out / "regions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["region", "image", "index", "x0", "y0", "x1", "y1", "area", "score", "cluster",
                         "cluster_name", "confidence", "umap_x", "umap_y", "gt", "label", *prob_columns])
        for r in result.regions:
            writer.writerow([r.key, r.image, r.region.index, *r.region.box, r.region.area, _number(r.region.score),
                             r.cluster, names[r.cluster], _number(r.confidence), _number(r.umap_x),
                             _number(r.umap_y), r.gt or "", r.label or "", *map(_number, r.probabilities)])
    with open(out / "images.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "cluster", "cluster_name", "confidence", "n_regions", "score", "threshold",
                         "num_anomalies", "gt", *prob_columns])
        for i in result.images:
            writer.writerow([i.image, i.cluster, names[i.cluster], _number(i.confidence), i.n_regions,
                             _number(i.score), i.threshold, i.num_anomalies, i.gt or "",
                             *map(_number, i.probabilities)])
    if result.regions:
        np.save(out / "embeddings.npy", np.stack([r.embedding for r in result.regions]).astype(np.float32))
    if result.metrics is not None:
        (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n", encoding="utf-8")
    if save_crops:
        for r in result.regions:
            folder = out / "crops" / names[r.cluster].replace("/", "-").replace(" ", "_")
            stem = r.key.replace("/", "__").replace("#", "_")
            write_image(folder / f"{stem}.png", r.region.image_crop)
            write_image(folder / f"{stem}_mask.png", r.region.mask_crop)


def _run_json(result: Any, decided: Decided, args: argparse.Namespace) -> dict[str, Any]:
    """run.json: the full config, the flat settings that rebuild it (core.settings.record_settings reads
    both this and older files) and every decision with its reason."""
    config = decided.config
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {
        "dataset": str(args.dataset),
        "maps": str(args.maps) if args.maps else None,
        "config": plain(asdict(config)),
        "settings": to_settings(config),
        **{key: decision.record() for key, decision in decided.decisions.items()},
        "cluster_names": result.cluster_names,
        "normal_cluster": result.normal_cluster,
        "n_novel": result.n_novel,
        "base_classes": result.base_classes,
        "estimate": None if result.estimate is None else {
            "k": result.estimate.k, "method": result.estimate.method, "n_samples": result.estimate.n_samples,
            "table": result.estimate.table, "note": result.estimate.note},
        "timings_s": result.timings,
        "epochs_done": result.train_result.epochs_done,
        "cancelled": result.cancelled,
        "train_history": result.train_result.history,
        "problems": result.problems,
    }


def _print_summary(result: Any) -> None:
    print("time per stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
          + f"; total {sum(result.timings.values()):.1f} s")
    if result.estimate is not None:
        print(result.estimate.describe())
    counts: dict[str, int] = {}
    for image in result.images:
        counts[result.cluster_names[image.cluster]] = counts.get(result.cluster_names[image.cluster], 0) + 1
    print("images per class: " + ", ".join(f"{name}: {counts.get(name, 0)}" for name in result.cluster_names))
    metrics = result.metrics
    if metrics is None:
        print("no ground truth in the data set: no metrics")
        return

    def row(label: str, block: dict) -> str:
        cells = [("-" if block.get(k) is None else f"{block[k]:.3f}") for k in ("nmi", "ari", "f1")]
        return f"  {label:<16} {cells[0]:>6} {cells[1]:>6} {cells[2]:>6} {block['n']:>6}"

    print(f"  {'metrics':<16} {'NMI':>6} {'ARI':>6} {'F1':>6} {'n':>6}")
    for label, key in (("image", "image"), ("region", "region"), ("image with good", "image_with_good")):
        if key in metrics:  # region-level truth (COCO) alone gives the region block only
            print(row(label, metrics[key]))
    coverage = metrics.get("region_coverage")
    if coverage and coverage.get("recall") is not None:
        print(f"  annotated defects covered by a region: {coverage['recall']:.1%} of {coverage['annotations']} "
              f"({metrics.get('region_truth')})")
    normal = metrics.get("normal_images") or {"n": 0}
    if normal["n"]:
        print(f"  normal test images predicted normal: {normal['share_predicted_normal']:.1%} of {normal['n']}")


def run(args: argparse.Namespace) -> int:
    from core.dataset import load_labeled_crops
    from core.mgvit.model import WeightsError
    from core.pipeline import run_discovery
    from core.mgvit.checkpoint import save_checkpoint
    from core.mgvit.distributed import init_distributed_from_env
    from core.stages import DetectionRecord, detection_record

    manifest = _load_manifest(args.dataset)
    decided = _decided(args)
    config = decided.config
    for line in decided.lines():  # what auto chose (backbone, representation, epochs), and why
        print(f"discover: {line}")
    # Under `torchrun --nproc-per-node N` every rank runs the pipeline and training shards its
    # batches with DistributedDataParallel; only rank 0 writes the outputs.
    environ = dict(os.environ)  # the command's one read of the environment (torchrun's WORLD_SIZE, RANK, ...)
    rank_device = init_distributed_from_env(environ)
    if rank_device is not None:
        config = replace(config, device=str(rank_device))
    maps = _load_maps(manifest, args.maps) if args.maps is not None else None
    record = detection_record(args.maps) if args.maps is not None else DetectionRecord()
    for problem in record.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if record.separation and record.separation.get("warning"):  # said before any time goes into clusters
        print(f"warning: {record.separation['warning']}", file=sys.stderr)
    if args.labels is not None and args.labels.suffix.lower() == ".json":
        from core.evaluation.coco import labeled_crops_from_file

        labeled, left_out = labeled_crops_from_file(args.labels)
        if left_out:
            print(f"warning: labeled set: {left_out}", file=sys.stderr)
    else:
        labeled = load_labeled_crops(args.labels) if args.labels is not None else None
    region_labels = _region_labels(args.region_labels) if args.region_labels is not None else None
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    bar = _Progress(args.quiet)
    try:
        result = run_discovery(manifest, config, maps=maps, labeled=labeled, region_labels=region_labels,
                               progress=bar, workdir=args.workdir, normal_peaks=record.normal_peaks)
    except WeightsError as error:
        raise UserError(str(error)) from error
    finally:
        bar.close()
    if int(environ.get("RANK", "0")) != 0:
        return 0

    started = time.perf_counter()
    write_results(result, out, save_crops=args.save_crops)
    if result.train_result.model is not None:  # the descriptors representation trains none
        save_checkpoint(out / "model.pt", result.train_result, extra={
            "cluster_names": result.cluster_names, "normal_cluster": result.normal_cluster,
            "n_novel": result.n_novel, "tau": config.tau, "guided": config.train.guided})
    (out / "run.json").write_text(json.dumps(_run_json(result, decided, args), indent=2, default=str) + "\n",
                                  encoding="utf-8")
    from core.classify.from_run import write_run_bundle  # the model bundle `classify --model OUT` reads

    write_run_bundle(out, result, config, manifest, maps_imported=args.maps is not None, workdir=args.workdir)
    for problem in result.problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"wrote {len(result.regions)} regions and {len(result.images)} images to {out} "
          f"({time.perf_counter() - started:.1f} s)")
    _print_summary(result)
    return 0
