"""The built-in detector: PatchCore and zero-shot maps, weights files, cache, output contract, CLI."""

import csv
import json

import numpy as np
import pytest

from core.cli import main
from core.commands.detect import detection_aurocs
from core.dataset import load_dataset
from core.demo.build import generate_demo
from core.detection import DetectionError, DetectorConfig, detect, write_detection
from core.detection.features import build_feature_extractor
from core.detection.patchcore import greedy_coreset, nearest_distances
from core.imageio import image_size


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A very small demo set for plumbing tests (64 px)."""
    root = tmp_path_factory.mktemp("tiny")
    generate_demo(root, image_size=64, n_train_good=4, n_test_good=2, n_per_class=1,
                  defect_types=("hole", "scratch"), overwrite=True)
    return load_dataset(root)


TINY = DetectorConfig(image_size=64, batch_size=4)


def test_coreset_keeps_outliers_and_nearest_distance_is_exact():
    import torch

    generator = torch.Generator().manual_seed(0)
    cloud = torch.randn(500, 16, generator=generator) * 0.1
    outliers = torch.eye(16)[:3] * 10
    points = torch.cat([cloud, outliers])
    chosen = set(greedy_coreset(points, 8, projection_dim=8, seed=0).tolist())
    assert {500, 501, 502} <= chosen
    queries = torch.randn(70, 16, generator=generator)
    expected = torch.cdist(queries, points).min(dim=1).values
    assert torch.allclose(nearest_distances(queries, points), expected, atol=1e-5)


def test_zero_shot_coresets_score_a_texture_like_all_its_patches():
    import torch

    from core.detection.zero_shot import comparison_patches, mutual_scores

    # Six "images" of one texture (a few patch kinds repeated, with noise); the first holds 5 defect patches.
    generator = torch.Generator().manual_seed(0)
    kinds = torch.randn(12, 8, generator=generator)
    images = [kinds[torch.randint(12, (900,), generator=generator)] + 0.05 * torch.randn(900, 8, generator=generator)
              for _ in range(6)]
    images[0][:5] += 3.0
    offered = [comparison_patches(image, 0.1, 128, 0) for image in images]
    assert [len(o) for o in offered] == [90] * 6 and comparison_patches(images[1], 1.0, 128, 0) is images[1]
    full = mutual_scores(images[0], images[1:], 0.3)
    cored = mutual_scores(images[0], offered[1:], 0.3)
    # the defect patches stand out either way, and a normal patch scores nearly as against every patch
    assert cored[:5].min() > 2 * cored[5:].max() and full[:5].min() > 2 * full[5:].max()
    assert (cored[5:] - full[5:]).abs().max() < 0.15
    # a defect in an image offered for comparison keeps its place in the coreset (k-center keeps outliers)
    assert torch.cdist(images[0][:5], comparison_patches(images[0], 0.1, 128, 0)).min(dim=1).values.max() < 0.5


def test_patchcore_maps_cover_every_image_at_its_size(cpu, tiny, tmp_path):
    detection = detect(tiny, TINY, cpu)
    assert sorted(detection.maps) == sorted(r.relpath for r in tiny.unlabeled)
    for record in tiny.unlabeled:
        array = detection.maps[record.relpath]
        assert array.dtype == np.float32 and array.shape == image_size(record.path)
        assert np.isfinite(array).all()
        assert detection.scores[record.relpath] == pytest.approx(float(array.max()))

    write_detection(detection, tiny, tmp_path / "out")
    for record in tiny.unlabeled:
        saved = np.load(tmp_path / "out" / "maps" / record.relpath.replace(".png", ".npy"))
        assert saved.dtype == np.float32 and np.array_equal(saved, detection.maps[record.relpath])
    with open(tmp_path / "out" / "scores.csv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", "score"] and len(rows) == 1 + len(tiny.unlabeled)
    assert {row[0] for row in rows[1:]} == set(detection.maps)


def test_patchcore_without_normal_images_says_use_zero_shot(cpu, tiny):
    only_unlabeled = type(tiny)(tiny.root, tiny.layout, tiny.unlabeled)
    with pytest.raises(DetectionError, match="zero-shot"):
        detect(only_unlabeled, DetectorConfig(method="patchcore", image_size=64), cpu)
    zero_shot = detect(only_unlabeled, DetectorConfig(method="zero-shot", image_size=64), cpu)
    assert sorted(zero_shot.maps) == sorted(r.relpath for r in tiny.unlabeled)
    # the default says up front that it falls back to zero-shot, and why
    auto = detect(only_unlabeled, TINY, cpu)
    assert auto.config.method == "zero-shot" and auto.choice.startswith("zero-shot: no normal reference images")


def test_second_run_comes_from_the_cache(cpu, tiny, tmp_path):
    first = detect(tiny, TINY, cpu, cache_dir=tmp_path)
    assert first.images_featurized == len(tiny.normal) + len(tiny.unlabeled) and not first.cached
    second = detect(tiny, TINY, cpu, cache_dir=tmp_path)
    assert second.images_featurized == 0 and not second.computed
    assert sorted(second.cached) == sorted(first.maps)
    for key, array in first.maps.items():
        assert np.array_equal(array, second.maps[key])
    # Other settings are other entries: nothing is reused across them.
    other = detect(tiny, DetectorConfig(image_size=64, sigma=2.0), cpu, cache_dir=tmp_path)
    assert other.images_featurized > 0 and not other.cached


def _tiny_weights(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "resnet10t.pth")
    save_file(state, str(tmp_path / "resnet10t.safetensors"))
    return model


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_is_loaded(cpu, tmp_path, tiny, suffix):
    import torch

    source = _tiny_weights(tmp_path)
    weights = tmp_path / f"resnet10t{suffix}"
    config = DetectorConfig(backbone="resnet10t", weights=weights, image_size=64, embed_dim=64)
    extractor = build_feature_extractor(config, cpu)
    loaded = dict(extractor.named_parameters())
    name = next(n for n in loaded if n.endswith("conv1.0.weight"))
    assert torch.equal(loaded[name], source.state_dict()["conv1.0.weight"])
    # A fresh random model differs, so equality above means the file was read.
    fresh = build_feature_extractor(DetectorConfig(backbone="resnet10t", pretrained=False), cpu)
    assert not torch.equal(dict(fresh.named_parameters())[name], loaded[name])
    detection = detect(tiny, config, cpu)
    assert len(detection.maps) == len(tiny.unlabeled)


def test_bad_weights_are_named(cpu, tmp_path):
    import timm
    import torch

    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(DetectionError, match=r"r18.pth: cannot load these weights into resnet10t"):
        build_feature_extractor(DetectorConfig(backbone="resnet10t", weights=tmp_path / "r18.pth"), cpu)
    with pytest.raises(DetectionError, match=r"nothing.pth: weights file does not exist"):
        build_feature_extractor(DetectorConfig(backbone="resnet10t", weights=tmp_path / "nothing.pth"), cpu)
    with pytest.raises(DetectionError, match="unknown backbone"):
        build_feature_extractor(DetectorConfig(backbone="no_such_net"), cpu)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, image_size=160, n_train_good=20, n_test_good=8, n_per_class=4, seed=0, overwrite=True)
    return load_dataset(root)


@pytest.mark.slow
def test_offline_patchcore_finds_the_demo_defects(cpu, demo):
    detection = detect(demo, DetectorConfig(method="patchcore", backbone="filterbank"), cpu)
    aurocs = detection_aurocs(demo, detection.maps)
    print("offline PatchCore on the demo set:", aurocs)
    assert aurocs["image_auroc"] >= 0.90
    assert aurocs["pixel_auroc"] >= 0.90


@pytest.mark.slow
def test_zero_shot_finds_the_demo_defects_without_normal_images(cpu, demo):
    unlabeled_only = type(demo)(demo.root, demo.layout, demo.unlabeled)
    detection = detect(unlabeled_only, DetectorConfig(method="zero-shot", image_size=128), cpu)
    aurocs = detection_aurocs(demo, detection.maps)
    print("offline zero-shot on the demo set:", aurocs)
    assert aurocs["image_auroc"] >= 0.70
    assert aurocs["pixel_auroc"] >= 0.88


def test_cli_writes_maps_scores_and_aurocs(tiny, tmp_path, capsys):
    code = main(["detect", "--dataset", str(tiny.root), "--out", str(tmp_path / "out"),
                 "--image-size", "64", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "image AUROC" in out and "pixel AUROC" in out
    assert (tmp_path / "out" / "scores.csv").is_file()
    summary = json.loads((tmp_path / "out" / "detection.json").read_text(encoding="utf-8"))
    assert summary["method"] == "patchcore" and summary["choice"].startswith("patchcore: learns 4 normal")
    assert "separation: not measured (fewer than 10 normal images" in out
    assert len(list((tmp_path / "out" / "maps").rglob("*.npy"))) == len(tiny.unlabeled)
    code = main(["detect", "--dataset", str(tiny.root), "--out", str(tmp_path / "out"),
                 "--backbone", "resnet10t", "--weights", str(tmp_path / "missing.pth")])
    assert code == 2 and "missing.pth: weights file does not exist" in capsys.readouterr().err


def test_cli_without_references_says_it_had_none(tiny, tmp_path, capsys):
    """Only defective and inspected images, no normal/ folder: the run compares the images with each other,
    and both the printed choice and detection.json say plainly that there were no references."""
    import shutil

    folder = tmp_path / "only_inspected"
    folder.mkdir()
    for record in tiny.unlabeled:
        shutil.copy(record.path, folder / record.path.name.replace(".png", f"_{record.gt_class}.png"))
    code = main(["detect", "--dataset", str(folder), "--out", str(tmp_path / "out"), "--image-size", "64",
                 "--device", "cpu", "--no-cache"])
    assert code == 0
    out = capsys.readouterr().out
    assert "zero-shot: no normal reference images" in out
    summary = json.loads((tmp_path / "out" / "detection.json").read_text(encoding="utf-8"))
    assert summary["method"] == "zero-shot" and summary["choice"].startswith("zero-shot: no normal reference images")
    assert summary["held_out"] == [] and summary["separation"] is None
