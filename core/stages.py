"""The run's first stages, maps -> MEBin -> floor -> references -> cut, and the runner that times every stage.

`detector_for` + `run_detection` make raw maps with the built-in detector, `prepare_maps` brings
them to one global scale, `find_regions` runs MEBin and cuts the regions (the floor, the normal
references their masks are redrawn against, the crops): the discovery pipeline (core.pipeline)
and the app's detection job (jobs/detect.py) call this one chain. `Stages` runs named stages
for both: the cancel check before each, its time, its share of the one progress bar.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import DetectorConfig, DiscoveryConfig, MEBinConfig, RegionConfig
from core.errors import PipelineError
from core.progress import StageReporter, check_cancel, stage_seconds
from core.records import ImageRecord, Manifest, Region
from core.regions.crops import set_floor
from core.regions.mebin import MEBinResult
from core.regions.refine import ReferenceImages, redraws, refine_regions, references_for
from core.results import MapSet, PipelineProgress

if TYPE_CHECKING:
    import torch

    from core.mgvit.train import TrainProgress

__all__ = ["DetectionRecord", "FoundRegions", "Stage", "Stages", "binarize_maps", "cut_regions", "detection_record",
           "detection_share", "detector_for", "find_regions", "plan_seconds", "prepare_maps", "run_detection"]


#: The cut's share of the regions stage when masks are then redrawn against normal references
#: (DeepPCB, 3,660 regions: cut 4.6 s, redraw 38 s on 2 cores).
CUT_SHARE = 0.15

# ------------------------------------------------------------------------------ the runner


class Stage:
    """One running stage: report(fraction, message) moves its part of the bar; `summary` is said when it ends."""

    def __init__(self, reporter: StageReporter, name: str) -> None:
        self.reporter, self.name, self.summary = reporter, name, ""

    def report(self, fraction: float, message: str = "", train: TrainProgress | None = None) -> None:
        self.reporter(self.name, fraction, message, train=train)


class Stages:
    """Runs named stages (core.progress.STAGES): cancel check, timing and progress in one place."""

    def __init__(self, progress: Callable[[PipelineProgress], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None) -> None:
        self.reporter = StageReporter(progress)
        self.should_cancel = should_cancel
        self.timings: dict[str, float] = {}

    def plan(self, seconds: Mapping[str, float]) -> None:
        """Share what is left of the bar among the stages to come by their expected seconds (core.progress.stage_seconds)."""
        self.reporter.plan(seconds)

    @contextmanager
    def __call__(self, name: str, message: str = "", *, cancellable: bool = True) -> Iterator[Stage]:
        """with stages("regions", "cutting") as stage: ... stage.summary = "12 regions"."""
        if cancellable:
            check_cancel(self.should_cancel, name)
        started = time.perf_counter()
        stage = Stage(self.reporter, name)
        if message:
            stage.report(0.0, message)
        yield stage
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started
        self.reporter.finish(name, stage.summary)


def plan_seconds(manifest: Manifest, config: DiscoveryConfig, detects: bool,
                 n_regions: int | None = None) -> dict[str, float]:
    """A run's expected seconds per stage (core.progress.stage_seconds), for an even progress bar;
    detects: the built-in detector makes the maps; n_regions: once MEBin or the cut has counted them."""
    detector_s = 0.0
    if detects:
        from core.detection.plan import detector_seconds, step_seconds

        detector_s = detector_seconds(step_seconds(manifest, detector_for(manifest, config.detector, config.seed)))
    return _seconds(config, len(manifest.unlabeled), len(manifest.normal), n_regions, detector_s)


def _seconds(config: DiscoveryConfig, n_images: int, n_references: int, n_regions: int | None,
             detector_s: float = 0.0) -> dict[str, float]:
    return stage_seconds(n_images, n_regions=n_regions, redraw=redraws(config.regions, n_references),
                         detector_s=detector_s, epochs=config.train.epochs if config.space.trains_model else 0)


def detection_share(manifest: Manifest, config: DiscoveryConfig) -> float:
    """The share of a discovery's bar its built-in detector takes when the run makes its maps."""
    seconds = plan_seconds(manifest, config, True)
    return seconds["maps"] / max(sum(seconds.values()), 1e-9)


# ------------------------------------------------------------------------------ maps


def detector_for(manifest: Manifest, detector: DetectorConfig, seed: int) -> DetectorConfig:
    """The detector a run uses: seeded with the run's seed; zero-shot when the set has no normal references."""
    detector = replace(detector, seed=seed)
    if not manifest.normal and detector.method in ("patchcore", "learned"):
        detector = replace(detector, method="zero-shot")
    return detector


def run_detection(
    manifest: Manifest,
    detector: DetectorConfig,
    device: torch.device | str,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    cache_dir: Path | None = None,
    summary: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Raw anomaly maps (float32 by image relpath) from the built-in detector (see detector_for).

    progress(step, done, total) follows the detector's steps. summary, when given, receives what
    ran and why and the separation report (Detection.summary). Raises PipelineError when detection fails.
    """
    from core import detection

    try:
        found = detection.detect(manifest, detector, device, progress=progress, cache_dir=cache_dir)
    except ValueError as error:  # DetectionError and bad settings: the message names the problem
        raise PipelineError(f"anomaly detection failed: {error}") from error
    if summary is not None:
        summary.update(found.summary())
    return {key: np.asarray(value, dtype=np.float32) for key, value in found.maps.items()}


@dataclass
class DetectionRecord:
    """What `python -m core detect` wrote in detection.json beside its maps, as far as discovery uses it."""

    normal_peaks: list[float] = field(default_factory=list)  # held-out normal images' map peaks: the floor
    separation: dict[str, Any] | None = None  # how well the maps separate (core.detection.separation)
    problems: list[str] = field(default_factory=list)


def detection_record(folder: Path) -> DetectionRecord:
    """The detection.json beside (or inside) a maps folder; an empty record when there is none, and a
    problem naming the file when it is not a detection record (the maps stay usable)."""
    for candidate in (folder / "detection.json", folder.parent / "detection.json"):
        if candidate.is_file():
            try:
                saved = json.loads(candidate.read_text(encoding="utf-8"))
                return DetectionRecord([float(v) for v in saved.get("normal_peaks") or []], saved.get("separation"))
            except (ValueError, TypeError, AttributeError) as error:
                return DetectionRecord(problems=[f"{candidate}: not a detection record ({error}); the regions' "
                                                 "floor comes from the maps alone"])
    return DetectionRecord()


def prepare_maps(records: Sequence[ImageRecord], raw: Mapping[str, np.ndarray],
                 normal_peaks: Sequence[float] = ()) -> MapSet:
    """Read the images, bring every raw map (any scale) to its image's size and normalize them globally.

    normal_peaks: raw map maxima of held-out normal images (the detector's), brought to the same scale.
    Raises PipelineError naming an image without a map, an unreadable image or a bad map.
    """
    from core.imageio import ImageReadError, read_image
    from core.detection.maps import normalize_global, on_global_scale, resize_to

    missing = [r.relpath for r in records if r.relpath not in raw]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise PipelineError(f"no anomaly map for {len(missing)} image(s): {shown}")
    images: dict[str, np.ndarray] = {}
    for record in records:
        try:
            images[record.relpath] = read_image(record.path)
        except ImageReadError as error:
            raise PipelineError(str(error)) from error
    keys = [r.relpath for r in records]
    resized = []
    for key in keys:
        array = np.asarray(raw[key], dtype=np.float32)
        if array.ndim != 2:
            raise PipelineError(f"{key}: anomaly map must be 2-D, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise PipelineError(f"{key}: anomaly map holds NaN or infinite values")
        resized.append(resize_to(array, images[key].shape[:2]))
    return MapSet(keys, images, dict(zip(keys, normalize_global(resized))), on_global_scale(normal_peaks, resized))


def binarize_maps(
    maps: MapSet, config: MEBinConfig, binarizer: str = "mebin", thresholds: Mapping[str, int] | None = None
) -> dict[str, MEBinResult]:
    """Masks, thresholds and anomaly counts of every map: MEBin over the set, or Otsu per map.

    thresholds: image key -> threshold set by an engineer; it replaces the chosen one for that
    image (mask = erode(map > t)), the evidence stays.
    """
    from core.regions.mebin import at_threshold, binarize, binarize_otsu

    arrays = [maps.normalized[key] for key in maps.keys]
    if binarizer == "mebin":
        results = binarize(arrays, sample_rate=config.sample_rate, min_interval_len=config.min_interval_len,
                           erode=config.erode, kernel_size=config.kernel_size)
    elif binarizer == "otsu":
        results = binarize_otsu(arrays, kernel_size=config.kernel_size)
    else:
        raise PipelineError(f"unknown binarizer {binarizer!r} (mebin or otsu)")
    binarization = dict(zip(maps.keys, results))
    for key, threshold in (thresholds or {}).items():
        if key in binarization:
            binarization[key] = at_threshold(binarization[key], maps.normalized[key], int(threshold), config)
    return binarization


def cut_regions(
    maps: MapSet,
    binarization: Mapping[str, MEBinResult],
    config: RegionConfig,
    progress: Callable[[float], None] | None = None,
    exact: Sequence[str] = (),
    references: ReferenceImages | None = None,
    floor: float | None = None,
) -> list[Region]:
    """Anomaly-centred crops of every image from its mask; progress(fraction done): the cut, then
    the masks redrawn against the references (CUT_SHARE of the cut's time when they are, as measured).

    exact: images whose threshold an engineer set; per-component extraction cuts them exactly
    there (no lower cut, no refinement), so "nothing above t" stays nothing. references: the
    normal images (core.regions.refine.ReferenceImages) the components masks are redrawn against; None keeps the map's.
    floor: the components cut's floor when already known (core.regions.crops.set_floor computes it otherwise).
    """
    from core.regions.crops import extract_regions

    if config.extraction != "components":
        floor = 0.0
    elif floor is None:
        floor = set_floor([maps.normalized[k] for k in maps.keys], maps.normal_peaks, config)
    # Per-component extraction in an image where MEBin found no stable threshold cuts at the set's
    # median threshold, so noise in a defect-free image does not become regions.
    found = [int(b.threshold) for b in binarization.values() if b.threshold < 255]
    fallback = int(np.median(found)) if found else 255
    cut_share = CUT_SHARE if references is not None and redraws(config, len(references)) else 1.0
    regions: list[Region] = []
    for index, key in enumerate(maps.keys):
        result = binarization[key]
        threshold = result.threshold if result.threshold < 255 else fallback
        regions += extract_regions(key, maps.images[key], result.normalized, result.mask, result.num_anomalies,
                                   replace(config, low_fraction=1.0, mask_fraction=0.0, fallback="whole") if key in exact
                                   else config,
                                   map_u8=maps.normalized[key], threshold=threshold, floor=floor)
        if progress is not None:
            progress(cut_share * (index + 1) / len(maps.keys))
    if config.extraction == "components":
        redraw = None if progress is None else (lambda done, total: progress(cut_share + (1 - cut_share) * done / total))
        regions, _ = refine_regions(regions, maps.images, references, config, exact, progress=redraw)
    return regions


# ------------------------------------------------------------------------------ regions


@dataclass
class FoundRegions:
    """What MEBin and the cut found: masks per map, the floor, the normal references, the regions."""

    binarization: dict[str, MEBinResult]
    floor: float
    references: ReferenceImages | None
    regions: list[Region]
    problems: list[str] = field(default_factory=list)

    @property
    def with_anomalies(self) -> int:
        return sum(1 for b in self.binarization.values() if b.num_anomalies > 0)


def _check_found(maps: MapSet, binarization: Mapping[str, MEBinResult], config: DiscoveryConfig) -> None:
    # Per-component extraction still finds the peaks of maps MEBin cannot calibrate (e.g. all
    # maxima equal); only flat maps leave it nothing.
    found = sum(1 for b in binarization.values() if b.num_anomalies > 0)
    flat = not any(int(m.max()) > 0 for m in maps.normalized.values())
    if found == 0 and (config.regions.extraction == "reference" or flat):
        raise PipelineError(
            f"no anomalies found: {config.binarizer} found no anomalous region in any of the {len(maps.keys)} "
            "maps (flat or all-alike maps); check the anomaly maps or give the detector normal reference images"
        )


def find_regions(maps: MapSet, normal: Sequence[ImageRecord], config: DiscoveryConfig, stages: Stages, *,
                 thresholds: Mapping[str, int] | None = None, require_anomalies: bool = True) -> FoundRegions:
    """MEBin on the maps (stage "mebin"), then the regions (stage "regions"): the floor, the normal
    references the masks are redrawn against, the cut. thresholds: an engineer's, per image (binarize_maps).
    require_anomalies: raise PipelineError when no map holds anything (a discovery run cannot go on)."""
    with stages("mebin") as stage:
        binarization = binarize_maps(maps, config.mebin, config.binarizer, thresholds)
        if require_anomalies:
            _check_found(maps, binarization, config)
        found = sum(1 for b in binarization.values() if b.num_anomalies > 0)
        stage.summary = f"{found} of {len(maps.keys)} images with anomalies"
    # the rest of the bar by the components MEBin found (about the regions the cut will make)
    stages.plan(_seconds(config, len(maps.keys), len(normal), sum(b.num_anomalies for b in binarization.values())))
    with stages("regions") as stage:
        references = references_for([r.path for r in normal], config.regions)
        floor = set_floor([maps.normalized[k] for k in maps.keys], maps.normal_peaks, config.regions)
        regions = cut_regions(maps, binarization, config.regions, exact=list(thresholds or {}),
                              references=references, floor=floor, progress=stage.report)
        redrawn = f", masks redrawn against {len(references)} normal references" if references else ""
        stage.summary = f"{len(regions)} regions{redrawn}"
    return FoundRegions(binarization, floor, references, regions, list(references.problems) if references else [])
