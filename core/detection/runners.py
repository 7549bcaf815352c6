"""How each built-in method computes maps: template comparison, the learned detector, PatchCore
(timm backbone or the offline filter bank) and zero-shot; `detect` (core.detection.detector) decides
which runs, on what, and caches the results."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.detection.config import DetectorConfig
from core.detection.features import DetectionError, build_feature_extractor, input_size, patch_embeddings, to_input
from core.detection.learned import LearnedDetector
from core.detection.patchcore import PatchCore, patch_scores_to_maps
from core.detection.template import template_map
from core.detection.tiles import Piece, load_piece
from core.detection.zero_shot import comparison_patches, mutual_scores, reference_indices
from core.imageio import ImageReadError
from core.records import ImageRecord

Progress = Callable[[str, int, int], None]


def notify(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def load_image(record: ImageRecord | Piece) -> np.ndarray:
    """An image (or one tile of a large one) as H x W x 3 uint8; a file that cannot be read is named."""
    try:
        return load_piece(record)
    except ImageReadError as error:
        raise DetectionError(str(error)) from error


class Featurizer:
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
        notify(progress, stage, 0, len(records))
        with ThreadPoolExecutor(max_workers=4) as pool:
            for begin in range(0, len(records), size):
                chunk = list(records[begin:begin + size])
                images = list(pool.map(load_image, chunk))
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
                notify(progress, stage, done, len(records))


def to_image_maps(patch_scores: torch.Tensor, in_size: tuple[int, int], sizes: list[tuple[int, int]],
                   sigma: float) -> list[np.ndarray]:
    with torch.inference_mode():
        maps = patch_scores_to_maps(patch_scores, in_size, sigma)
        out = []
        for index, size in enumerate(sizes):
            resized = F.interpolate(maps[index][None, None], size=tuple(size), mode="bilinear", align_corners=False)
            out.append(resized[0, 0].float().cpu().numpy().astype(np.float32))
    return out



def run_template(targets: Sequence[ImageRecord], pairs: dict[str, ImageRecord], config: DetectorConfig,
                 progress: Progress | None, timings: dict[str, float]) -> dict[str, np.ndarray]:
    started = time.perf_counter()
    maps: dict[str, np.ndarray] = {}
    notify(progress, "template: registered differences", 0, len(targets))
    with ThreadPoolExecutor(max_workers=2) as pool:
        def one(record: ImageRecord) -> tuple[str, np.ndarray]:
            return record.relpath, template_map(load_image(record), load_image(pairs[record.relpath]),
                                                config.template_smoothing, config.template_tolerance,
                                                config.template_sigma)

        for done, (relpath, array) in enumerate(pool.map(one, targets), 1):
            maps[relpath] = array
            notify(progress, "template: registered differences", done, len(targets))
    timings["fit"] = 0.0
    timings["predict"] = time.perf_counter() - started
    return maps


#: File of the fitted learned detector beside its cached maps (same settings and references).
LEARNED_MODEL = "learned-model.pt"


def run_learned(normal: Sequence[ImageRecord], targets: Sequence[ImageRecord], config: DetectorConfig,
                device: torch.device, progress: Progress | None, timings: dict[str, float],
                model_path: Path | None) -> dict[str, np.ndarray]:
    started = time.perf_counter()
    report = lambda stage, done, total: notify(progress, stage, done, total)  # noqa: E731
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
            model.fit(lambda index: load_image(normal[index]), len(normal), report)
            if model_path is not None:
                model_path.parent.mkdir(parents=True, exist_ok=True)
                temporary = model_path.with_suffix(".tmp")
                torch.save({k: v.cpu() for k, v in model.state.items()}, temporary)
                temporary.replace(model_path)
    timings["fit"] = time.perf_counter() - started

    started = time.perf_counter()
    maps: dict[str, np.ndarray] = {}
    notify(progress, "predict: anomaly maps", 0, len(targets))
    for done, record in enumerate(targets, 1):
        image = load_image(record)
        with torch.inference_mode():
            scores, in_size = model.score(image)
        maps[record.relpath] = to_image_maps(scores[None], in_size, [image.shape[:2]], config.sigma)[0]
        notify(progress, "predict: anomaly maps", done, len(targets))
    timings["predict"] = time.perf_counter() - started
    return maps


def run_patchcore(featurizer: Featurizer, normal: Sequence[ImageRecord], targets: Sequence[ImageRecord],
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
        model.fit(bank, progress=lambda done, count: notify(progress, "fit: coreset", done, count),
                  total_patches=total)
    timings["fit"] = time.perf_counter() - started

    started = time.perf_counter()
    maps: dict[str, np.ndarray] = {}
    for records, embeddings, in_size, sizes in featurizer.batches(targets, progress, "predict: anomaly maps"):
        with torch.inference_mode():
            scores = model.score(embeddings)
        for record, array in zip(records, to_image_maps(scores, in_size, sizes, config.sigma)):
            maps[record.relpath] = array
    timings["predict"] = time.perf_counter() - started
    return maps


def run_zero_shot(featurizer: Featurizer, references: Sequence[ImageRecord], targets: Sequence[ImageRecord],
                  progress: Progress | None, timings: dict[str, float]) -> dict[str, np.ndarray]:
    config = featurizer.config
    started = time.perf_counter()
    patches: dict[str, torch.Tensor] = {}
    grids: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {}
    for records, embeddings, in_size, sizes in featurizer.batches(references, progress, "zero-shot: features"):
        for index, record in enumerate(records):
            patches[record.relpath] = embeddings[index].permute(1, 2, 0).reshape(-1, embeddings.shape[1])
            grids[record.relpath] = (tuple(embeddings.shape[-2:]), in_size, sizes[index])
    offered: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for done, (relpath, rows) in enumerate(patches.items(), 1):
            offered[relpath] = comparison_patches(rows, config.zero_shot_coreset, config.projection_dim, config.seed)
            notify(progress, "zero-shot: coresets", done, len(patches))
    timings["fit"] = time.perf_counter() - started

    started = time.perf_counter()
    order = [r.relpath for r in references]
    position = {relpath: index for index, relpath in enumerate(order)}
    maps: dict[str, np.ndarray] = {}
    for done, record in enumerate(targets, 1):
        index = position[record.relpath]
        chosen = reference_indices(len(order), index, config.zero_shot_references, config.seed)
        with torch.inference_mode():
            scores = mutual_scores(patches[record.relpath], [offered[order[j]] for j in chosen],
                                   config.zero_shot_fraction)
        grid, in_size, size = grids[record.relpath]
        maps[record.relpath] = to_image_maps(scores.reshape(1, *grid), in_size, [size], config.sigma)[0]
        notify(progress, "zero-shot: mutual scoring", done, len(targets))
    timings["predict"] = time.perf_counter() - started
    return maps


