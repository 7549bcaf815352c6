"""The built-in detector: anomaly maps for the images to inspect, by template comparison, the
learned detector, PatchCore or zero-shot; which method runs and why, the held-out normal images
that measure the maps, tiles of large images, and the cache. The methods themselves are in
core.detection.runners."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from core.detection.backbones import resolve_backbone
from core.detection.cache import MapCache, file_hash, settings_key
from core.detection.config import OFFLINE_BACKBONE, DetectorConfig
from core.detection.features import DetectionError
from core.detection.learned import MIN_REFERENCES
from core.detection.runners import (
    LEARNED_MODEL,
    Featurizer,
    notify,
    run_learned,
    run_patchcore,
    run_template,
    run_zero_shot,
)
from core.detection.separation import held_out_count, holdout_indices, separation_report
from core.detection.template import PairingError, pair_by_name, read_pairing
from core.detection.tiles import split, stitch
from core.records import ImageRecord, Manifest

Progress = Callable[[str, int, int], None]

@dataclass
class Detection:
    """Raw float32 maps at image size and image scores (map maximum), keyed by image relpath."""

    maps: dict[str, np.ndarray]
    scores: dict[str, float]
    config: DetectorConfig  # as run: method (and backbone) resolved, never "auto"
    computed: list[str] = field(default_factory=list)  # relpaths whose maps were computed in this call
    cached: list[str] = field(default_factory=list)  # relpaths whose maps came from the cache
    images_featurized: int = 0  # images passed through the backbone in this call
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (fit, predict, ...)
    choice: str = ""  # one line: which method and backbone ran, and why
    separation: dict | None = None  # separation_report of inspected vs held-out normal images
    held_out: list[str] = field(default_factory=list)  # normal relpaths kept out of the fit and scored
    normal_peaks: list[float] = field(default_factory=list)  # map maxima of those held-out normal images

    def summary(self) -> dict:
        """What the run was, for records: method, backbone, the choice line and the separation."""
        return {"method": self.config.method, "backbone": self.config.backbone, "choice": self.choice,
                "separation": self.separation, "held_out": list(self.held_out),
                "normal_peaks": list(self.normal_peaks)}


def _settings(config: DetectorConfig, weights_hash: str | None) -> dict:
    settings = config.as_dict()
    settings.pop("batch_size")  # does not change the maps
    settings.pop("pairing")  # the pairs themselves enter the content key
    settings["weights"] = weights_hash
    return settings



def resolve_method(manifest: Manifest, config: DetectorConfig) -> tuple[str, dict[str, ImageRecord], str]:
    """(method, template pairs, one-line reason): "auto" becomes template, patchcore or zero-shot."""
    targets = manifest.unlabeled
    pairs: dict[str, ImageRecord] = {}
    source = "by name"
    if config.method in ("auto", "template"):
        if config.pairing is not None:
            try:
                pairs = read_pairing(Path(config.pairing), manifest)
            except PairingError as error:
                raise DetectionError(str(error)) from error
            source = f"by {Path(config.pairing).name}"
        else:
            pairs = pair_by_name(targets, manifest.normal)
    unpaired = [r.relpath for r in targets if r.relpath not in pairs]
    if config.method == "template":
        if unpaired:
            raise DetectionError(
                f"{manifest.root}: template comparison needs a reference for every image; {len(unpaired)} have "
                f"none ({', '.join(unpaired[:3])}{' ...' if len(unpaired) > 3 else ''}); name them "
                "<id>_test.<ext> with normal/<id>_temp.<ext>, or give a pairing CSV (columns image,reference)")
        return "template", pairs, f"template comparison: every image has its own reference (paired {source})"
    if config.method == "auto" and targets and not unpaired:
        return "template", pairs, (f"template comparison: each of the {len(targets)} images has its own "
                                   f"reference (paired {source}), so each is compared with its partner")
    if config.method in ("patchcore", "learned") and not manifest.normal:
        raise DetectionError(
            f"{manifest.root}: {config.method} needs normal (defect-free) reference images and this data set has "
            "none (MVTec layout: train/good/; plain folder: a normal/ subfolder); use method 'zero-shot' instead")
    normal = len(manifest.normal)
    training = normal - held_out_count(normal, config.holdout_share)
    if config.method == "learned":
        if training < MIN_REFERENCES:
            raise DetectionError(
                f"{manifest.root}: the learned detector needs at least {MIN_REFERENCES} normal reference images to "
                f"train on and has {training} ({normal} normal, {normal - training} held out to measure the maps); "
                "add defect-free images, or use method 'patchcore' (filter bank or a pretrained backbone)")
        return "learned", {}, f"learned: fitted to {training} of the {normal} normal reference images, as asked"
    if config.method in ("auto", "patchcore") and manifest.normal:
        partners = f"; {len(pairs)} of {len(targets)} images have a partner by name" if pairs else ""
        if config.method == "auto" and resolve_backbone(config)[0] == OFFLINE_BACKBONE:
            if training >= MIN_REFERENCES:
                return "learned", {}, (f"learned: no pretrained backbone here, so a detector is fitted to {training} "
                                       f"of the {normal} normal reference images{partners}")
            return "patchcore", {}, (f"patchcore: learns {normal} normal reference images; the learned detector "
                                     f"needs at least {MIN_REFERENCES} to train on (has {training}){partners}")
        return "patchcore", {}, f"patchcore: learns {normal} normal reference images{partners}"
    if config.method == "auto":
        return "zero-shot", {}, ("zero-shot: no normal reference images, so every image is compared with the "
                                 "others (slower and weaker; add defect-free images in normal/ or train/good/)")
    return "zero-shot", {}, "zero-shot: as asked"


def detect(
    manifest: Manifest,
    config: DetectorConfig,
    device: torch.device,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
) -> Detection:
    """Anomaly maps (float32, image size, raw scores) and scores for every unlabeled image.

    method "auto" compares each image with its own reference when every image has one (golden
    template), else learns the normal images (PatchCore on a pretrained backbone; offline, the learned
    detector or PatchCore on the filter bank, whichever separates better on a small sample, and only
    that one is then fitted), else compares the images with each other (zero-shot). A share of the
    normal images is held out of the fit and scored, for the separation report. With cache_dir, maps
    are reused when the image content and everything the detector depends on are unchanged.
    """
    targets = manifest.unlabeled
    method, pairs, choice = resolve_method(manifest, config)
    offline_auto = config.method == "auto" and method == "learned"
    config, choice = _with_backbone(replace(config, method=method), choice)
    references = _references(manifest, method, pairs)
    timings: dict[str, float] = {}
    detection = Detection({}, {}, config, timings=timings, choice=choice)
    if not targets:
        return detection
    started = time.perf_counter()
    hashes = _content_hashes([*targets, *references], progress)
    held_out: list[ImageRecord] = []
    if method in ("patchcore", "learned"):
        chosen = set(holdout_indices([hashes[r.relpath] for r in references], config.holdout_share, config.seed))
        held_out = [r for i, r in enumerate(references) if i in chosen]
        references = [r for i, r in enumerate(references) if i not in chosen]
    if offline_auto and held_out:
        config, detection.choice, timings["compared"] = _choose_offline(
            references, held_out, targets, config, device, progress, choice)
        detection.config = config
    detection.held_out = [r.relpath for r in held_out]
    if method == "template":  # a map depends on the image and its own partner
        hashes.update({r.relpath: settings_key({"pair": hashes[r.relpath]}, [hashes[pairs[r.relpath].relpath]])
                       for r in targets})
    cache = _cache(config, cache_dir, [] if method == "template" else [hashes[r.relpath] for r in references])
    scored = [*targets, *held_out]
    maps = {r.relpath: m for r in scored if (m := cache.get(hashes[r.relpath]) if cache else None) is not None}
    detection.cached = [key for key in maps if key in {r.relpath for r in targets}]
    missing = [r for r in scored if r.relpath not in maps]
    timings["cache"] = time.perf_counter() - started
    if missing:
        computed = _compute(config, references, missing, pairs, device, progress, timings, cache, detection)
        for relpath, array in computed.items():
            maps[relpath] = array
            if cache is not None:
                cache.put(hashes[relpath], array)
        detection.computed = [r.relpath for r in targets if r.relpath in computed]
    detection.maps = {r.relpath: maps[r.relpath] for r in targets}
    detection.scores = {relpath: float(array.max()) for relpath, array in detection.maps.items()}
    if held_out:
        detection.normal_peaks = [float(maps[r.relpath].max()) for r in held_out]
        detection.separation = separation_report(list(detection.scores.values()), detection.normal_peaks)
    return detection


def _with_backbone(config: DetectorConfig, choice: str) -> tuple[DetectorConfig, str]:
    """The config as run: template and learned use no backbone; the others name the one resolved."""
    if config.method in ("template", "learned"):
        return replace(config, backbone="-"), choice
    backbone, why = resolve_backbone(config)
    return replace(config, backbone=backbone), f"{choice}; {why}"


def _references(manifest: Manifest, method: str, pairs: dict[str, ImageRecord]) -> list[ImageRecord]:
    """What the method learns from or compares with: normal images, the template partners, or all images."""
    if method == "template":
        return list({r.relpath: r for r in pairs.values()}.values())
    if method == "zero-shot":
        if len(manifest.images) < 2:
            raise DetectionError(f"{manifest.root}: zero-shot detection needs at least two images to compare")
        return list(manifest.images)
    return list(manifest.normal)


def _content_hashes(records: Sequence[ImageRecord], progress: Progress | None) -> dict[str, str]:
    needed = {r.relpath: r for r in records}
    hashes: dict[str, str] = {}
    for done, record in enumerate(needed.values(), 1):
        try:
            hashes[record.relpath] = file_hash(record.path)
        except OSError as error:
            raise DetectionError(f"{record.path}: cannot be read ({error.strerror or error})") from error
        notify(progress, "hashing images", done, len(needed))
    return hashes


def _cache(config: DetectorConfig, cache_dir: Path | None, context: list[str]) -> MapCache | None:
    if cache_dir is None:
        return None
    weights_hash = file_hash(Path(config.weights)) if config.weights and Path(config.weights).is_file() else None
    return MapCache(Path(cache_dir), settings_key(_settings(config, weights_hash), context))


def _compute(config: DetectorConfig, references: list[ImageRecord], missing: list[ImageRecord],
             pairs: dict[str, ImageRecord], device: torch.device, progress: Progress | None,
             timings: dict[str, float], cache: MapCache | None, detection: Detection) -> dict[str, np.ndarray]:
    """Maps of the missing images by the config's method; large images in tiles, stitched back."""
    if config.method == "template":
        return run_template(missing, pairs, config, progress, timings)
    pieces, learn = split(missing, config), split(references, config)
    if config.method == "learned":
        model_path = None if cache is None else cache.folder / LEARNED_MODEL
        computed = run_learned(learn, pieces, config, device, progress, timings, model_path)
    else:
        featurizer = Featurizer(config, device)
        if config.method == "patchcore":
            computed = run_patchcore(featurizer, learn, pieces, progress, timings)
        else:
            computed = run_zero_shot(featurizer, learn, pieces, progress, timings)
        detection.images_featurized = featurizer.images
    return stitch(computed, pieces)


#: auto without weights: PatchCore on the filter bank replaces the learned detector when its maps tell
#: the held-out normal images from the inspected ones better by at least this much (separation AUROC).
#: Measured: demo (smooth parts) 0.84 vs 0.72 -> filter bank; hard textured set 0.60 vs 0.60 and
#: DeepPCB 0.42 vs 0.41 -> learned (pixel AUROC 0.93 vs 0.46 and 0.80 vs 0.73 there).
AUTO_MARGIN = 0.05
#: The two are compared on a sample: each fitted to this many references and scored on this many
#: inspected images and the held-out normals; only the one chosen is then fitted in full.
AUTO_SAMPLE_REFERENCES = 40
AUTO_SAMPLE_IMAGES = 40


def _choose_offline(references: list[ImageRecord], held_out: list[ImageRecord], targets: list[ImageRecord],
                    config: DetectorConfig, device: torch.device, progress: Progress | None, why: str
                    ) -> tuple[DetectorConfig, str, float]:
    """auto offline: the learned detector or PatchCore on the filter bank, whichever separates the held-out
    normal images from the inspected ones better on a sample: (config to run, choice line, seconds spent)."""
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed + 17)
    fit = [references[i] for i in sorted(rng.permutation(len(references))[:AUTO_SAMPLE_REFERENCES])]
    probe = [targets[i] for i in sorted(rng.permutation(len(targets))[:AUTO_SAMPLE_IMAGES])]
    learned = replace(config, method="learned", backbone="-")
    bank = replace(config, method="patchcore", backbone=OFFLINE_BACKBONE)
    separation = {}
    for name, candidate in (("learned", learned), ("filter bank", bank)):
        stage = f"choosing the detector: {name} on a sample"
        report = None if progress is None else (lambda s, d, t, stage=stage: progress(f"{stage} ({s})", d, t))
        maps = _compute(candidate, fit, [*probe, *held_out], {}, device, report, {}, None,
                        Detection({}, {}, candidate))
        separation[name] = separation_report([float(maps[r.relpath].max()) for r in probe],
                                             [float(maps[r.relpath].max()) for r in held_out])["auroc"]
    sample = (f"compared on {len(probe)} inspected images and {len(held_out)} held-out normal images, each fitted "
              f"to {len(fit)} references: separation AUROC learned {separation['learned']:.2f}, filter bank "
              f"{separation['filter bank']:.2f}")
    spent = time.perf_counter() - started
    if separation["filter bank"] >= separation["learned"] + AUTO_MARGIN:
        return bank, (f"patchcore on the filter bank: no pretrained backbone here, and its maps tell the held-out "
                      f"normal images from the inspected ones better than the learned detector's ({sample})"), spent
    return learned, f"{why} ({sample}; the filter bank is taken only when {AUTO_MARGIN:.2f} better)", spent



def map_relpath(image_relpath: str) -> str:
    """Where an image's map goes under maps/: its relative path with the extension replaced by .npy."""
    return PurePosixPath(image_relpath).with_suffix(".npy").as_posix()


def write_detection(detection: Detection, manifest: Manifest, out_dir: Path) -> None:
    """Write the maps contract (docs/architecture.md, Output files): out_dir/maps/<relpath>.npy (float32,
    image size) and scores.csv, plus out_dir/detection.json: method, backbone, why, the separation report."""
    out_dir = Path(out_dir)
    ordered = [r.relpath for r in manifest.images if r.relpath in detection.maps]
    targets: dict[str, str] = {}
    for relpath in ordered:
        target = map_relpath(relpath)
        if target in targets:
            raise DetectionError(f"{relpath} and {targets[target]} would both be written to maps/{target}; "
                                 "rename one of the images")
        targets[target] = relpath
    for target, relpath in targets.items():
        path = out_dir / "maps" / target
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.asarray(detection.maps[relpath], dtype=np.float32))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "detection.json").write_text(json.dumps(detection.summary(), indent=2), encoding="utf-8")
    with open(out_dir / "scores.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "score"])
        for relpath in ordered:
            writer.writerow([relpath, f"{detection.scores[relpath]:.6g}"])
