"""The synthetic demo data set: layout, determinism, ground truth, realism checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score, roc_auc_score
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.cli import main as cli_main
from core.dataset import load_dataset
from core.demo.build import (
    DEFECT_TYPES,
    README_MARKER,
    DemoConfig,
    generate_demo,
    gt_masks_to_maps,
    render_sample,
    two_defect_indices,
)
from core.imageio import read_gray, read_image

TINY = dict(image_size=64, n_train_good=4, n_test_good=2, n_per_class=3, two_defect_share=0.34)


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo") / "set", **TINY)


def test_layout_and_counts(tiny: Path) -> None:
    assert sorted(p.name for p in (tiny / "test").iterdir()) == sorted((*DEFECT_TYPES, "good"))
    assert len(list((tiny / "train" / "good").glob("*.png"))) == 4
    assert len(list((tiny / "test" / "good").glob("*.png"))) == 2
    assert not (tiny / "ground_truth" / "good").exists()
    for kind in DEFECT_TYPES:
        images = sorted((tiny / "test" / kind).glob("*.png"))
        assert [p.stem for p in images] == ["000", "001", "002"]
        for image in images:
            assert (tiny / "ground_truth" / kind / f"{image.stem}_mask.png").is_file()
    assert (tiny / "README.txt").read_text(encoding="utf-8").startswith(README_MARKER)


def test_dataset_loader_reads_the_demo(tiny: Path) -> None:
    manifest = load_dataset(tiny)
    assert manifest.layout == "mvtec" and not manifest.problems
    assert len(manifest.normal) == 4
    assert len(manifest.unlabeled) == 2 + 3 * len(DEFECT_TYPES)
    for record in manifest.unlabeled:
        assert (record.gt_mask_path is None) == (record.gt_class == "good")
        assert record.size == (64, 64)


def test_images_and_masks_have_the_right_size_and_values(tiny: Path) -> None:
    for path in sorted((tiny / "test").rglob("*.png")):
        image = read_image(path)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert 40 < image.mean() < 200  # neither black nor blown out
    for path in sorted((tiny / "ground_truth").rglob("*.png")):
        mask = read_gray(path)
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        assert 0 < (mask > 0).mean() < 0.1  # present and local


def test_same_seed_gives_byte_identical_files(tmp_path: Path, tiny: Path) -> None:
    again = generate_demo(tmp_path / "again", **TINY)
    assert _digests(again) == _digests(tiny)
    other = generate_demo(tmp_path / "other", **{**TINY, "seed": 1})
    differing = [k for k, v in _digests(other).items() if k != "README.txt" and _digests(tiny)[k] != v]
    assert len(differing) == len(_digests(tiny)) - 1


def test_images_do_not_depend_on_how_many_are_made() -> None:
    small = DemoConfig(image_size=64, n_per_class=3, two_defect_share=0.0)
    large = DemoConfig(image_size=64, n_per_class=30, two_defect_share=0.0)
    assert np.array_equal(render_sample("hole", 2, small).image, render_sample("hole", 2, large).image)


def test_second_defects_add_to_the_first() -> None:
    config = DemoConfig(image_size=96, n_per_class=14)
    chosen = two_defect_indices(config, "crack")
    assert len(chosen) == round(0.15 * 14) and all(0 <= i < 14 for i in chosen)
    for kind in DEFECT_TYPES:
        one = render_sample(kind, 5, config, n_defects=1).mask > 0
        two = render_sample(kind, 5, config, n_defects=2).mask > 0
        assert np.all(two[one]) and two.sum() > one.sum()
    index = min(chosen)
    assert render_sample("crack", index, config).n_defects == 2


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defects_change_pixels_inside_their_mask(kind: str) -> None:
    config = DemoConfig(image_size=128)
    for index in range(4):
        sample = render_sample(kind, index, config)
        inside = sample.mask > 0
        diff = np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(axis=2)
        changed = diff > 10
        near = cv2.dilate(sample.mask, np.ones((3, 3), np.uint8)) > 0
        assert changed.sum() > 0
        assert (changed & ~near).sum() <= 0.03 * changed.sum(), "the defect changes pixels outside its mask"
        assert diff[inside].mean() > 8, "the defect is invisible inside its mask"


def test_good_images_have_no_mask_and_vary_a_little() -> None:
    config = DemoConfig(image_size=96)
    goods = [render_sample("good", i, config, split="train") for i in range(6)]
    for sample in goods:
        assert not sample.mask.any() and np.array_equal(sample.image, sample.clean)
    means = np.array([g.image.mean() for g in goods])
    assert len({g.image.tobytes() for g in goods}) == 6
    assert means.std() < 8  # same product, same station: brightness varies only slightly
    first = goods[0].image.astype(float)
    assert all(np.abs(g.image.astype(float) - first).mean() < 25 for g in goods[1:])


def _shape_features(mask: np.ndarray) -> list[float]:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    area = max(cv2.contourArea(contour), 1.0)
    width, height = cv2.minAreaRect(contour)[1]
    hull = max(cv2.contourArea(cv2.convexHull(contour)), 1.0)
    perimeter = max(cv2.arcLength(contour, True), 1.0)
    return [np.log(area), np.log((max(width, height) + 1) / (min(width, height) + 1)), area / hull,
            4 * np.pi * area / perimeter**2]


def test_types_are_not_separable_by_colour_but_are_by_shape() -> None:
    config = DemoConfig(image_size=128, n_per_class=16)
    colours, shapes, labels = [], [], []
    for label, kind in enumerate(DEFECT_TYPES):
        for index in range(config.n_per_class):
            sample = render_sample(kind, index, config, with_clean=False)
            colours.append(sample.image[sample.mask > 0].mean(axis=0))
            shapes.append(_shape_features(sample.mask))
            labels.append(label)
    colours, shapes, labels = np.array(colours), np.array(shapes), np.array(labels)
    kmeans = KMeans(len(DEFECT_TYPES), n_init=10, random_state=0)
    clusters = kmeans.fit_predict(StandardScaler().fit_transform(colours))
    assert normalized_mutual_info_score(labels, clusters) < 0.45
    classifier = make_pipeline(StandardScaler(), NearestCentroid())
    colour_accuracy = cross_val_score(classifier, colours, labels, cv=4).mean()
    shape_accuracy = cross_val_score(classifier, shapes, labels, cv=4).mean()
    assert colour_accuracy < 0.55  # chance is 0.2
    assert shape_accuracy > 0.7


def test_gt_masks_to_maps_simulates_a_good_detector() -> None:
    config = DemoConfig(image_size=96)
    kinds = ("good", *DEFECT_TYPES)
    samples = [render_sample(kind, i, config, with_clean=False) for kind in kinds for i in range(2)]
    masks = [s.mask for s in samples]
    maps = gt_masks_to_maps(masks, sigma=2.0, noise=0.02, seed=3)
    assert all(m.dtype == np.float32 and m.shape == (96, 96) and m.min() >= 0 for m in maps)
    again = gt_masks_to_maps(masks, sigma=2.0, noise=0.02, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(maps, again))
    good_peaks = [m.max() for m, s in zip(maps, samples) if s.kind == "good"]
    defect_peaks = [m.max() for m, s in zip(maps, samples) if s.kind != "good"]
    assert max(good_peaks) < 0.15 < min(defect_peaks)
    truth = np.concatenate([m.ravel() > 0 for m in masks])
    pixels = roc_auc_score(truth, np.concatenate([m.ravel() for m in maps]))
    assert pixels > 0.97
    assert gt_masks_to_maps([masks[2] > 0])[0].max() > 0.2  # boolean masks work too
    with pytest.raises(ValueError, match="2-D"):
        gt_masks_to_maps([np.zeros((4, 4, 3), np.uint8)])


def test_bad_settings_and_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        DemoConfig(image_size=8)
    with pytest.raises(ValueError, match="unknown defect types"):
        DemoConfig(defect_types=("scratch", "dent"))
    with pytest.raises(TypeError, match="unknown settings"):
        generate_demo(tmp_path / "x", size=64)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_demo(busy, **TINY)
    with pytest.raises(FileExistsError, match="not a demo"):
        generate_demo(busy, overwrite=True, **TINY)
    assert (busy / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_a_previous_demo(tmp_path: Path) -> None:
    root = generate_demo(tmp_path / "d", **TINY)
    generate_demo(root, overwrite=True, **{**TINY, "n_per_class": 1, "defect_types": ("stain", "crack")})
    assert sorted(p.name for p in (root / "test").iterdir()) == ["crack", "good", "stain"]
    assert len(list((root / "test").rglob("*.png"))) == 2 + 2


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["demo", "--out", str(out), "--size", "64", "--per-class", "2",
            "--train-good", "3", "--test-good", "1"]
    assert cli_main(args) == 0
    assert "wrote the demo data set" in capsys.readouterr().out
    assert len(list((out / "test").rglob("*.png"))) == 1 + 2 * len(DEFECT_TYPES)
    assert cli_main(args) == 2  # refuses to write into the same folder again
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main([*args, "--overwrite", "--seed", "4"]) == 0
    assert cli_main(["demo", "--out", str(tmp_path / "bad"), "--size", "10"]) == 2
    assert "image_size" in capsys.readouterr().err
