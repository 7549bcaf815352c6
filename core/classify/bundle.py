"""A model bundle: everything needed to place a new region in a finished run's named classes.

One folder, written once (never overwritten) and loadable on another machine:

- `bundle.json`: format and version, code version, the run's settings (core.config vocabulary), where
  its maps came from (the built-in detector's settings, or imported maps), the image shapes it saw,
  the named classes, the descriptor layout and the open-set classifier's calibration;
- `training.npz`: the raw descriptors of the run's regions, their class and region keys;
- `references/`: the normal reference images the detector learned (copied);
- `detector/`: the learned detector's fitted state from the run's detection cache, when there is one;
- `labeled/<class>/`: the named classes' crops and masks (the labeled set of a next discovery round);
- `model.pt`: the run's MGViT, when the run trained one (kept with the bundle; the classifier works
  on the descriptors).

A later relabel writes a new bundle; the old one stays.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core.classify.openset import SHRINK, SUBSPACE, OpenSetClassifier, fit_open_set
from core.config import DiscoveryConfig
from core.decisions import decide
from core.errors import UserError
from core.settings import to_settings

__all__ = ["BUNDLE_FILE", "FORMAT", "FORMAT_VERSION", "Bundle", "BundleError", "BundleSource", "image_shape",
           "load_bundle", "relabel_bundle", "write_bundle"]

FORMAT = "defect-discovery-studio model bundle"
FORMAT_VERSION = 3
#: Versions this code reads: 1 (open-set rule "neighbors", before the Gaussian classes), 2 (rule "gaussian",
#: before the subspace rule) and 3. Each keeps the rule it was calibrated with.
READABLE_VERSIONS = (1, 2, 3)
BUNDLE_FILE = "bundle.json"
TRAINING_FILE = "training.npz"
#: settings that name files of the machine that ran; a bundle carries what it needs instead
_LOCAL_PATHS = ("weights", "ground_truth", "detector_weights")


class BundleError(UserError):
    """A folder that is not a bundle, or one this code cannot read; the message names the file."""


def image_shape(path: Path) -> tuple[int, int, int]:
    """(height, width, channels) of an image file as stored, read from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.height, image.width, len(image.getbands())
    except (OSError, UnidentifiedImageError) as error:
        raise UserError(f"{path}: cannot be read as an image ({error})") from error


@dataclass
class BundleSource:
    """What a bundle is made of: a run's regions, their final class names and the run's context."""

    regions: Sequence  # core.records.Region
    classes: Sequence[str]  # final class name of every region (after names, merges, moves, marked normal)
    images: Mapping[str, Path]  # image key -> file, for the descriptors' image statistics
    config: DiscoveryConfig
    references: Sequence[Path] = ()  # normal reference images the detector learned
    maps_imported: bool = False  # the run's maps came from another detector (classify then needs --maps)
    run: str = ""  # where the run lives (a folder, a run id), for the record
    detection_cache: Path | None = None  # the run's detection cache (the learned detector's fitted state)
    model_file: Path | None = None  # the run's MGViT checkpoint, when it trained one
    normal_class: str = ""  # the class name meaning "normal / false detection"


@dataclass
class Bundle:
    """A loaded bundle."""

    folder: Path
    info: dict
    config: DiscoveryConfig
    classes: list[str]
    descriptors: object  # core.grouping.descriptors.Descriptors of the run's regions
    classifier: OpenSetClassifier
    references: list[Path] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # region keys of the training rows

    @property
    def maps_imported(self) -> bool:
        return bool(self.info["maps"]["imported"])

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        return [tuple(s) for s in self.info["images"]["shapes"]]

    @property
    def labeled(self) -> Path:
        return self.folder / "labeled"

    def describe_threshold(self) -> str:
        return self.classifier.describe(self.info["regions"])


class _Images(Mapping):
    """Images read on demand, the last one kept (regions come image by image)."""

    def __init__(self, paths: Mapping[str, Path]) -> None:
        self.paths, self.last = paths, (None, None)

    def __getitem__(self, key: str) -> np.ndarray:
        from core.imageio import read_image

        if self.last[0] != key:
            self.last = (key, read_image(self.paths[key]))
        return self.last[1]

    def __iter__(self) -> Iterable[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


def _code_version() -> str:
    import core

    return core.__version__


def _info(source: BundleSource, descriptors, shapes: list) -> dict:
    """bundle.json without what _finish adds (classes, classifier, created)."""
    settings = {k: (None if k in _LOCAL_PATHS else v) for k, v in to_settings(source.config).items()}
    detector = {k: (None if k == "weights" else v) for k, v in source.config.detector.as_dict().items()}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "code_version": _code_version(), "run": source.run,
        "settings": settings, "maps": {"imported": source.maps_imported, "detector": detector},
        "images": {"shapes": sorted({tuple(s) for s in shapes})},
        "descriptors": {"names": descriptors.names,
                        "groups": {k: [v.start, v.stop] for k, v in descriptors.groups.items()}},
        "representation": {"classified_on": "descriptors", "run": source.config.representation,
                           "model": "model.pt" if source.model_file is not None else None},
    }


def _copy_extras(source: BundleSource, folder: Path) -> list[str]:
    """References, the detector's fitted state, every region's crop and the MGViT into the bundle folder."""
    from core.imageio import write_image

    references = []
    for index, path in enumerate(source.references):
        name = f"{index:05d}_{Path(path).name}"
        (folder / "references").mkdir(exist_ok=True)
        shutil.copy2(path, folder / "references" / name)
        references.append(name)
    if source.detection_cache is not None and Path(source.detection_cache).is_dir():
        for fitted in Path(source.detection_cache).glob("*/learned-model.pt"):
            target = folder / "detector" / fitted.parent.name / fitted.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(fitted, target)
    for region in source.regions:
        write_image(folder / "regions" / f"{_stem(region.key)}.png", region.image_crop)
        write_image(folder / "regions" / f"{_stem(region.key)}_mask.png", region.mask_crop)
    if source.model_file is not None and Path(source.model_file).is_file():
        shutil.copy2(source.model_file, folder / "model.pt")
    return references


def _stem(key: str) -> str:
    return key.replace("/", "__").replace("#", "_")


def _folder_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


def _finish(folder: Path, scratch: Path, info: dict, values: np.ndarray, keys: Sequence[str],
            names: Sequence[str], normal_class: str) -> Path:
    """Fit the classifier on the final class names, lay out labeled/<class>/ from regions/, write the
    training rows and bundle.json, and move the scratch folder to `folder` (all or nothing)."""
    from core.grouping.descriptors import Descriptors, combine

    try:
        classes = sorted(set(names))
        labels = np.array([classes.index(c) for c in names], np.int64)
        groups = {k: slice(*v) for k, v in info["descriptors"]["groups"].items()}
        descriptors = Descriptors(np.asarray(values, np.float32), groups, list(info["descriptors"]["names"]))
        config = decide({k: v for k, v in info["settings"].items() if v is not None}).config
        classifier = fit_open_set(combine(descriptors, config.descriptors), labels, classes)
        for key, name in zip(keys, names):
            if name == normal_class:
                continue
            target = scratch / "labeled" / _folder_name(name)
            target.mkdir(parents=True, exist_ok=True)
            for suffix in (".png", "_mask.png"):
                shutil.copy2(scratch / "regions" / f"{_stem(key)}{suffix}", target / f"{_stem(key)}{suffix}")
        info.update(classes=classes, normal_class=normal_class, regions=len(keys), classifier=classifier.state(),
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        np.savez_compressed(scratch / TRAINING_FILE, values=descriptors.values, labels=labels,
                            keys=np.array(list(keys)))
        (scratch / BUNDLE_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
        scratch.rename(folder)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return folder


def _scratch(folder: Path) -> Path:
    if folder.exists():
        raise BundleError(f"{folder}: already exists; a bundle is written once (relabelled runs get a new one)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))


def write_bundle(folder: Path, source: BundleSource) -> Path:
    """Write the bundle of `source` into `folder` (which must not exist: bundles are never overwritten).

    Regions standing in for an image where nothing was found (Region.weak) are left out: they are no
    class's example. Raises BundleError when the folder exists or the run found no anomaly.
    """
    from core.grouping.descriptors import describe_regions

    folder = Path(folder)
    found = [i for i, r in enumerate(source.regions) if not r.weak]  # weak regions stand for "nothing found"
    if not found:
        raise BundleError(f"{source.run}: the run found no anomaly to make a model of")
    source = replace(source, regions=[source.regions[i] for i in found], classes=[source.classes[i] for i in found])
    descriptors = describe_regions(source.regions, _Images(source.images), source.config.descriptors)
    shapes = [image_shape(source.images[key]) for key in sorted({r.image for r in source.regions})]
    scratch = _scratch(folder)
    try:
        info = _info(source, descriptors, shapes)
        info["references"] = _copy_extras(source, scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return _finish(folder, scratch, info, descriptors.values, [r.key for r in source.regions],
                   list(source.classes), source.normal_class)


def relabel_bundle(bundle: Bundle, folder: Path, classes: Mapping[str, str], run: str = "") -> Path:
    """A new bundle in `folder` from `bundle` with the engineer's final class of every region (region key ->
    name; regions not named keep theirs); the old bundle stays as it is. Raises BundleError naming an
    unknown region key or an existing folder."""
    keys = [str(k) for k in bundle.keys]
    unknown = sorted(set(classes) - set(keys))
    if unknown:
        raise BundleError(f"{bundle.folder}: no region {unknown[0]!r} in this bundle ({len(unknown)} unknown keys)")
    names = [classes.get(key, bundle.classes[label]) for key, label in zip(keys, bundle.classifier.labels)]
    folder = Path(folder)
    scratch = _scratch(folder)
    try:
        for part in ("references", "detector", "regions"):
            if (bundle.folder / part).is_dir():
                shutil.copytree(bundle.folder / part, scratch / part)
        if (bundle.folder / "model.pt").is_file():
            shutil.copy2(bundle.folder / "model.pt", scratch / "model.pt")
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    info = dict(bundle.info, run=run or bundle.info.get("run"), relabelled_from=str(bundle.folder),
                format_version=FORMAT_VERSION, code_version=_code_version())
    return _finish(folder, scratch, info, bundle.descriptors.values, keys, names, bundle.info["normal_class"])


def _bundle_file(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: does not exist")
    if path.is_file():
        return path
    for candidate in (path / BUNDLE_FILE, path / "bundle" / BUNDLE_FILE):
        if candidate.is_file():
            return candidate
    raise BundleError(f"{path}: not a model bundle (no {BUNDLE_FILE}) nor a run folder with one "
                      f"(bundle/{BUNDLE_FILE}); discover writes one at the end of every run")


def load_bundle(path: Path) -> Bundle:
    """The bundle in `path`: a bundle folder, its bundle.json, or a run folder holding bundle/.

    Raises BundleError naming the file when it is not a bundle or one of another format version.
    """
    from core.grouping.descriptors import Descriptors, combine

    file = _bundle_file(path)
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise BundleError(f"{file}: not a model bundle (not readable JSON: {error})") from error
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise BundleError(f"{file}: not a model bundle (its 'format' is not {FORMAT!r})")
    if info.get("format_version") not in READABLE_VERSIONS:
        raise BundleError(f"{file}: bundle format version {info.get('format_version')!r}; this Studio "
                          f"(code {_code_version()}) reads versions {', '.join(map(str, READABLE_VERSIONS))}; make "
                          "the bundle again from its run")
    folder = file.parent
    try:
        with np.load(folder / TRAINING_FILE, allow_pickle=False) as data:
            values, labels = data["values"].astype(np.float32), data["labels"].astype(np.int64)
            keys = [str(k) for k in data["keys"]]
        settings = {k: v for k, v in info["settings"].items() if v is not None}
        config = decide(settings).config
        recorded = (info.get("maps") or {}).get("detector")
        if isinstance(recorded, dict):  # the detector as the run ran it, whatever today's defaults
            config = replace(config, detector=config.detector.with_recorded(recorded))
        groups = {k: slice(*v) for k, v in info["descriptors"]["groups"].items()}
        descriptors = Descriptors(values, groups, list(info["descriptors"]["names"]))
        state, classes = info["classifier"], list(info["classes"])
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{folder / TRAINING_FILE}: bundle incomplete or damaged ({error})") from error
    try:
        classifier = OpenSetClassifier(combine(descriptors, config.descriptors).astype(np.float64), labels, classes,
                                       np.asarray(state["unit"], np.float64), float(state["threshold"]),
                                       int(state["neighbors"]), float(state["quantile"]),
                                       str(state.get("rule", "neighbors")), float(state.get("shrink", SHRINK)),
                                       float(state.get("scale", 1.0)), float(state.get("subspace", SUBSPACE)))
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{file}: the bundle's classifier cannot be read ({error})") from error
    references = [folder / "references" / name for name in info.get("references", [])]
    missing = [p for p in references if not p.is_file()]
    if missing:
        raise BundleError(f"{missing[0]}: normal reference of the bundle is missing")
    return Bundle(folder, info, config, classes, descriptors, classifier, references, keys)
