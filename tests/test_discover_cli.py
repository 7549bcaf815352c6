"""`python -m core discover` end to end on a tiny demo set, and its clear errors (exit code 2)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.cli import main
from core.dataset import load_dataset
from core.demo.build import generate_demo, maps_from_ground_truth
from core.imageio import read_image, write_image
from core.records import NORMAL_CLASS

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "vit_micro_scratch", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    root = generate_demo(base / "set", image_size=64, n_train_good=4, n_test_good=2, n_per_class=3,
                         defect_types=("scratch", "hole", "stain"))
    manifest = load_dataset(root)
    for relpath, array in maps_from_ground_truth(manifest.unlabeled).items():
        path = base / "maps" / Path(relpath).with_suffix(".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
    return root, base / "maps", manifest


def _discover(*args):
    return subprocess.run([sys.executable, "-m", "core", "discover", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _check_outputs(out: Path, manifest, n_columns: int) -> None:
    images = _rows(out / "images.csv")
    regions = _rows(out / "regions.csv")
    assert sorted(r["image"] for r in images) == sorted(r.relpath for r in manifest.unlabeled)
    image_keys = {r["image"] for r in images}
    assert regions and all(r["image"] in image_keys for r in regions)
    for row in images:
        assert int(row["n_regions"]) == sum(r["image"] == row["image"] for r in regions)
    for row in regions + images:
        p = [float(row[f"p_{i}"]) for i in range(n_columns)]
        assert sum(p) == pytest.approx(1.0, abs=1e-4)
        assert int(row["cluster"]) == int(np.argmax(p))
    assert np.load(out / "embeddings.npy").shape[0] == len(regions)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"image", "region", "normal_images", "image_with_good"}
    assert metrics["image"]["n"] == 9 and metrics["normal_images"]["n"] == 2
    run = json.loads((out / "run.json").read_text())
    assert len(run["cluster_names"]) == n_columns and run["normal_cluster"] == 0

    from core.mgvit.checkpoint import load_checkpoint

    if run["config"]["representation"] == "descriptors":  # nothing trained: no checkpoint is written
        assert not (out / "model.pt").exists()
        return
    model, extra = load_checkpoint(out / "model.pt")
    assert extra["cluster_names"] == run["cluster_names"]
    if model.base_classes[:1] == [NORMAL_CLASS]:  # hybrid, prior "descriptors": taught the normal slot and K groups
        assert model.n_base == n_columns and model.base_classes[1:] == [f"descriptor group {i}" for i in range(1, n_columns)]
    else:  # the paper's heads: the normal slot and K novel classes
        assert model.n_novel == n_columns


@pytest.mark.slow
def test_discover_with_imported_maps(tiny, tmp_path):
    root, maps, manifest = tiny
    out = tmp_path / "out"
    done = _discover("--dataset", str(root), "--maps", str(maps), "--out", str(out), "--classes", "3",
                     "--save-crops", "--representation", "hybrid", *TINY)
    assert done.returncode == 0, done.stderr
    _check_outputs(out, manifest, n_columns=4)
    assert "NMI" in done.stdout and "time per stage" in done.stdout
    assert any((out / "crops").rglob("*_mask.png"))


@pytest.mark.slow
def test_discover_with_the_built_in_detector(tiny, tmp_path):
    root, _, manifest = tiny
    out = tmp_path / "out"
    done = _discover("--dataset", str(root), "--out", str(out), "--classes", "2", *TINY)  # representation auto
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["representation"] == "descriptors" == record["representation"]["used"]
    assert record["representation"]["asked"] == "auto" and "from scratch" in record["representation"]["why"]
    _check_outputs(out, manifest, n_columns=3)


def test_bad_input_exits_2_without_traceback(tiny, tmp_path):
    root, maps, _ = tiny
    done = _discover("--dataset", str(root), "--maps", str(maps), "--out", str(tmp_path / "o"), "--classes", "1",
                     *TINY)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "classes must be between 2 and 100, not 1" in done.stderr  # the settings table's bounds


def _main(capsys, *args):
    code = main(["discover", *args])
    return code, capsys.readouterr().err


def test_more_classes_than_regions(tiny, tmp_path, capsys):
    root, maps, _ = tiny
    code, err = _main(capsys, "--dataset", str(root), "--maps", str(maps), "--out", str(tmp_path), "--classes",
                      "100", *TINY)
    assert code == 2 and "larger than the number of regions" in err


def test_poor_separation_of_the_maps_is_said_before_the_run(tiny, tmp_path, capsys):
    """maps from `core detect` whose detection.json says they barely separate: the CLI warns first."""
    import shutil

    from core.detection.separation import separation_report

    root, maps, _ = tiny
    shutil.copytree(maps, tmp_path / "d" / "maps")
    poor = separation_report([1.0, 1.1, 0.9, 1.0], [1.0, 1.05, 0.95])
    (tmp_path / "d" / "detection.json").write_text(json.dumps({"normal_peaks": [], "separation": poor}))
    code, err = _main(capsys, "--dataset", str(root), "--maps", str(tmp_path / "d" / "maps"), "--out",
                      str(tmp_path / "o"), "--classes", "100", *TINY)
    assert code == 2 and f"warning: {poor['warning']}" in err
    assert err.index("barely tell your images") < err.index("larger than the number of regions")


def test_no_anomalies_found(tiny, tmp_path, capsys):
    root, _, manifest = tiny
    for record in manifest.unlabeled:
        path = tmp_path / "flat" / Path(record.relpath).with_suffix(".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.zeros(record.size, np.float32))
    code, err = _main(capsys, "--dataset", str(root), "--maps", str(tmp_path / "flat"), "--out", str(tmp_path / "o"),
                      *TINY)
    assert code == 2 and "no anomalies found" in err


def test_single_image(tiny, tmp_path, capsys):
    root, _, manifest = tiny
    write_image(tmp_path / "one" / "a.png", read_image(manifest.unlabeled[-1].path))
    code, err = _main(capsys, "--dataset", str(tmp_path / "one"), "--out", str(tmp_path / "o"), *TINY)
    assert code == 2 and "only one image" in err


def test_missing_dataset_and_bad_classes(tmp_path, capsys):
    code, err = _main(capsys, "--dataset", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), *TINY)
    assert code == 2 and "does not exist" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["discover", "--dataset", str(tmp_path), "--out", str(tmp_path), "--classes", "many"])
    assert exit_info.value.code == 2
    assert "'auto'" in capsys.readouterr().err


def test_missing_maps_are_named(tiny, tmp_path, capsys):
    root, maps, manifest = tiny
    code, err = _main(capsys, "--dataset", str(root), "--maps", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
                      *TINY)
    assert code == 2 and "maps folder does not exist" in err


def test_default_backbone_is_auto_and_says_which_it_used(tiny, tmp_path):
    """No weights in any cache: auto trains the scratch ViT, and the first line says so and why."""
    import os

    root, maps, _ = tiny
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "torch")}
    done = subprocess.run([sys.executable, "-m", "core", "discover", "--dataset", str(root), "--maps", str(maps),
                           "--out", str(tmp_path / "out"), "--classes", "3",
                           "--device", "cpu", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()[:2]
    assert first.startswith("discover: backbone vit_tiny_scratch (offline, trained from scratch)")
    # representation auto follows: a scratch ViT is not trained, the regions are grouped on their descriptors
    assert second.startswith("discover: regions grouped on their descriptors alone")
    assert not (tmp_path / "out" / "model.pt").exists()


def test_maps_from_the_detect_command_bring_its_held_out_normal_peaks(tmp_path, capsys):
    """`detect --out D` writes D/maps and D/detection.json; `discover --maps D/maps` reads the peaks beside them."""
    from core.stages import detection_record

    (tmp_path / "maps").mkdir()
    assert detection_record(tmp_path / "maps").normal_peaks == []
    separation = {"auroc": 0.56, "low": True}
    (tmp_path / "detection.json").write_text(json.dumps({"method": "learned", "normal_peaks": [1.5, 2, 2.5],
                                                         "separation": separation}))
    record = detection_record(tmp_path / "maps")
    assert record.normal_peaks == [1.5, 2.0, 2.5] and record.separation == separation and not record.problems
    (tmp_path / "detection.json").write_text("[1, 2")
    record = detection_record(tmp_path / "maps")
    assert record.normal_peaks == [] and "detection.json: not a detection record" in record.problems[0]
