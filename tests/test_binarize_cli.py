"""`python -m core binarize` end to end on the demo set with maps made from its ground truth."""

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from core.dataset import load_dataset
from core.demo.build import DemoConfig, generate_demo
from core.imageio import read_gray, write_image

ROOT = Path(__file__).resolve().parents[1]


def soft_map(mask: np.ndarray | None, shape, sigma: float, rng) -> np.ndarray:
    """A detector-like map from a ground-truth mask: every defect peaks at 1, blurred by sigma px."""
    noise = rng.normal(0, 0.02, shape).astype(np.float32)
    if mask is None:
        return np.abs(noise)
    distance = cv2.distanceTransform((mask == 0).astype(np.uint8), cv2.DIST_L2, 5)
    return (np.exp(-0.5 * (distance / sigma) ** 2) + noise).astype(np.float32)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", "binarize", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def demo_with_maps(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, DemoConfig(image_size=128, n_train_good=2, n_test_good=4, n_per_class=8))
    manifest = load_dataset(root)
    maps_dir = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(0)
    truth = {}
    for record in manifest.unlabeled:
        mask = read_gray(record.gt_mask_path) if record.gt_mask_path else None
        truth[record.relpath] = 0 if mask is None else cv2.connectedComponents((mask > 0).astype(np.uint8))[0] - 1
        target = maps_dir / Path(record.relpath).relative_to("test").with_suffix(".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, soft_map(mask, record.size, sigma=4.0, rng=rng))
    return root, maps_dir, truth


def test_one_region_per_true_defect(demo_with_maps, tmp_path):
    root, maps_dir, truth = demo_with_maps
    result = run_cli("--maps", maps_dir, "--out", tmp_path / "out", "--images", root / "test")
    assert result.returncode == 0, result.stderr
    assert "mebin:" in result.stdout and "regions:" in result.stdout
    table = pd.read_csv(tmp_path / "out" / "regions.csv")
    estimated = table.groupby("image")["num_anomalies"].first()
    defective = {k: v for k, v in truth.items() if v > 0}
    # Image keys are relative to the --images folder (test/).
    hits = sum(int(estimated[Path(k).relative_to("test").as_posix()] == v) for k, v in defective.items())
    rate = hits / len(defective)
    print(f"\nMEBin found one region per true defect on {hits}/{len(defective)} images ({rate:.0%})")
    assert rate >= 0.8
    normal_counts = [estimated[Path(k).relative_to("test").as_posix()] for k, v in truth.items() if v == 0]
    assert sum(normal_counts) <= 1  # defect-free images stay (almost) empty
    crops = list((tmp_path / "out" / "crops").rglob("*_0.png"))
    assert len(crops) == len(truth)
    assert all(table.x1 > table.x0) and all((table.x1 - table.x0) == (table.y1 - table.y0))
    assert table.score.between(0, 1).all()


def test_maps_alone_and_masks_written(demo_with_maps, tmp_path):
    _, maps_dir, truth = demo_with_maps
    result = run_cli("--maps", maps_dir, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    masks = sorted((tmp_path / "masks").rglob("*.png"))
    assert len(masks) == len(truth)
    assert set(np.unique(read_gray(masks[0]))) <= {0, 255}


def test_bad_maps_are_named(tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / "ok.npy", np.ones((8, 8), np.float32))
    bad = np.ones((8, 8), np.float32)
    bad[2, 2] = np.nan
    np.save(maps / "nan_map.npy", bad)
    (maps / "broken.png").write_bytes(b"garbage")
    result = run_cli("--maps", maps, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "nan_map.npy" in result.stderr and "broken.png" in result.stderr
    assert "Traceback" not in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("--maps", empty, "--out", tmp_path / "out")
    assert result.returncode == 2 and "no anomaly maps found" in result.stderr


def test_maps_that_do_not_match_images(tmp_path):
    images = tmp_path / "images"
    write_image(images / "a.png", np.zeros((20, 40, 3), np.uint8))
    write_image(images / "b.png", np.zeros((20, 40, 3), np.uint8))
    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / "a.npy", np.ones((40, 20), np.float32))  # wrong aspect ratio
    np.save(maps / "c.npy", np.ones((20, 40), np.float32))  # no such image
    result = run_cli("--maps", maps, "--out", tmp_path / "out", "--images", images)
    assert result.returncode == 2
    for name in ("a.npy", "b.png", "c.npy"):
        assert name in result.stderr


def test_a_data_set_with_normal_references_gets_its_masks_redrawn(demo_with_maps, tmp_path):
    root, maps_dir, _ = demo_with_maps
    plain = run_cli("--maps", maps_dir, "--out", tmp_path / "plain", "--images", root / "test")
    assert plain.returncode == 0, plain.stderr
    # The data-set root holds train/good: the masks are redrawn against those normal images.
    test_maps = tmp_path / "maps_by_root"
    shutil.copytree(maps_dir, test_maps / "test")
    redrawn = run_cli("--maps", test_maps, "--out", tmp_path / "redrawn", "--images", root)
    assert redrawn.returncode == 0, redrawn.stderr
    before = pd.read_csv(tmp_path / "plain" / "regions.csv")
    after = pd.read_csv(tmp_path / "redrawn" / "regions.csv")
    after = after[after.image.str.startswith("test/")]
    assert len(after) == len(before)
    assert after.area.sum() < 0.8 * before.area.sum()  # blurred blobs shrink to the defects' pixels
