"""The learned detector: fitted to the normal images of a set, deterministic, finds a pasted defect."""

import cv2
import numpy as np
import pytest

from core.commands.detect import detection_aurocs
from core.dataset import load_dataset
from core.detection import DetectionError, DetectorConfig, detect
from core.detection.detector import LEARNED_MODEL
from core.detection.learned import MIN_REFERENCES, LearnedDetector

SMALL = dict(image_size=64, coreset_max=400, learned_candidates=4000, learned_cells_per_image=150, holdout_share=0.0)


def _texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A grainy surface under a lighting ramp, values 0..1."""
    grain = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), 1.2)
    grain = grain / grain.std() * rng.uniform(0.05, 0.09)
    ramp = np.linspace(0, rng.uniform(0.1, 0.3), shape[1], dtype=np.float32)[None, :]
    return 0.5 + ramp + grain


def _write(path, image: np.ndarray, gray: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(image * 255, 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), pixels if gray else np.stack([pixels, pixels * 0.95, pixels * 0.9], -1).astype(np.uint8))


def _textured_set(root, normal: int, good: int = 5, defective: int = 6):
    """MVTec layout: grainy references of mixed sizes (some grey PNGs), tests with a pasted dark pit."""
    rng = np.random.default_rng(0)
    shape = lambda: (int(rng.integers(64, 97)), int(rng.integers(64, 97)))  # noqa: E731
    for index in range(normal):
        _write(root / "train" / "good" / f"{index:03d}.png", _texture(rng, shape()), gray=index % 3 == 0)
    for index in range(good):
        _write(root / "test" / "good" / f"{index:03d}.png", _texture(rng, shape()), gray=index % 2 == 0)
    for index in range(defective):
        image = _texture(rng, shape())
        height, width = image.shape
        y, x = np.mgrid[0:height, 0:width]
        cy, cx = rng.integers(16, height - 16), rng.integers(16, width - 16)
        pit = (y - cy) ** 2 + (x - cx) ** 2 <= 4**2
        image[pit] -= 0.25
        _write(root / "test" / "pit" / f"{index:03d}.png", image, gray=index % 2 == 1)
        _write(root / "ground_truth" / "pit" / f"{index:03d}_mask.png", pit.astype(np.float32), gray=True)
    return load_dataset(root)


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    return _textured_set(tmp_path_factory.mktemp("textured"), MIN_REFERENCES)


def test_learned_separates_a_pasted_defect_on_mixed_sizes_and_grey(cpu, textured, tmp_path):
    detection = detect(textured, DetectorConfig(method="learned", **SMALL), cpu, cache_dir=tmp_path / "cache")
    assert detection.config.method == "learned" and detection.choice.startswith("learned: fitted to 20")
    for record in textured.unlabeled:
        assert detection.maps[record.relpath].shape == cv2.imread(str(record.path), 0).shape
    aurocs = detection_aurocs(textured, detection.maps)
    assert aurocs["image_auroc"] >= 0.9 and aurocs["pixel_auroc"] >= 0.9, aurocs
    # The fitted model and the maps are cached: a second run fits nothing and computes nothing.
    assert any(p.name == LEARNED_MODEL for p in (tmp_path / "cache").rglob("*"))
    again = detect(textured, DetectorConfig(method="learned", **SMALL), cpu, cache_dir=tmp_path / "cache")
    assert not again.computed and all(np.array_equal(again.maps[k], v) for k, v in detection.maps.items())


def test_learned_training_is_deterministic_for_a_seed(cpu, textured):
    import torch
    from core.imageio import read_image

    images = [read_image(r.path) for r in textured.normal]
    config = DetectorConfig(**SMALL)
    stages = []
    fits = [LearnedDetector(config, cpu).fit(lambda i: images[i], len(images), lambda *a: stages.append(a))
            for _ in range(2)]
    assert fits[0].state.keys() == fits[1].state.keys()
    for key in fits[0].state:
        assert torch.equal(fits[0].state[key], fits[1].state[key]), key
    probe = read_image(textured.unlabeled[0].path)
    assert torch.equal(fits[0].score(probe)[0], fits[1].score(probe)[0])
    assert ("learned: features of normal images", len(images), len(images)) in stages
    other = LearnedDetector(DetectorConfig(**{**SMALL, "seed": 1}), cpu).fit(lambda i: images[i], len(images),
                                                                             lambda *a: None)
    assert not torch.equal(other.state["structure"], fits[0].state["structure"])


def test_too_few_references_names_the_minimum_and_auto_falls_back(cpu, tmp_path):
    few = _textured_set(tmp_path / "few", 8, good=1, defective=1)
    with pytest.raises(DetectionError, match=f"at least {MIN_REFERENCES} normal reference images"):
        detect(few, DetectorConfig(method="learned", **SMALL), cpu)
    detection = detect(few, DetectorConfig(**SMALL, backbone="auto"), cpu)
    assert detection.config.method == "patchcore"
    assert f"the learned detector needs at least {MIN_REFERENCES}" in detection.choice


def test_auto_offline_keeps_the_detector_whose_maps_separate_better(cpu, tmp_path, monkeypatch):
    """auto without weights runs the learned detector and PatchCore on the filter bank, keeps the one
    whose held-out normals separate better from the inspected images (the filter bank only when
    AUTO_MARGIN better), says both numbers, and caches both: a second run computes nothing."""
    from core.detection import detector

    monkeypatch.setattr("core.detection.detector.resolve_backbone", lambda config: ("filterbank", "offline"))
    textured = _textured_set(tmp_path / "set", MIN_REFERENCES + 6)
    config = DetectorConfig(**{**SMALL, "holdout_share": 0.2})
    alone = {method: detect(textured, DetectorConfig(**{**SMALL, "holdout_share": 0.2}, method=method,
                                                     backbone="filterbank"), cpu)
             for method in ("learned", "patchcore")}
    learned, bank = (alone[m].separation["auroc"] for m in ("learned", "patchcore"))
    expected = "patchcore" if bank >= learned + detector.AUTO_MARGIN else "learned"
    chosen = detect(textured, config, cpu, cache_dir=tmp_path / "cache")
    assert chosen.config.method == expected
    assert f"learned {learned:.2f}, filter bank {bank:.2f}" in chosen.choice
    assert all(np.array_equal(chosen.maps[k], v) for k, v in alone[expected].maps.items())
    again = detect(textured, config, cpu, cache_dir=tmp_path / "cache")
    assert not again.computed and again.config.method == expected


def test_auto_offline_compares_on_a_sample_then_fits_only_the_chosen_detector(tmp_path, monkeypatch, cpu):
    """Both candidates are fitted to a sample of the references only; the full fit runs once, for the one
    chosen, and the choice line says what the sample was."""
    from core.detection import detector

    monkeypatch.setattr("core.detection.detector.resolve_backbone", lambda config: ("filterbank", "offline"))
    monkeypatch.setattr(detector, "AUTO_SAMPLE_REFERENCES", MIN_REFERENCES)
    monkeypatch.setattr(detector, "AUTO_SAMPLE_IMAGES", 4)
    fits: list[tuple[str, int]] = []
    for name in ("run_learned", "run_patchcore"):
        real = getattr(detector, name)

        def counted(*args, real=real, name=name, **kwargs):
            normal = args[0] if name == "run_learned" else args[1]
            fits.append((name, len(normal)))
            return real(*args, **kwargs)

        monkeypatch.setattr(detector, name, counted)
    textured = _textured_set(tmp_path / "set", MIN_REFERENCES + 10)
    chosen = detect(textured, DetectorConfig(**{**SMALL, "holdout_share": 0.2}), cpu)
    full = len(textured.normal) - len(chosen.held_out)
    assert full > MIN_REFERENCES
    winner = "run_learned" if chosen.config.method == "learned" else "run_patchcore"
    assert sorted(fits) == sorted([("run_learned", MIN_REFERENCES), ("run_patchcore", MIN_REFERENCES), (winner, full)])
    assert f"compared on 4 inspected images and {len(chosen.held_out)} held-out normal images" in chosen.choice
    assert set(chosen.maps) == {r.relpath for r in textured.unlabeled}
