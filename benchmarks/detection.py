"""Built-in detector per method on three sets, in one run: image and pixel AUROC, fit and predict
time, peak memory; plus the fit time of `detect` with defaults on many references of the hard set.

Sets: the demo (core/demo/build.py, easy), the hard synthetic set (core/demo/hard.py: textured tiles,
uneven light, subtle defects), DeepPCB (real boards; every image is defective, so only pixel
AUROC against the annotated boxes, box interiors counted as defect pixels, and the share of boxes
found at a 1% pixel false-positive rate) and AITEX (real woven fabric, 4096 x 256 strips, tiny
defects with pixel masks; recall = share of mask components found at 1% pixel false positives). Methods: auto (the default; offline it fits both of the
next two and keeps the one whose maps separate the held-out normals better), the learned detector
(fitted to the normal images, no weights), PatchCore on the offline filter bank (the earlier
default), golden-template comparison (sets with one reference per image) and
zero-shot (no references; `--zero-shot`: on the inspected images alone, AITEX's first defective strip of
each type; as run by default and as MuSc publishes it, every patch compared). Each row runs in its own
process so its peak memory is its own.

    python benchmarks/detection.py                      # all sets and methods
    python benchmarks/detection.py --quick              # small sets, for a first look
    python benchmarks/detection.py --scale-refs 800     # + fit time with 800 hard-set references
    python benchmarks/detection.py --sets aitex         # one set (demo, hard, deeppcb, aitex)
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.commands.detect import detection_aurocs
from core.dataset import load_dataset
from core.demo.build import generate_demo
from core.detection import DetectorConfig, detect
from core.detection.boxes import box_scores, coco_truth_for_maps
from core.demo.hard import generate_hard_demo
from core.records import GOOD, Manifest

_REPO = Path(__file__).resolve().parents[1]
#: ../shared beside the clone; a worktree one level deeper finds it two levels up.


def _shared(name: str) -> Path:
    return next((p for p in (_REPO.parent / "shared" / "datasets" / name,
                             _REPO.parent.parent / "shared" / "datasets" / name) if p.is_dir()),
                _REPO.parent / "shared" / "datasets" / name)


DEEPPCB, AITEX = _shared("deeppcb"), _shared("aitex")


def _aitex(count: int) -> Manifest:
    """AITEX as laid out (MVTec), or its first `count` references and a seeded draw of `count` test images."""
    manifest = load_dataset(AITEX)
    if not count:
        return manifest
    rng = np.random.default_rng(0)
    tests = sorted(manifest.unlabeled, key=lambda r: r.relpath)
    tests = [tests[i] for i in sorted(rng.permutation(len(tests))[:count])]
    return Manifest(manifest.root, manifest.layout, sorted(manifest.normal, key=lambda r: r.relpath)[:count] + tests)


def _aitex_defects() -> Manifest:
    """AITEX with no references at all: the first defective strip of each type (zero-shot rows)."""
    manifest = load_dataset(AITEX)
    first: dict[str, object] = {}
    for record in sorted(manifest.unlabeled, key=lambda r: r.relpath):
        if record.gt_class not in (None, GOOD):
            first.setdefault(record.gt_class, record)
    return Manifest(manifest.root, manifest.layout, list(first.values()))


def _deeppcb(count: int, method: str) -> Manifest:
    """The first `count` DeepPCB images; template: their own templates; else all 500 templates as references."""
    manifest = load_dataset(DEEPPCB)
    targets = sorted(manifest.unlabeled, key=lambda r: r.relpath)[:count]
    if method == "template":
        ids = {Path(r.relpath).stem.replace("_test", "") for r in targets}
        normal = [r for r in manifest.normal if Path(r.relpath).stem.replace("_temp", "") in ids]
    elif method == "zero-shot":
        normal = []
    else:  # the templates of other boards are normal references of the same product
        normal = [r for r in manifest.normal if r not in targets]
    return Manifest(manifest.root, manifest.layout, targets + normal)


def _manifest(set_name: str, root: str, method: str, count: int) -> Manifest:
    """What a row detects on; zero-shot rows get the inspected images alone (AITEX: one defective strip per type)."""
    if set_name == "DeepPCB":
        manifest = _deeppcb(count, method)
    elif set_name == "AITEX":
        manifest = _aitex_defects() if method == "zero-shot" else _aitex(count)
    else:
        manifest = load_dataset(root)
    return Manifest(manifest.root, manifest.layout, manifest.unlabeled) if method == "zero-shot" else manifest


def _row(job: tuple[str, str, str, dict], queue: multiprocessing.Queue) -> None:
    set_name, root, method, settings = job
    torch.set_num_threads(settings.pop("threads", 1))
    manifest = _manifest(set_name, root, method, settings.pop("count", 0))
    config = DetectorConfig(method=method, **settings)
    started = time.perf_counter()
    detection = detect(manifest, config, torch.device("cpu"))
    total = time.perf_counter() - started
    if set_name == "DeepPCB":
        scores = box_scores(detection.maps, coco_truth_for_maps(DEEPPCB / "annotations.json", detection.maps))
        quality = {"image_auroc": float("nan"), "pixel_auroc": scores["pixel_auroc"], "recall": scores["defect_recall"]}
    else:
        quality = detection_aurocs(manifest, detection.maps)
    separation = detection.separation["auroc"] if detection.separation else float("nan")
    queue.put({**quality, "fit_s": detection.timings.get("fit", 0.0), "predict_s": detection.timings.get("predict", 0.0),
               "total_s": total, "images": len(detection.maps), "tiles_200": sum(m.size for m in detection.maps.values()) / 200**2,
               "scored": len(detection.maps) + len(detection.held_out), "separation": separation,
               "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "choice": detection.choice,
               "method": detection.config.method})


def _run(job: tuple[str, str, str, dict]) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_row, args=(job, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def _jobs(args: argparse.Namespace, folder: Path) -> list[tuple[str, str, str, dict]]:
    """(set, folder, method, settings) of every row asked for."""
    sets = set(args.sets.split(","))
    demo_size = dict(image_size=160, n_train_good=20, n_test_good=8, n_per_class=4) if args.quick else {}
    hard_size = dict(n_train_good=60, n_test_good=12, n_per_class=6) if args.quick else {}
    offline, learned = dict(backbone="filterbank", threads=args.threads), dict(threads=args.threads)
    jobs: list[tuple[str, str, str, dict]] = []
    # auto (the default, offline here): the learned detector or the filter bank, by separation on a sample
    for name, make, size in (("demo", generate_demo, demo_size), ("hard", generate_hard_demo, hard_size)):
        if name in sets:
            root = str(make(Path(folder) / name, seed=0, **size))
            jobs += [(name, root, "auto", learned), (name, root, "learned", learned), (name, root, "patchcore", offline)]
            if args.zero_shot:
                jobs += _zero_shot(name, root, dict(offline))
    deeppcb = 20 if args.quick else args.deeppcb
    if "deeppcb" in sets and DEEPPCB.is_dir():
        jobs += [("DeepPCB", "", "learned", {**learned, "count": deeppcb}),
                 ("DeepPCB", "", "patchcore", {**offline, "count": deeppcb}),
                 ("DeepPCB", "", "template", {"count": deeppcb, "threads": args.threads})]
        if args.zero_shot:
            jobs += _zero_shot("DeepPCB", "", {**offline, "count": deeppcb})
    aitex = 30 if args.quick else args.aitex
    if "aitex" in sets and AITEX.is_dir():
        jobs += [("AITEX", "", "auto", {**learned, "count": aitex}), ("AITEX", "", "learned", {**learned, "count": aitex}),
                 ("AITEX", "", "patchcore", {**offline, "count": aitex})]
        if args.zero_shot:  # on its defective strips alone, one per type: no references at all
            jobs += _zero_shot("AITEX", "", dict(offline))
    return jobs


def _zero_shot(name: str, root: str, settings: dict) -> list[tuple[str, str, str, dict]]:
    """Zero-shot as the default runs it (each image offers a coreset of its patches) and as MuSc publishes it
    (every patch of the other images compared), on the set's inspected images alone."""
    return [(name, root, "zero-shot", dict(settings)), (name, root, "zero-shot", {**settings, "zero_shot_coreset": 1.0})]


def _scale(folder: Path, references: int, threads: int) -> None:
    many = str(generate_hard_demo(Path(folder) / "many", seed=1, n_train_good=references, n_test_good=5, n_per_class=1))
    print()
    for method, settings in (("learned", dict(threads=threads)), ("patchcore", dict(backbone="filterbank", threads=threads))):
        row = _run(("hard", many, method, dict(settings)))
        print(f"{method} ({'learned detector' if method == 'learned' else 'filter bank'}) with {references} hard-set "
              f"references of 128-320 px, {threads} thread(s): fit {row['fit_s']:.1f} s, predict "
              f"{row['predict_s'] / max(row['scored'], 1):.2f} s per scored image ({row['scored']} with the held-out "
              f"normals), peak {row['peak_mib']:.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="demo,hard,deeppcb,aitex", help="comma list of demo,hard,deeppcb,aitex [all]")
    parser.add_argument("--quick", action="store_true",
                        help="small sets (demo 160 px, hard set 60 refs, 20 DeepPCB, 30 AITEX references and images)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per row [1]")
    parser.add_argument("--deeppcb", type=int, default=100, help="DeepPCB images to inspect [100]")
    parser.add_argument("--aitex", type=int, default=0, help="AITEX references and test images drawn (0 = all) [0]")
    parser.add_argument("--zero-shot", action="store_true", help="also zero-shot rows")
    parser.add_argument("--methods", default="", help="comma list: only these methods' rows (e.g. zero-shot) [all]")
    parser.add_argument("--scale-refs", type=int, default=0,
                        help="also time `detect` defaults with this many hard-set references (e.g. 800)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        methods = set(filter(None, args.methods.split(",")))
        args.zero_shot = args.zero_shot or "zero-shot" in methods
        jobs = [job for job in _jobs(args, Path(folder)) if not methods or job[2] in methods]
        print(f"torch threads per row {args.threads}; sets {args.sets}{' (quick)' if args.quick else ''}; DeepPCB "
              f"{'found' if DEEPPCB.is_dir() else 'absent'}, AITEX {'found' if AITEX.is_dir() else 'absent'}; pixel "
              "AUROC on DeepPCB counts box interiors as defect pixels; recall = boxes (DeepPCB) or mask components "
              "found at 1% pixel false positives")
        header = (f"{'set':8s} {'method':10s} {'backbone':11s} {'image AUROC':>11s} {'pixel AUROC':>11s} {'recall':>6s} "
                  f"{'separation':>10s} {'fit s':>7s} {'predict s':>9s} {'total s':>7s} {'images':>6s} {'peak MiB':>8s} "
                  f"{'s/200x200':>10s}")  # total seconds per 200 x 200 pixels of the inspected images
        print(header)
        print("-" * len(header))
        for job in jobs:
            row = _run((job[0], job[1], job[2], dict(job[3])))
            backbone = job[3].get("backbone", "-") if job[2] != "auto" else f"-> {row['method']}"
            if job[2] == "zero-shot":
                backbone = "all patches" if job[3].get("zero_shot_coreset") == 1.0 else "coresets"
            print(f"{job[0]:8s} {job[2]:10s} {backbone:11s} {row['image_auroc']:11.3f} {row['pixel_auroc']:11.3f} "
                  f"{row['recall']:6.3f} {row['separation']:10.2f} {row['fit_s']:7.1f} {row['predict_s']:9.1f} "
                  f"{row['total_s']:7.0f} {row['images']:6d} {row['peak_mib']:8.0f} "
                  f"{row['total_s'] / max(row['tiles_200'], 1e-9):10.2f}", flush=True)
        if args.scale_refs:
            _scale(Path(folder), args.scale_refs, args.threads)


if __name__ == "__main__":
    main()
