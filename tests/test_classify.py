"""Classifying new images with a run's bundle: the open-set rule, the bundle's round trip, the CLI and bad input."""

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.classify import (NO_ANOMALY, BundleError, classify_images, fit_open_set, load_bundle, load_images,
                           relabel_bundle)
from core.classify.from_run import write_run_bundle
from core.config import DiscoveryConfig, PredictConfig
from core.dataset import load_dataset
from core.demo.build import generate_demo, maps_from_ground_truth
from core.errors import UserError
from core.imageio import read_image, write_image

ROOT = Path(__file__).resolve().parents[1]


def _write_maps(manifest, folder: Path) -> Path:
    for relpath, array in maps_from_ground_truth(manifest.unlabeled).items():
        path = folder / Path(relpath).with_suffix(".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run on a tiny demo (ground-truth masks as maps) with its bundle, and a new draw to classify."""
    from core.pipeline import run_discovery

    base = tmp_path_factory.mktemp("classify")
    settings = dict(image_size=96, n_train_good=4, n_test_good=2, n_per_class=4,
                    defect_types=("scratch", "hole", "stain"))
    first = load_dataset(generate_demo(base / "first", seed=0, **settings))
    new = generate_demo(base / "new", seed=1, **settings) / "test"
    config = DiscoveryConfig(classes=3, device="cpu", predict=PredictConfig(umap_min_points=10 ** 9))
    result = run_discovery(first, config, maps=maps_from_ground_truth(first.unlabeled))
    write_run_bundle(base / "run", result, config, first, maps_imported=True)
    maps = _write_maps(load_dataset(new), base / "new_maps")
    return base, base / "run", new, maps


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _classify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", "classify", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


# ------------------------------------------------------------------------------ the open-set rule


@pytest.mark.parametrize("rule", ["subspace", "gaussian", "neighbors"])
def test_open_set_flags_a_held_out_type_and_keeps_the_named_ones(rule):
    rng = np.random.default_rng(0)
    centres = np.array([[0.0] * 6, [6.0] + [0.0] * 5, [0.0, 6.0] + [0.0] * 4])
    train = np.concatenate([c + rng.normal(size=(40, 6)) for c in centres])
    labels = np.repeat(np.arange(3), 40)
    model = fit_open_set(train, labels, ["a", "b", "c"], rule=rule)
    known = np.concatenate([c + rng.normal(size=(30, 6)) for c in centres])
    held_out = np.array([0.0, 0.0, 6.0, 0.0, 0.0, 0.0]) + rng.normal(size=(30, 6))  # a fourth type, never named
    on_known, on_held_out = model.predict(known), model.predict(held_out)
    assert (on_known.classes == np.repeat(np.arange(3), 30)).mean() > 0.95
    assert on_known.unknown.mean() < 0.2 and on_held_out.unknown.mean() > 0.8
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score([0] * 90 + [1] * 30, np.concatenate([on_known.novelty, on_held_out.novelty])) > 0.95
    assert np.allclose(on_known.probabilities.sum(axis=1), 1.0)
    # confidence says how sure, not always 1: a region halfway between two classes is a toss-up
    halfway = model.predict((centres[0] + centres[1])[None] / 2)
    assert 0.3 < halfway.confidence[0] < 0.7 and on_known.confidence.mean() > 0.9
    # calibrated on the run's own regions: about `quantile` of them (each scored unseen) stay under the threshold
    assert abs((model.own_novelty() <= model.threshold).mean() - model.quantile) < 0.03


def test_gaussian_classes_flag_a_type_off_the_directions_a_named_class_varies_in():
    # Two named classes of 60 regions in 20 dimensions, each spread widely in 5 of them and tight in the
    # others; a new type sits off the first class in a tight direction. Neighbour distances are dominated by
    # the wide spreads; the class's Gaussian measures each direction in the class's own spread.
    rng = np.random.default_rng(0)

    def regions(count, centre):
        x = rng.normal(0, 0.1, (count, 20))
        x[:, :5] = rng.normal(0, 2.0, (count, 5))
        return x + centre

    second = np.zeros(20)
    second[10] = 8.0
    features, labels = np.concatenate([regions(60, 0.0), regions(60, second)]), np.repeat([0, 1], 60)
    known, new_type = regions(50, 0.0), regions(50, np.eye(20)[15] * 2.5)
    from sklearn.metrics import roc_auc_score

    def flags(rule):
        result = fit_open_set(features, labels, ["a", "b"], rule=rule).predict(np.concatenate([known, new_type]))
        return roc_auc_score([0] * 50 + [1] * 50, result.novelty), result.unknown[50:].mean(), result.unknown[:50].mean()

    for rule in ("subspace", "gaussian"):
        auroc, new_unknown, known_unknown = flags(rule)
        assert auroc > 0.99 and new_unknown > 0.9 and known_unknown < 0.1, rule
    assert flags("neighbors")[0] < 0.95
    with pytest.raises(ValueError, match="rule"):
        fit_open_set(features, labels, ["a", "b"], rule="nearest")


def test_a_broad_class_does_not_draw_the_regions_of_a_tight_one():
    # A run names each class from a dozen regions in many dimensions: a tight class (spread 0.5) and a broad,
    # mixed one (spread 2) three units away in three dimensions. A class's covariance is known only in the few
    # directions its regions span; shrunk toward its own average variance (the "gaussian" rule), the broad class
    # is near everything elsewhere and takes the tight class's new regions. The subspace rule gives every class
    # one floor and chooses the class where the run's regions vary.
    rng = np.random.default_rng(0)
    centre = np.zeros(60)
    centre[:3] = 3.0
    features = np.concatenate([rng.normal(0, 0.5, (12, 60)), centre + rng.normal(0, 2.0, (12, 60))])
    labels = np.repeat([0, 1], 12)
    tight, broad = rng.normal(0, 0.5, (50, 60)), centre + rng.normal(0, 2.0, (50, 60))

    def right(rule):
        model = fit_open_set(features, labels, ["tight", "broad"], rule=rule)
        return (model.predict(tight).classes == 0).mean(), (model.predict(broad).classes == 1).mean()

    assert min(right("subspace")) > 0.9
    assert right("gaussian")[0] < 0.2 and right("neighbors")[0] < 0.2
    with pytest.raises(ValueError, match="subspace"):
        fit_open_set(features, labels, ["tight", "broad"], subspace=0.0)


def test_open_set_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match="index"):
        fit_open_set(np.zeros((3, 2)), [0, 1, 2], ["a", "b"])


# ------------------------------------------------------------------------------ bundle


def test_bundle_round_trip_in_a_fresh_process_and_workspace(run, tmp_path):
    base, folder, new, maps = run
    bundle = load_bundle(folder)
    here = classify_images(bundle, load_images(new, bundle), maps_folder=maps)
    moved = tmp_path / "elsewhere" / "model"  # another machine: only the bundle folder travels
    shutil.copytree(folder / "bundle", moved)
    done = _classify("--model", str(moved), "--images", str(new), "--maps", str(maps), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    rows = _rows(tmp_path / "out" / "regions.csv")
    assert [r["region"] for r in rows] == [c.region.key for c in here.regions]
    assert [r["nearest_class"] for r in rows] == [c.name for c in here.regions]
    assert [int(r["unknown"]) for r in rows] == [int(c.unknown) for c in here.regions]
    assert np.allclose([float(r["confidence"]) for r in rows], [c.confidence for c in here.regions], atol=1e-6)
    images = _rows(tmp_path / "out" / "images.csv")
    assert [r["image"] for r in images] == [str(new / i.image) for i in here.images]  # the path as given
    assert [r["class"] for r in images] == [i.name for i in here.images]
    summary = json.loads((tmp_path / "out" / "classification.json").read_text())
    assert "unknown when" in summary["open_set"] and summary["threshold"] == bundle.info["classifier"]["threshold"]


def test_a_loaded_bundle_rebuilds_the_space_its_calibration_was_made_in(run):
    bundle = load_bundle(run[1])
    refitted = fit_open_set(bundle.classifier.features, bundle.classifier.labels, bundle.classes)
    assert bundle.classifier.rule == refitted.rule == "subspace"
    assert refitted.threshold == pytest.approx(bundle.classifier.threshold, rel=1e-5)
    assert np.allclose(refitted.unit, bundle.classifier.unit, rtol=1e-5)
    assert len(bundle.keys) == bundle.info["regions"] == len(bundle.classifier.labels)


@pytest.mark.parametrize("version, rule, recorded", [(1, "neighbors", ("rule", "shrink", "scale", "subspace")),
                                                     (2, "gaussian", ("subspace",))])
def test_an_older_bundle_classifies_as_it_was_calibrated(run, tmp_path, version, rule, recorded):
    # Bundles written before the Gaussian classes (format version 1) recorded the neighbours rule's units and
    # threshold, those before the subspace rule (2) the Gaussian rule's: read, they keep their rule, so a saved
    # model never silently changes its answers.
    bundle = load_bundle(run[1])
    old = fit_open_set(bundle.classifier.features, bundle.classifier.labels, bundle.classes, rule=rule)
    copy = tmp_path / "bundle"
    shutil.copytree(run[1] / "bundle", copy)
    info = json.loads((copy / "bundle.json").read_text())
    state = {key: value for key, value in old.state().items() if key not in recorded}
    (copy / "bundle.json").write_text(json.dumps({**info, "format_version": version, "classifier": state}))
    loaded = load_bundle(copy)
    assert loaded.classifier.rule == rule and loaded.classifier.threshold == pytest.approx(old.threshold)
    assert ("nearest-neighbour" if rule == "neighbors" else "its average variance") in loaded.describe_threshold()
    probe = bundle.classifier.features[:7] + 0.1
    assert np.array_equal(loaded.classifier.predict(probe).classes, old.predict(probe).classes)
    assert np.allclose(loaded.classifier.predict(probe).novelty, old.predict(probe).novelty)
    assert np.allclose(loaded.classifier.predict(probe).confidence, old.predict(probe).confidence)


def test_a_bundle_rebuilds_the_detector_it_recorded_not_todays_defaults(run, tmp_path):
    # A bundle refits its detector on its references when it classifies: it must be the detector the run used,
    # even after a default changes (PatchCore's candidate draw did), or a saved model would change its answers.
    assert load_bundle(run[1]).config.detector.as_dict() == json.loads(
        (run[1] / "bundle" / "bundle.json").read_text())["maps"]["detector"]
    copy = tmp_path / "bundle"
    shutil.copytree(run[1] / "bundle", copy)
    info = json.loads((copy / "bundle.json").read_text())
    info["maps"]["detector"].update(coreset_candidates=12_345, from_a_later_version=1)
    (copy / "bundle.json").write_text(json.dumps(info))
    detector = load_bundle(copy).config.detector
    assert detector.coreset_candidates == 12_345 and detector.seed == info["maps"]["detector"]["seed"]
    info["maps"]["detector"]["coreset_candidates"] = 1  # fewer than the bank it keeps: not a detector
    (copy / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(BundleError, match="coreset"):
        load_bundle(copy)


def test_relabel_makes_a_new_bundle_and_leaves_the_old_one(run, tmp_path):
    folder = run[1] / "bundle"
    before = _digest(folder)
    bundle = load_bundle(folder)
    last = len(bundle.classes) - 1  # every other cluster merged into one named "pin-hole", the last "short"
    named = {key: ("short" if label == last else "pin-hole")
             for key, label in zip(bundle.keys, bundle.classifier.labels)}
    relabelled = load_bundle(relabel_bundle(bundle, tmp_path / "v2", named))
    assert relabelled.classes == ["pin-hole", "short"]
    assert list(relabelled.classifier.labels) == [int(label == last) for label in bundle.classifier.labels]
    assert relabelled.info["relabelled_from"] == str(folder)
    assert sorted(p.name for p in (tmp_path / "v2" / "labeled").iterdir()) == ["pin-hole", "short"]
    assert _digest(folder) == before
    with pytest.raises(BundleError, match="already exists"):
        relabel_bundle(bundle, tmp_path / "v2", named)
    with pytest.raises(BundleError, match="no region"):
        relabel_bundle(bundle, tmp_path / "v3", {"nope.png#0": "x"})
    assert not (tmp_path / "v3").exists()


@pytest.mark.parametrize("damage", ["missing", "not json", "other format", "old version", "no training rows"])
def test_a_folder_that_is_not_a_bundle_is_named(run, tmp_path, damage):
    copy = tmp_path / "bundle"
    shutil.copytree(run[1] / "bundle", copy)
    info = copy / "bundle.json"
    if damage == "missing":
        info.unlink()
        expected = str(copy)
    elif damage == "not json":
        info.write_text("{ not json")
        expected = str(info)
    elif damage == "other format":
        info.write_text(json.dumps({"format": "something else"}))
        expected = str(info)
    elif damage == "old version":
        info.write_text(json.dumps({**json.loads(info.read_text()), "format_version": 0}))
        expected = str(info)
    else:
        (copy / "training.npz").unlink()
        expected = str(copy / "training.npz")
    with pytest.raises(BundleError) as caught:
        load_bundle(copy)
    assert expected in str(caught.value)


# ------------------------------------------------------------------------------ bad images, the CLI


def _one_image_set(tmp_path: Path, new: Path, change) -> tuple[Path, Path]:
    folder = tmp_path / "images"
    source = sorted(new.rglob("*.png"))[0]
    for path in sorted(new.rglob("*.png"))[:3]:
        (folder / path.relative_to(new)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, folder / path.relative_to(new))
    bad = folder / source.relative_to(new)
    change(bad, read_image(bad))
    return folder, bad


@pytest.mark.parametrize("change,problem", [
    (lambda path, image: write_image(path, np.concatenate([image, image], axis=1)), "pixels"),
    (lambda path, image: write_image(path, image[..., 0]), "channel"),
])
def test_images_of_another_size_or_channel_count_are_named(run, tmp_path, change, problem):
    base, folder, new, maps = run
    images, bad = _one_image_set(tmp_path, new, change)
    before = _digest(folder)
    with pytest.raises(UserError, match=problem) as caught:
        load_images(images, load_bundle(folder))
    assert str(bad) in str(caught.value)
    done = _classify("--model", str(folder), "--images", str(images), "--maps", str(maps), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and str(bad) in done.stderr
    assert not (tmp_path / "o").exists() and _digest(folder) == before


def test_an_empty_folder_and_a_non_bundle_are_named_by_the_cli(run, tmp_path):
    base, folder, new, maps = run
    (tmp_path / "empty").mkdir()
    done = _classify("--model", str(folder), "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and str(tmp_path / "empty") in done.stderr and "no usable images" in done.stderr
    done = _classify("--model", str(new), "--images", str(new), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "not a model bundle" in done.stderr and str(new) in done.stderr
    assert not (tmp_path / "o").exists()


def test_the_cli_writes_classes_unknowns_and_the_next_round(run, tmp_path):
    base, folder, new, maps = run
    out = tmp_path / "out"
    done = _classify("--model", str(folder), "--images", str(new), "--maps", str(maps), "--out", str(out))
    assert done.returncode == 0, done.stderr
    bundle = load_bundle(folder)
    images, regions = _rows(out / "images.csv"), _rows(out / "regions.csv")
    assert list(images[0])[:4] == ["image", "class", "confidence", "unknown"]
    assert list(regions[0])[:10] == ["image", "region", "x0", "y0", "x1", "y1", "area", "class", "confidence",
                                     "unknown"]
    assert len(images) == len(load_dataset(new).unlabeled)
    for row in regions:
        assert row["class"] == ("unknown" if row["unknown"] == "1" else row["nearest_class"])
        assert row["nearest_class"] in [*bundle.classes, NO_ANOMALY] and 0.0 <= float(row["confidence"]) <= 1.0
    flagged = {r["image"] for r in regions if r["unknown"] == "1"}
    linked = {str(new / p.relative_to(out / "unknown")) for p in (out / "unknown").rglob("*.png")
              if "normal" not in p.relative_to(out / "unknown").parts}
    assert linked == flagged
    assert (out / "crops").is_dir() and "unknown when" in done.stdout
    done = _classify("--model", str(folder), "--images", str(new), "--maps", str(maps), "--out", str(out))
    assert done.returncode == 2 and str(out) in done.stderr  # never overwrites a classification


def test_a_second_run_in_the_same_folder_keeps_the_first_bundle(run, tmp_path):
    from core.pipeline import run_discovery

    base = run[0]
    first = load_dataset(base / "first")
    config = DiscoveryConfig(classes=2, device="cpu", predict=PredictConfig(umap_min_points=10 ** 9))
    folder = tmp_path / "run"
    shutil.copytree(run[1] / "bundle", folder / "bundle")
    before = _digest(folder / "bundle")
    result = run_discovery(first, config, maps=maps_from_ground_truth(first.unlabeled))
    assert write_run_bundle(folder, result, config, first, maps_imported=True) == folder / "bundle"
    (kept,) = [p for p in folder.iterdir() if p.name.startswith("bundle-")]
    assert _digest(kept) == before
    assert len(load_bundle(folder).classes) == len(set(result.cluster_names[r.cluster] for r in result.regions
                                                       if not r.region.weak))
