"""Classifying new images with a run's named classes: accuracy, novelty and throughput.

    nice -n 10 python -m benchmarks.classify [--sets deeppcb,aitex] [--pcb-images 0] [--seed 0] [--threads 2]
                                            [--device cpu|auto|cuda]

Per data set: the images are split in two seeded halves. Discovery runs on the first half (K = the
number of defect types there); each cluster is named by the majority true class of its regions (as an
engineer would after looking); the bundle of that run classifies the second half. Printed:

- region accuracy on the second half (nearest named class, every region; and over the regions not
  flagged unknown, with the unknown share), beside the discovery's own accuracy on the first half
  under the same naming: the baseline, measured in the same run; and the same accuracy under each
  open-set rule (core.classify.openset.RULES) fitted on the same bundle rows;
- novelty: for each defect type, that type's regions are left out of the first half (region level:
  DeepPCB images mix types), the rest grouped again with K - 1 and named the same way, and the second
  half classified: the AUROC with which the novelty score picks out the held-out type's regions, for
  each open-set rule (the default first, then those of older bundles);
- throughput: images per second of classification (threads as given; on --device: DeepPCB's template
  maps and the classification, the demo's detector and classification) and the maps' share of the time.

DeepPCB maps: the built-in golden-template detector. AITEX maps: its ground-truth masks (the learned
detector on 4096 x 256 strips is too slow for a benchmark run); region truth from the COCO boxes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from core.classify.openset import NEIGHBORS, RULES
from core.records import NORMAL_CLASS, Manifest

ROOT = Path(__file__).resolve().parents[1]


def halves(manifest: Manifest, seed: int, limit: int = 0) -> tuple[list, list]:
    records = sorted(manifest.unlabeled, key=lambda r: r.relpath)
    order = np.random.default_rng(seed).permutation(len(records))
    if limit:
        order = order[:limit]
    half = len(order) // 2
    return [records[i] for i in sorted(order[:half])], [records[i] for i in sorted(order[half:])]


def region_truth(root: Path, regions, records) -> list[str]:
    """Each region's class: the annotated box it overlaps most, else normal (a false detection)."""
    from core.evaluation.coco import find_annotations, load_coco, match_regions
    from core.imageio import image_size

    sizes = {r.relpath: image_size(r.path) for r in records}
    matches = match_regions(regions, load_coco(find_annotations(root), sizes), sizes)
    by_key = {m.region: m.gt for m in matches}
    return [by_key.get(r.key, NORMAL_CLASS) for r in regions]


def majority_names(clusters, truth) -> dict[int, str]:
    names = {}
    for cluster in sorted(set(clusters)):
        values, counts = np.unique([t for c, t in zip(clusters, truth) if c == cluster], return_counts=True)
        names[cluster] = str(values[counts.argmax()])
    return names


def as_truth(name: str, normal: str = NORMAL_CLASS) -> str:
    """A classified name as a true class: "no anomaly found" is the normal class."""
    from core.classify import NO_ANOMALY

    return normal if name == NO_ANOMALY else name


def auroc(positive, score) -> float:
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, bool)
    return float(roc_auc_score(positive, score)) if 0 < positive.sum() < len(positive) else float("nan")


def deeppcb_maps(root: Path, records, device="cpu") -> dict:
    from core.dataset import load_dataset
    from core.detection import DetectorConfig, detect

    full = load_dataset(root)
    manifest = Manifest(full.root, full.layout, full.normal + list(records), full.problems)
    found = detect(manifest, DetectorConfig(method="template"), device)
    return {k: np.asarray(v, np.float32) for k, v in found.maps.items()}


def aitex_maps(root: Path, records, device="cpu") -> dict:
    from core.demo.build import maps_from_ground_truth

    return maps_from_ground_truth(records)


def references_of(manifest: Manifest, records) -> list:
    """The normal references of some images: their golden templates where every image has one (DeepPCB:
    <id>_temp beside <id>_test), else all of the set's."""
    by_name = {r.path.name: r for r in manifest.normal}
    partners = [by_name.get(r.path.name.replace("_test", "_temp")) for r in records]
    return partners if partners and all(partners) else manifest.normal


def discover_half(root: Path, manifest: Manifest, first, maps, k: int, seed: int):
    from dataclasses import replace

    from core.config import DiscoveryConfig, PredictConfig
    from core.pipeline import run_discovery

    config = DiscoveryConfig(classes=k, device="cpu", seed=seed, predict=PredictConfig(umap_min_points=10 ** 9))
    half = replace(manifest, images=[*references_of(manifest, first), *first])
    return config, run_discovery(half, config, maps={r.relpath: maps[r.relpath] for r in first})


def evaluate(name: str, root: Path, make_maps, seed: int, limit: int, neighbors: int = NEIGHBORS, device="cpu") -> dict:
    """Every number of one data set's rows."""
    from dataclasses import replace

    from core.classify import BundleSource, classify_images, load_bundle, write_bundle
    from core.dataset import load_dataset

    manifest = load_dataset(root)
    first, second = halves(manifest, seed, limit)
    started = time.perf_counter()
    maps = make_maps(root, first + second, device)
    map_time = (time.perf_counter() - started) / max(1, len(first) + len(second))
    k = len({r.gt_class for r in first} - {None, "good"}) if manifest.layout == "mvtec" else 6
    config, result = discover_half(root, manifest, first, maps, k, seed)
    regions_first = [r.region for r in result.regions]
    truth_first = region_truth(root, regions_first, first)
    clusters = [r.cluster for r in result.regions]
    names = majority_names(clusters, truth_first)
    own_accuracy = float(np.mean([names[c] == t for c, t in zip(clusters, truth_first)]))
    folder = Path(tempfile.mkdtemp(prefix=f"classify-{name}-")) / "bundle"
    source = BundleSource(regions_first, [names[c] for c in clusters], {r.relpath: r.path for r in first}, config,
                          references=[r.path for r in references_of(manifest, first)], maps_imported=True,
                          run=f"{name} first half", normal_class=NORMAL_CLASS)
    bundle = load_bundle(write_bundle(folder, source))
    second_manifest = replace(manifest, images=[*references_of(manifest, second), *second])
    started = time.perf_counter()
    classified = classify_images(bundle, second_manifest, maps={r.relpath: maps[r.relpath] for r in second},
                                 device=device)
    elapsed = time.perf_counter() - started + map_time * len(second)  # maps made above, timed per image
    truth_second = region_truth(root, [c.region for c in classified.regions], second)
    named = np.array([as_truth(c.name) == t for c, t in zip(classified.regions, truth_second)])
    unknown = np.array([c.unknown for c in classified.regions])
    row = {"set": name, "images": (len(first), len(second)), "k": k, "own": own_accuracy,
           "accuracy": float(named.mean()), "known_accuracy": float(named[~unknown].mean()) if (~unknown).any()
           else float("nan"), "unknown_share": float(unknown.mean()), "per_s": len(second) / elapsed,
           "maps_share": map_time * len(second) / elapsed, "threshold": bundle.info["classifier"]["threshold"],
           "by_rule": {rule: float(np.mean([as_truth(n) == t for n, t in
                                            zip(names_by_rule(bundle, classified, rule), truth_second)]))
                       for rule in RULES}}
    found = [i for i, r in enumerate(regions_first) if not r.weak]  # the bundle's rows
    row["novelty"] = held_out(bundle.descriptors, [regions_first[i] for i in found], [truth_first[i] for i in found],
                              classified, truth_second, config, k, seed, neighbors)
    return row


def names_by_rule(bundle, classified, rule: str) -> list[str]:
    """Each classified region's class name under another open-set rule fitted on the bundle's rows (weak regions
    stay "no anomaly found"): the same run and regions, only the rule differs."""
    from core.classify.classify import NO_ANOMALY
    from core.classify.openset import fit_open_set
    from core.grouping.descriptors import combine

    model = fit_open_set(bundle.classifier.features, bundle.classifier.labels, bundle.classes, rule=rule)
    result = model.predict(combine(classified.descriptors, bundle.config.descriptors, reference=bundle.descriptors))
    return [NO_ANOMALY if c.region.weak else bundle.classes[int(k)] for c, k in zip(classified.regions, result.classes)]


def held_out(raw_first, regions_first, truth_first, classified, truth_second, config, k: int, seed: int,
             neighbors: int) -> dict:
    """AUROC of the novelty score for each defect type left out of the first half, per open-set rule (RULES: the
    default first); raw_first: the first half's raw descriptors (the bundle's rows)."""
    from core.classify.openset import fit_open_set
    from core.grouping.descriptors import Descriptors, combine
    from core.grouping.spectral import grouped_probabilities

    raw_second = classified.descriptors
    out = {}
    for held in sorted(set(truth_first) - {NORMAL_CLASS}):
        keep = np.array([t != held for t in truth_first])
        kept = Descriptors(raw_first.values[keep], raw_first.groups, raw_first.names)
        features = combine(kept, config.descriptors)
        scores = np.array([r.score for r, k_ in zip(regions_first, keep) if k_])
        probabilities, _, _ = grouped_probabilities("descriptors", None, features, k - 1, scores=scores,
                                                    config=config.grouping, seed=seed)
        clusters = probabilities.argmax(axis=1)
        names = majority_names(clusters, [t for t, k_ in zip(truth_first, keep) if k_])
        classes = sorted(set(names.values()))
        labels = [classes.index(names[c]) for c in clusters]
        new = combine(raw_second, config.descriptors, reference=kept)
        positive = [t == held for t in truth_second]
        weak = np.array([c.region.weak for c in classified.regions])  # never unknown: "no anomaly found"
        out[held] = tuple(auroc(positive, np.where(weak, 0.0, fit_open_set(features, labels, classes, neighbors,
                                                                           rule=rule).predict(new).novelty))
                          for rule in RULES)
    return out


def demo_row(work: Path, seed: int, device: str = "cpu") -> dict:
    """The demo check: discover draw --seed 0 (K = 5), classify draw --seed 1 with --model the run's folder;
    each cluster named by the majority true class of its images; image accuracy (unknown counts wrong)."""
    import csv
    import subprocess

    def core(*args: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, check=True, capture_output=True, text=True)
        return time.perf_counter() - started

    for draw in (0, 1):
        if not (work / f"demo{draw}").is_dir():
            core("demo", "--out", str(work / f"demo{draw}"), "--seed", str(draw))
    if not (work / "run" / "bundle").is_dir():
        core("discover", "--dataset", str(work / "demo0"), "--out", str(work / "run"), "--classes", "5", "--seed",
             str(seed), "--quiet", "--device", "cpu", "--workdir", str(work / "workdir"))
    import shutil

    out = work / "classified"
    for old in (out, work / "classify-cache"):  # a rerun with --work times the detector again, not its cache
        if old.exists():
            shutil.rmtree(old)
    elapsed = core("classify", "--model", str(work / "run"), "--images", str(work / "demo1" / "test"), "--out",
                   str(out), "--workdir", str(work / "classify-cache"), "--device", str(device))
    with open(work / "run" / "images.csv", newline="", encoding="utf-8") as handle:
        run = list(csv.DictReader(handle))
    names = majority_names([r["cluster_name"] for r in run], [r["gt"] for r in run])
    own = float(np.mean([names[r["cluster_name"]] == r["gt"] for r in run]))
    with open(out / "images.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    truth = [Path(r["image"]).relative_to(work / "demo1" / "test").parts[0] for r in rows]
    right = [names.get(r["class"], as_truth(r["class"], "good")) == t for r, t in zip(rows, truth)]
    import json

    timings = json.loads((out / "classification.json").read_text())["timings_s"]
    from core.classify import classify_images, fit_open_set, load_bundle, load_images

    bundle = load_bundle(work / "run")
    by_rule = {bundle.classifier.rule: float(np.mean(right))}  # the bundle's own rule: the CLI run above
    manifest = load_images(work / "demo1" / "test", bundle)
    fitted = bundle.classifier
    for rule in (r for r in RULES if r not in by_rule):  # the same run and maps (the cache), only the rule differs
        bundle.classifier = fit_open_set(fitted.features, fitted.labels, fitted.classes, rule=rule)
        images = classify_images(bundle, manifest, cache_dir=work / "classify-cache", device=device).images
        by_rule[rule] = float(np.mean([names.get(i.name, as_truth(i.name, "good")) == Path(i.image).parts[0]
                                       for i in images]))
    return {"set": "demo (images)", "images": (len(run), len(rows)), "k": 5, "own": own, "by_rule": by_rule,
            "accuracy": float(np.mean(right)), "known_accuracy": float(np.mean([ok for ok, r in zip(right, rows)
                                                                                 if r["unknown"] == "0"])),
            "unknown_share": float(np.mean([r["unknown"] == "1" for r in rows])), "per_s": len(rows) / elapsed,
            "maps_share": timings["maps"] / elapsed, "threshold": float("nan"), "novelty": {}}


def print_table(rows: list[dict]) -> None:
    print(f"{'set':<14} {'images':>9} {'K':>2} {'own acc':>7} {'acc':>6} {'acc known':>9} {'unknown':>7} "
          f"{'img/s':>6} {'maps':>5}")
    for r in rows:
        print(f"{r['set']:<14} {r['images'][0]:>4}/{r['images'][1]:<4} {r['k']:>2} {r['own']:>7.3f} "
              f"{r['accuracy']:>6.3f} {r['known_accuracy']:>9.3f} {r['unknown_share']:>7.1%} {r['per_s']:>6.2f} "
              f"{r['maps_share']:>5.0%}")
    rules = " / ".join(RULES)
    print(f"\naccuracy on the second half by open-set rule ({rules}; the first is the default):")
    for r in rows:
        print(f"  {r['set']:<14} " + " / ".join(f"{r['by_rule'][rule]:.3f}" for rule in RULES))
    print(f"\nnovelty AUROC per held-out type ({rules}):")
    for r in rows:
        for held, values in r["novelty"].items():
            print(f"  {r['set']:<12} {held:<20} " + " / ".join(f"{v:.3f}" for v in values))
        if r["novelty"]:
            values = np.array(list(r["novelty"].values()))
            print(f"  {r['set']:<12} {'mean':<20} " + " / ".join(f"{v:.3f}" for v in np.nanmean(values, axis=0)))


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="deeppcb,aitex,demo")
    parser.add_argument("--pcb-images", type=int, default=0, help="DeepPCB images drawn (0 = all 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--neighbors", type=int, default=NEIGHBORS, help="novelty rows: k of the neighbours rule")
    parser.add_argument("--work", type=Path, help="demo: keep the generated sets and the run here")
    parser.add_argument("--device", default="cpu", help="where maps and classification run: cpu | auto | cuda "
                        "| cuda:N [cpu]; discovery of the first half stays on the CPU")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from core.device import resolve_device

    device = resolve_device(args.device)
    datasets = ROOT.parent / "shared" / "datasets"
    rows = []
    for name in args.sets.split(","):
        started = time.perf_counter()
        if name == "deeppcb":
            rows.append(evaluate("DeepPCB", datasets / "deeppcb", deeppcb_maps, args.seed, args.pcb_images,
                                 args.neighbors, device))
        elif name == "aitex":
            rows.append(evaluate("AITEX", datasets / "aitex", aitex_maps, args.seed, 0, args.neighbors, device))
        elif name == "demo":
            rows.append(demo_row(args.work or Path(tempfile.mkdtemp(prefix="classify-demo-")), args.seed, str(device)))
        print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(f"maps and classification on {device}, {args.threads} CPU threads")
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
