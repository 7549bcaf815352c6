"""The built-in detector: anomaly maps for the images to inspect, PatchCore or zero-shot, cached."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F

from core.detection.backbones import resolve_backbone
from core.detection.cache import MapCache, file_hash, settings_key
from core.detection.config import OFFLINE_BACKBONE, DetectorConfig
from core.detection.features import (
    DetectionError,
    build_feature_extractor,
    input_size,
    patch_embeddings,
    to_input,
)
from core.detection.learned import MIN_REFERENCES, LearnedDetector
from core.detection.patchcore import PatchCore, patch_scores_to_maps
from core.detection.separation import held_out_count, holdout_indices, separation_report
from core.detection.template import PairingError, pair_by_name, read_pairing, template_map
from core.detection.zero_shot import mutual_scores, reference_indices
from core.imageio import ImageReadError, read_image
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


def _notify(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def _load(record: ImageRecord) -> np.ndarray:
    try:
        return read_image(record.path)
    except ImageReadError as error:
        raise DetectionError(str(error)) from error


class _Featurizer:
    """Reads images, runs the backbone in batches of equal input size, yields patch embeddings."""

    def __init__(self, config: DetectorConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.extractor = build_feature_extractor(config, device)
        self.images = 0

    def batches(
        self, records: Sequence[ImageRecord], progress: Progress | None, stage: str
    ) -> Iterator[tuple[list[ImageRecord], torch.Tensor, tuple[int, int], list[tuple[int, int]]]]:
        """(records, B x D x h x w embeddings, input size, original sizes) per batch."""
        size = self.config.batch_size
        done = 0
        _notify(progress, stage, 0, len(records))
        with ThreadPoolExecutor(max_workers=4) as pool:
            for begin in range(0, len(records), size):
                chunk = list(records[begin:begin + size])
                images = list(pool.map(_load, chunk))
                groups: dict[tuple[int, int], list[int]] = {}
                for index, image in enumerate(images):
                    groups.setdefault(input_size(image.shape[:2], self.config.image_size), []).append(index)
                for in_size, indices in groups.items():
                    tensor = torch.from_numpy(np.stack([to_input(images[i], in_size) for i in indices]))
                    with torch.inference_mode():
                        stages = self.extractor(tensor.to(self.device))
                        embeddings = patch_embeddings([s.float() for s in stages], self.config)
                    self.images += len(indices)
                    yield [chunk[i] for i in indices], embeddings, in_size, [images[i].shape[:2] for i in indices]
                done += len(chunk)
                _notify(progress, stage, done, len(records))


def _to_image_maps(patch_scores: torch.Tensor, in_size: tuple[int, int], sizes: list[tuple[int, int]],
                   sigma: float) -> list[np.ndarray]:
    with torch.inference_mode():
        maps = patch_scores_to_maps(patch_scores, in_size, sigma)
        out = []
        for index, size in enumerate(sizes):
            resized = F.interpolate(maps[index][None, None], size=tuple(size), mode="bilinear", align_corners=False)
            out.append(resized[0, 0].float().cpu().numpy().astype(np.float32))
    return out


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
    detector or PatchCore on the filter bank, whichever separates better), else compares the images with each other
    (zero-shot). A share of the normal images is held out of PatchCore's fit and scored, for the
    separation report. With cache_dir, maps are reused when the image content and everything the
    detector depends on are unchanged.
    """
    targets = manifest.unlabeled
    method, pairs, choice = resolve_method(manifest, config)
    if config.method == "auto" and method == "learned" and targets and held_out_count(
            len(manifest.normal), config.holdout_share):
        return _learned_or_filter_bank(manifest, config, device, progress, cache_dir, choice)
    if method in ("template", "learned"):
        config = replace(config, backbone="-")  # neither uses a backbone
    else:
        backbone, why = resolve_backbone(config)
        config = replace(config, backbone=backbone)
        choice = f"{choice}; {why}"
    config = replace(config, method=method)
    references = manifest.normal if method in ("patchcore", "learned") else manifest.images
    if method == "zero-shot" and len(references) < 2:
        raise DetectionError(f"{manifest.root}: zero-shot detection needs at least two images to compare")
    if method == "template":
        references = list({r.relpath: r for r in pairs.values()}.values())
    timings: dict[str, float] = {}
    detection = Detection({}, {}, config, timings=timings, choice=choice)
    if not targets:
        return detection

    started = time.perf_counter()
    hashes: dict[str, str] = {}
    needed = {r.relpath: r for r in [*targets, *references]}
    for done, record in enumerate(needed.values(), 1):
        try:
            hashes[record.relpath] = file_hash(record.path)
        except OSError as error:
            raise DetectionError(f"{record.path}: cannot be read ({error.strerror or error})") from error
        _notify(progress, "hashing images", done, len(needed))
    held_out: list[ImageRecord] = []
    if method in ("patchcore", "learned"):
        chosen = holdout_indices([hashes[r.relpath] for r in references], config.holdout_share, config.seed)
        held_out = [references[i] for i in chosen]
        references = [r for i, r in enumerate(references) if i not in set(chosen)]
    detection.held_out = [r.relpath for r in held_out]
    scored = [*targets, *held_out]
    if method == "template":  # a map depends on the image and its own partner
        hashes.update({r.relpath: settings_key({"pair": hashes[r.relpath]}, [hashes[pairs[r.relpath].relpath]])
                       for r in targets})
    cache = None
    if cache_dir is not None:
        weights_hash = file_hash(Path(config.weights)) if config.weights and Path(config.weights).is_file() else None
        context = [] if method == "template" else [hashes[r.relpath] for r in references]
        cache = MapCache(Path(cache_dir), settings_key(_settings(config, weights_hash), context))
    maps: dict[str, np.ndarray] = {}
    missing: list[ImageRecord] = []
    for record in scored:
        cached = cache.get(hashes[record.relpath]) if cache is not None else None
        if cached is None:
            missing.append(record)
        else:
            maps[record.relpath] = cached
            detection.cached.append(record.relpath)
    timings["cache"] = time.perf_counter() - started

    if missing:
        if method == "template":
            computed = _run_template(missing, pairs, config, progress, timings)
        elif method == "learned":
            computed = _run_learned(references, missing, config, device, progress, timings,
                                    None if cache is None else cache.folder / LEARNED_MODEL)
        else:
            featurizer = _Featurizer(config, device)
            if method == "patchcore":
                computed = _run_patchcore(featurizer, references, missing, progress, timings)
            else:
                computed = _run_zero_shot(featurizer, references, missing, progress, timings)
            detection.images_featurized = featurizer.images
        for relpath, array in computed.items():
            maps[relpath] = array
            detection.computed.append(relpath)
            if cache is not None:
                cache.put(hashes[relpath], array)
    detection.maps = {r.relpath: maps[r.relpath] for r in targets}
    detection.scores = {relpath: float(array.max()) for relpath, array in detection.maps.items()}
    detection.cached = [k for k in detection.cached if k in detection.maps]
    detection.computed = [k for k in detection.computed if k in detection.maps]
    if held_out:
        detection.normal_peaks = [float(maps[r.relpath].max()) for r in held_out]
        detection.separation = separation_report(list(detection.scores.values()), detection.normal_peaks)
    return detection


#: auto without weights: PatchCore on the filter bank replaces the learned detector when its maps tell
#: the held-out normal images from the inspected ones better by at least this much (separation AUROC).
#: Measured: demo (smooth parts) 0.84 vs 0.72 -> filter bank; hard textured set 0.60 vs 0.60 and
#: DeepPCB 0.42 vs 0.41 -> learned (pixel AUROC 0.93 vs 0.46 and 0.80 vs 0.73 there).
AUTO_MARGIN = 0.05


def _learned_or_filter_bank(manifest: Manifest, config: DetectorConfig, device: torch.device,
                            progress: Progress | None, cache_dir: Path | None, why: str) -> Detection:
    """auto offline: both the learned detector and PatchCore on the filter bank, the one whose maps
    separate better (held-out normals against the inspected images) kept; both are cached."""
    learned = detect(manifest, replace(config, method="learned"), device, progress, cache_dir)
    compare = None if progress is None else (
        lambda stage, done, total: progress(f"filter bank, compared: {stage}", done, total))
    bank = detect(manifest, replace(config, method="patchcore", backbone=OFFLINE_BACKBONE), device, compare,
                  cache_dir)
    ours, theirs = (d.separation["auroc"] if d.separation else float("nan") for d in (learned, bank))
    numbers = f"separation AUROC learned {ours:.2f}, filter bank {theirs:.2f}"
    if theirs >= ours + AUTO_MARGIN:
        chosen, other = bank, learned
        bank.choice = (f"patchcore on the filter bank: no pretrained backbone here, and its maps tell the held-out "
                       f"normal images from the inspected ones better than the learned detector's ({numbers})")
    else:
        chosen, other = learned, bank
        learned.choice = f"{why} ({numbers}; the filter bank is taken only when {AUTO_MARGIN:.2f} better)"
    chosen.timings["compared"] = sum(other.timings.get(key, 0.0) for key in ("cache", "fit", "predict"))
    return chosen


def _run_template(targets: Sequence[ImageRecord], pairs: dict[str, ImageRecord], config: DetectorConfig,
                  progress: Progress | None, timings: dict[str, float]) -> dict[str, np.ndarray]:
    started = time.perf_counter()
    maps: dict[str, np.ndarray] = {}
    _notify(progress, "template: registered differences", 0, len(targets))
    with ThreadPoolExecutor(max_workers=2) as pool:
        def one(record: ImageRecord) -> tuple[str, np.ndarray]:
            return record.relpath, template_map(_load(record), _load(pairs[record.relpath]),
                                                config.template_smoothing, config.template_tolerance,
                                                config.template_sigma)

        for done, (relpath, array) in enumerate(pool.map(one, targets), 1):
            maps[relpath] = array
            _notify(progress, "template: registered differences", done, len(targets))
    timings["fit"] = 0.0
    timings["predict"] = time.perf_counter() - started
    return maps


#: File of the fitted learned detector beside its cached maps (same settings and references).
LEARNED_MODEL = "learned-model.pt"


def _run_learned(normal: Sequence[ImageRecord], targets: Sequence[ImageRecord], config: DetectorConfig,
                 device: torch.device, progress: Progress | None, timings: dict[str, float],
                 model_path: Path | None) -> dict[str, np.ndarray]:
    started = time.perf_counter()
    report = lambda stage, done, total: _notify(progress, stage, done, total)  # noqa: E731
    model = LearnedDetector(config, device)
    state = None
    if model_path is not None and model_path.is_file():
        try:
            state = torch.load(model_path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError):
            state = None  # damaged: fitted again
    with torch.inference_mode():
        if state is not None:
            model.load(state)
        else:
            model.fit(lambda index: _load(normal[index]), len(normal), report)
            if model_path is not None:
                model_path.parent.mkdir(parents=True, exist_ok=True)
                temporary = model_path.with_suffix(".tmp")
                torch.save({k: v.cpu() for k, v in model.state.items()}, temporary)
                temporary.replace(model_path)
    timings["fit"] = time.perf_counter() - started

    started = time.perf_counter()
    maps: dict[str, np.ndarray] = {}
    _notify(progress, "predict: anomaly maps", 0, len(targets))
    for done, record in enumerate(targets, 1):
        image = _load(record)
        with torch.inference_mode():
            scores, in_size = model.score(image)
        maps[record.relpath] = _to_image_maps(scores[None], in_size, [image.shape[:2]], config.sigma)[0]
        _notify(progress, "predict: anomaly maps", done, len(targets))
    timings["predict"] = time.perf_counter() - started
    return maps


def _run_patchcore(featurizer: _Featurizer, normal: Sequence[ImageRecord], targets: Sequence[ImageRecord],
                   progress: Progress | None, timings: dict[str, float]) -> dict[str, np.ndarray]:
    config = featurizer.config
    started = time.perf_counter()
    # Bounded memory: each image gives at most its share of the greedy's candidates (x2 for slack).
    per_image = max(1, -(-2 * config.coreset_candidates // max(1, len(normal))))
    generator = torch.Generator().manual_seed(config.seed + 2)
    patches, total = [], 0
    for _, embeddings, _, _ in featurizer.batches(normal, progress, "fit: features of normal images"):
        for single in embeddings:
            flat = single.permute(1, 2, 0).reshape(-1, embeddings.shape[1])
            total += flat.shape[0]
            if flat.shape[0] > per_image:
                flat = flat[torch.randperm(flat.shape[0], generator=generator)[:per_image].sort().values]
            patches.append(flat.clone())
    bank = torch.cat(patches)
    model = PatchCore(config.coreset_ratio, config.projection_dim, config.seed, config.coreset_max,
                      config.coreset_candidates)
    with torch.inference_mode():
        model.fit(bank, progress=lambda done, count: _notify(progress, "fit: coreset", done, count),
                  total_patches=total)
    timings["fit"] = time.perf_counter() - started

    started = time.perf_counter()
    maps: dict[str, np.ndarray] = {}
    for records, embeddings, in_size, sizes in featurizer.batches(targets, progress, "predict: anomaly maps"):
        with torch.inference_mode():
            scores = model.score(embeddings)
        for record, array in zip(records, _to_image_maps(scores, in_size, sizes, config.sigma)):
            maps[record.relpath] = array
    timings["predict"] = time.perf_counter() - started
    return maps


def _run_zero_shot(featurizer: _Featurizer, references: Sequence[ImageRecord], targets: Sequence[ImageRecord],
                   progress: Progress | None, timings: dict[str, float]) -> dict[str, np.ndarray]:
    config = featurizer.config
    started = time.perf_counter()
    patches: dict[str, torch.Tensor] = {}
    grids: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {}
    for records, embeddings, in_size, sizes in featurizer.batches(references, progress, "zero-shot: features"):
        for index, record in enumerate(records):
            patches[record.relpath] = embeddings[index].permute(1, 2, 0).reshape(-1, embeddings.shape[1])
            grids[record.relpath] = (tuple(embeddings.shape[-2:]), in_size, sizes[index])
    timings["fit"] = time.perf_counter() - started

    started = time.perf_counter()
    order = [r.relpath for r in references]
    position = {relpath: index for index, relpath in enumerate(order)}
    maps: dict[str, np.ndarray] = {}
    for done, record in enumerate(targets, 1):
        index = position[record.relpath]
        chosen = reference_indices(len(order), index, config.zero_shot_references, config.seed)
        with torch.inference_mode():
            scores = mutual_scores(patches[record.relpath], [patches[order[j]] for j in chosen],
                                   config.zero_shot_fraction)
        grid, in_size, size = grids[record.relpath]
        maps[record.relpath] = _to_image_maps(scores.reshape(1, *grid), in_size, [size], config.sigma)[0]
        _notify(progress, "zero-shot: mutual scoring", done, len(targets))
    timings["predict"] = time.perf_counter() - started
    return maps


def map_relpath(image_relpath: str) -> str:
    """Where an image's map goes under maps/: its relative path with the extension replaced by .npy."""
    return PurePosixPath(image_relpath).with_suffix(".npy").as_posix()


def write_detection(detection: Detection, manifest: Manifest, out_dir: Path) -> None:
    """Write DESIGN.md's contract: out_dir/maps/<relpath>.npy (float32, image size) and scores.csv,
    plus out_dir/detection.json: method, backbone, why, and the separation report."""
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
