"""Discovery on the hybrid / descriptor representations, COCO region metrics and marked-normal regions."""

import json

import numpy as np
import pytest

from core.config import DiscoveryConfig, MGViTConfig, TrainConfig
from core.decisions import decide
from core.dataset import load_dataset
from core.demo.build import generate_demo, maps_from_ground_truth
from core.grouping.spectral import LABELED_NORMAL
from core.imageio import read_gray
from core.labels import plan_labels, training_data
from core.pipeline import binarize_maps, cut_regions, prepare_maps, run_discovery
from core.records import GOOD, NORMAL_CLASS
from core.settings import to_settings

TINY = DiscoveryConfig(
    representation="hybrid",  # the default for a scratch ViT is the descriptors alone; these tests train one
    model=MGViTConfig(backbone="vit_micro_scratch"),
    train=TrainConfig(epochs=1, batch_size=8, proj_hidden=64, proj_out=32, n_heads=2),
    classes=3,
    device="cpu",
)


def _coco_from_masks(manifest) -> dict:
    """annotations.json at the root: one box per defect image, its category the class folder."""
    names = sorted({r.gt_class for r in manifest.unlabeled if r.gt_class != GOOD})
    images, annotations = [], []
    for number, record in enumerate(manifest.unlabeled, start=1):
        images.append({"id": number, "file_name": record.relpath})
        if record.gt_mask_path is None:
            continue
        ys, xs = np.nonzero(read_gray(record.gt_mask_path))
        if len(xs):
            annotations.append({"id": len(annotations) + 1, "image_id": number,
                                "category_id": names.index(record.gt_class) + 1,
                                "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = generate_demo(tmp_path_factory.mktemp("demo") / "set", image_size=64, n_train_good=3, n_test_good=2,
                         n_per_class=3, defect_types=("scratch", "hole", "stain"))
    manifest = load_dataset(root)
    (root / "annotations.json").write_text(json.dumps(_coco_from_masks(manifest)))
    return manifest, maps_from_ground_truth(manifest.unlabeled)


@pytest.fixture(scope="module")
def hybrid_result(tiny_set):
    manifest, maps = tiny_set
    return run_discovery(manifest, TINY, maps=maps)


@pytest.mark.slow
def test_hybrid_discovery_is_deterministic_on_cpu(tiny_set, hybrid_result):
    manifest, maps = tiny_set
    again = run_discovery(manifest, TINY, maps=maps)
    assert [r.cluster for r in again.regions] == [r.cluster for r in hybrid_result.regions]
    assert np.allclose([r.embedding for r in again.regions], [r.embedding for r in hybrid_result.regions], atol=1e-4)
    width = hybrid_result.regions[0].embedding.shape[0]
    assert width > 32  # the stored embedding is the hybrid representation (MGViT CLS + descriptors)
    for region in hybrid_result.regions:
        assert region.probabilities.shape == (4,) and region.probabilities.sum() == pytest.approx(1.0)
    assert hybrid_result.model.n_novel == 4  # prior "none" (default): the paper's heads, normal slot + K = 3


@pytest.mark.slow
def test_region_metrics_come_from_the_coco_file(tiny_set, hybrid_result):
    metrics = hybrid_result.metrics
    assert metrics["region_truth"].endswith("annotations.json")
    assert metrics["region"]["n"] == len(hybrid_result.regions)
    assert set(metrics["region_classes"]) <= {"scratch", "hole", "stain", NORMAL_CLASS}
    coverage = metrics["region_coverage"]
    assert coverage["annotations"] == 9 and coverage["recall"] >= 0.8
    on_defects = [r for r in hybrid_result.regions if r.gt != NORMAL_CLASS]
    assert on_defects and all(r.gt in ("scratch", "hole", "stain") for r in on_defects)


def test_marked_normal_region_is_labeled_normal_in_the_next_training(tiny_set):
    manifest, maps = tiny_set
    map_set = prepare_maps(manifest.unlabeled, maps)
    regions = cut_regions(map_set, binarize_maps(map_set, TINY.mebin), TINY.regions)
    marked, named = regions[0].key, regions[1].key
    plan = plan_labels(regions, None, {marked: NORMAL_CLASS, named: "dent"})
    assert plan.base_classes == ["dent"]  # normal is the normal slot, never a base class
    assert plan.region_label_index[0] == LABELED_NORMAL and plan.region_label_index[1] == 0
    data = training_data(regions, plan, None)  # what train_model hands to training
    assert data.labels[0] == LABELED_NORMAL  # labeled normal: the normal slot is its training target
    data.validate()
    assert data.labels[1] == 0 and data.base_classes == ["dent"]


def test_the_hybrid_mgvit_is_taught_the_descriptor_groups(tiny_set):
    """prior "descriptors": every region's training target is its descriptor group; the engineer's
    named and normal-marked regions keep theirs; the paper's path and prior "none" teach nothing."""
    from dataclasses import replace

    from core.labels import prior_training_data
    from core.pipeline import descriptor_prior, region_descriptors

    manifest, maps = tiny_set
    map_set = prepare_maps(manifest.unlabeled, maps)
    regions = cut_regions(map_set, binarize_maps(map_set, TINY.mebin), TINY.regions)
    marked, named = regions[0].key, regions[1].key
    plan = plan_labels(regions, None, {marked: NORMAL_CLASS, named: "dent"})
    descriptors = region_descriptors(regions, map_set, TINY)
    prior = descriptor_prior(regions, plan, descriptors, 3, replace(TINY, prior="descriptors"))
    assert prior.shape == (len(regions), 1 + 1 + 3)  # dent, the normal slot, three novel groups
    data = prior_training_data(regions, plan, None, prior)
    data.validate()
    assert data.base_classes[:2] == ["dent", NORMAL_CLASS] and len(data.base_classes) == 5
    assert data.labels[0] == 1 and data.labels[1] == 0  # normal-marked: the normal column; named: its class
    assert (data.labels >= 0).all() and (data.labels == prior.argmax(axis=1)).all()
    assert len(set(data.labels[2:])) >= 2  # the descriptors tell the regions apart
    for config in (TINY, replace(TINY, representation="vit", prior="descriptors")):
        assert descriptor_prior(regions, plan, descriptors, 3, config) is None
    with pytest.raises(ValueError, match="prior must be one of"):
        DiscoveryConfig(prior="teacher")
    assert decide({"prior": "descriptors"}).config.prior == "descriptors"
    assert to_settings(DiscoveryConfig(prior="descriptors"))["prior"] == "descriptors"


@pytest.mark.slow
def test_marked_normal_region_comes_back_normal(tiny_set, hybrid_result):
    manifest, maps = tiny_set
    marked = hybrid_result.regions[0].key
    result = run_discovery(manifest, TINY, maps=maps, region_labels={marked: NORMAL_CLASS})
    region = next(r for r in result.regions if r.key == marked)
    assert region.cluster == result.normal_cluster and region.confidence == pytest.approx(1.0)
    assert NORMAL_CLASS not in result.base_classes


@pytest.mark.slow
@pytest.mark.parametrize("representation", ["descriptors", "vit"])
def test_other_representations_and_auto_classes_never_fail(tiny_set, representation):
    manifest, maps = tiny_set
    from dataclasses import replace

    result = run_discovery(manifest, replace(TINY, representation=representation, classes=None), maps=maps)
    assert result.estimate is not None and result.n_novel >= 2
    assert 0.0 <= result.estimate.confidence <= 1.0 and result.estimate.summary()
    if representation == "descriptors":  # nothing uses an embedding: no MGViT is trained
        assert result.model is None and result.train_result.epochs_done == 0
        assert len(result.regions[0].embedding) == result.regions[0].embedding.shape[0] > 0


def test_hybrid_estimate_and_grouping_work_with_a_timm_vit_base(tiny_set):
    """A randomly initialised timm ViT-B (the DINO architecture, 768-d) through the hybrid representation."""
    manifest, maps = tiny_set
    from dataclasses import replace

    from core.grouping.spectral import grouped_probabilities
    from core.mgvit.inference import backbone_features
    from core.pipeline import estimate_classes, region_descriptors

    config = replace(TINY, model=MGViTConfig(backbone="vit_base_patch16_224", input_size=32), classes=None)
    map_set = prepare_maps(manifest.unlabeled, maps)
    regions = cut_regions(map_set, binarize_maps(map_set, config.mebin), config.regions)
    descriptors = region_descriptors(regions, map_set, config)
    k, estimate = estimate_classes(regions, plan_labels(regions, None, None), config, "cpu", descriptors)
    assert k >= 2 and estimate is not None
    embedding = backbone_features([r.image_crop for r in regions], [r.mask_crop for r in regions], config.model, "cpu")
    assert embedding.shape[1] == 768
    probabilities, features, _ = grouped_probabilities("hybrid", embedding, descriptors, k)
    assert probabilities.shape == (len(regions), k + 1) and features.shape[1] == 768 + descriptors.shape[1]


DEEPPCB = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "deeppcb"


@pytest.mark.slow
@pytest.mark.skipif(not (DEEPPCB / "annotations.json").is_file(), reason="DeepPCB not beside the repository")
def test_deeppcb_works_as_a_plain_folder_with_annotations(tmp_path):
    """Three DeepPCB images with their templates and the COCO file: region metrics through the CLI."""
    import shutil
    import subprocess
    import sys

    root = tmp_path / "pcb"
    (root / "images").mkdir(parents=True)
    (root / "normal").mkdir()
    for number in ("00041200", "00041201", "00041202"):
        shutil.copy(DEEPPCB / "images" / f"{number}_test.jpg", root / "images")
        shutil.copy(DEEPPCB / "normal" / f"{number}_temp.jpg", root / "normal")
    shutil.copy(DEEPPCB / "annotations.json", root)
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "core", "discover", "--dataset", str(root), "--out", str(out),
                           "--classes", "3", "--epochs", "1", "--backbone", "vit_micro_scratch", "--quiet"],
                          capture_output=True, text=True, cwd=__import__("pathlib").Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["region"]["n"] >= 3 and metrics["region_coverage"]["annotations"] > 10
    assert metrics["region_coverage"]["recall"] > 0.5
    assert "annotated defects covered" in done.stdout
