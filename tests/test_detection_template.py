"""Golden-template comparison: pairing by name and by CSV, registration, maps, auto choice, DeepPCB."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from core.dataset import load_dataset
from core.detection import DetectionError, DetectorConfig, detect
from core.detection.boxes import box_scores, coco_truth_for_maps
from core.detection.template import register, template_map
from core.records import Manifest

_REPO = Path(__file__).resolve().parents[1]
#: ../shared beside the clone (CI); a worktree one level deeper finds it two levels up.
DEEPPCB = next((p for p in (_REPO.parent / "shared" / "datasets" / "deeppcb",
                            _REPO.parent.parent / "shared" / "datasets" / "deeppcb") if p.is_dir()),
               _REPO.parent / "shared" / "datasets" / "deeppcb")


def _board(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A binary 'circuit': random bright tracks on dark, like DeepPCB's binarized boards."""
    board = np.zeros((size, size), np.uint8)
    for _ in range(12):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(4, size - 4, 4))
        cv2.line(board, (x0, y0), (x1, y0), 255, 3)
        cv2.line(board, (x1, y0), (x1, y1), 255, 3)
    return board


def _pair_set(root: Path, count: int = 4, defect: bool = True) -> list[tuple[int, int]]:
    """Plain folder: images/<id>_test.png (shifted by 1-2 px, one cut track) and normal/<id>_temp.png."""
    (root / "images").mkdir(parents=True)
    (root / "normal").mkdir()
    rng = np.random.default_rng(0)
    cuts = []
    for index in range(count):
        board = _board(rng)
        cv2.imwrite(str(root / "normal" / f"{index:04d}_temp.png"), board)
        shifted = np.roll(board, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
        ys, xs = np.nonzero(shifted[10:-10, 10:-10])
        y, x = int(ys[len(ys) // 2]) + 10, int(xs[len(xs) // 2]) + 10
        if defect:
            shifted[y - 3:y + 4, x - 3:x + 4] = 0  # an open: a track cut through
        cuts.append((y, x))
        cv2.imwrite(str(root / "images" / f"{index:04d}_test.png"), shifted)
    return cuts


def test_registration_recovers_a_shift():
    rng = np.random.default_rng(1)
    reference = cv2.GaussianBlur(_board(rng).astype(np.float32) / 255, (0, 0), 1.0)
    image = np.roll(reference, (3, -2), axis=(0, 1))
    aligned, (dx, dy) = register(image, reference)
    assert dx == pytest.approx(-2, abs=0.3) and dy == pytest.approx(3, abs=0.3)
    assert np.abs(aligned - image)[8:-8, 8:-8].mean() < 0.2 * np.abs(reference - image)[8:-8, 8:-8].mean()


def test_auto_pairs_by_name_and_the_map_peaks_on_the_defect(cpu, tmp_path):
    cuts = _pair_set(tmp_path)
    manifest = load_dataset(tmp_path)
    detection = detect(manifest, DetectorConfig(), cpu, cache_dir=tmp_path / "cache")
    assert detection.config.method == "template"
    assert detection.choice.startswith("template comparison: each of the 4 images has its own reference")
    for (y, x), record in zip(cuts, sorted(manifest.unlabeled, key=lambda r: r.relpath)):
        array = detection.maps[record.relpath]
        assert array.shape == (96, 96) and array.dtype == np.float32
        peak = np.unravel_index(int(np.argmax(array)), array.shape)
        assert abs(peak[0] - y) <= 4 and abs(peak[1] - x) <= 4, (record.relpath, peak, (y, x))
    again = detect(manifest, DetectorConfig(), cpu, cache_dir=tmp_path / "cache")
    assert sorted(again.cached) == sorted(detection.maps) and not again.computed


def test_a_shifted_defect_free_pair_gives_a_flat_map(cpu, tmp_path):
    _pair_set(tmp_path, count=2, defect=False)
    manifest = load_dataset(tmp_path)
    detection = detect(manifest, DetectorConfig(method="template"), cpu)
    assert max(detection.scores.values()) < 0.05  # tracks of 255 would give ~1 unregistered


def test_pairing_file_and_its_errors(cpu, tmp_path):
    _pair_set(tmp_path, count=2)
    for path in (tmp_path / "normal").iterdir():
        path.rename(tmp_path / "normal" / path.name.replace("_temp", "_golden_copy"))
    manifest = load_dataset(tmp_path)
    # the names no longer pair: auto falls back to PatchCore, and template says which images lack one
    method_auto = detect(manifest, DetectorConfig(image_size=64), cpu)
    assert method_auto.config.method == "patchcore"
    with pytest.raises(DetectionError, match=r"2 have none \(images/0000_test.png"):
        detect(manifest, DetectorConfig(method="template"), cpu)
    pairing = tmp_path / "pairs.csv"
    pairing.write_text("image,reference\nimages/0000_test.png,normal/0000_golden_copy.png\n"
                       "images/0001_test.png,normal/0001_golden_copy.png\n", encoding="utf-8")
    paired = detect(manifest, DetectorConfig(pairing=pairing), cpu)
    assert paired.config.method == "template" and "paired by pairs.csv" in paired.choice
    pairing.write_text("image,reference\nimages/0000_test.png,normal/missing.png\n", encoding="utf-8")
    with pytest.raises(DetectionError, match=r"pairs.csv, line 2: reference 'normal/missing.png' does not exist"):
        detect(manifest, DetectorConfig(pairing=pairing), cpu)


def test_gray_and_colour_of_different_sizes(cpu, tmp_path):
    _pair_set(tmp_path, count=2)
    colour = cv2.cvtColor(cv2.imread(str(tmp_path / "images" / "0001_test.png"), cv2.IMREAD_GRAYSCALE),
                          cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(tmp_path / "images" / "0001_test.png"), cv2.resize(colour, (120, 100)))
    manifest = load_dataset(tmp_path)
    detection = detect(manifest, DetectorConfig(), cpu)
    assert detection.maps["images/0001_test.png"].shape == (100, 120)
    assert np.isfinite(detection.maps["images/0001_test.png"]).all()


@pytest.mark.slow
@pytest.mark.skipif(not (DEEPPCB / "annotations.json").is_file(), reason="DeepPCB is not beside the clone")
def test_template_finds_deeppcb_defects(cpu):
    manifest = load_dataset(DEEPPCB)
    targets = sorted(manifest.unlabeled, key=lambda r: r.relpath)[:12]
    ids = {Path(r.relpath).stem.replace("_test", "") for r in targets}
    normal = [r for r in manifest.normal if Path(r.relpath).stem.replace("_temp", "") in ids]
    detection = detect(Manifest(manifest.root, manifest.layout, targets + normal), DetectorConfig(), cpu)
    assert detection.config.method == "template"
    scores = box_scores(detection.maps, coco_truth_for_maps(DEEPPCB / "annotations.json", detection.maps))
    print("template comparison on 12 DeepPCB images:", scores)
    assert scores["pixel_auroc"] >= 0.8 and scores["defect_recall"] >= 0.95
