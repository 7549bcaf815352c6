"""A tiny discovery end to end through run_discovery, and every bad-input case's clear message."""

from dataclasses import replace

import numpy as np
import pytest

from core.config import DiscoveryConfig, MGViTConfig, TrainConfig
from core.dataset import DatasetError, load_dataset, load_labeled_crops
from core.demo.build import generate_demo, maps_from_ground_truth
from core.errors import DiscoveryCancelled, PipelineError
from core.pipeline import run_discovery
from core.records import NORMAL_CLUSTER_NAME
from core.progress import STAGES

TINY = DiscoveryConfig(
    representation="hybrid",  # every stage, training included (a scratch ViT's default is the descriptors alone)
    model=MGViTConfig(backbone="vit_micro_scratch"),
    train=TrainConfig(epochs=1, batch_size=8, proj_hidden=64, proj_out=32, n_heads=2),
    classes=3,
    device="cpu",
)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = generate_demo(tmp_path_factory.mktemp("demo") / "set", image_size=64, n_train_good=3, n_test_good=3,
                         n_per_class=3, defect_types=("scratch", "hole", "stain"))
    manifest = load_dataset(root)
    return manifest, maps_from_ground_truth(manifest.unlabeled)


@pytest.fixture(scope="module")
def tiny_result(tiny_set):
    manifest, maps = tiny_set
    reports = []
    result = run_discovery(manifest, TINY, maps=maps, progress=reports.append)
    return result, reports


@pytest.mark.slow
def test_tiny_discovery_outputs_are_consistent(tiny_set, tiny_result):
    manifest, _ = tiny_set
    result, reports = tiny_result
    keys = {r.relpath for r in manifest.unlabeled}
    assert [i.image for i in result.images] == [r.relpath for r in manifest.unlabeled]
    assert result.cluster_names == [NORMAL_CLUSTER_NAME, "class 1", "class 2", "class 3"]
    assert result.normal_cluster == 0 and result.n_novel == 3
    assert {r.image for r in result.regions} <= keys
    n_regions = {key: sum(r.image == key for r in result.regions) for key in keys}
    for image in result.images:
        assert image.n_regions == n_regions[image.image] >= 1
        assert image.probabilities.shape == (4,)
        assert image.probabilities.sum() == pytest.approx(1.0)
        assert image.cluster == int(image.probabilities.argmax())
        assert image.confidence == pytest.approx(image.probabilities.max())
        assert image.gt == next(r.gt_class for r in manifest.unlabeled if r.relpath == image.image)
    for region in result.regions:
        assert region.probabilities.sum() == pytest.approx(1.0)
        assert region.embedding.shape == result.regions[0].embedding.shape
        assert np.linalg.norm(region.embedding) == pytest.approx(1.0, abs=1e-4)
        assert np.isfinite([region.umap_x, region.umap_y]).all()
        assert region.gt == result.images[[i.image for i in result.images].index(region.image)].gt
    # the defect images of the set all have one blurred gt blob -> MEBin finds anomalies there
    assert all(result.binarization[i.image].num_anomalies >= 1 for i in result.images if i.gt != "good")
    # metrics as docs/architecture.md's output files say: 9 defective images of 3 classes, 3 normal ones
    metrics = result.metrics
    assert set(metrics) >= {"image", "region", "normal_images", "image_with_good"}
    assert metrics["image"]["n"] == 9 and metrics["image_with_good"]["n"] == 12
    assert metrics["normal_images"]["n"] == 3
    assert metrics["region"]["n"] == sum(n_regions[k] for k in keys if "good" not in k)
    for block in ("image", "region", "image_with_good"):
        assert set(metrics[block]) == {"nmi", "ari", "f1", "n"}
        assert 0.0 <= metrics[block]["f1"] <= 1.0
    assert set(result.timings) == set(STAGES)
    assert result.train_result.epochs_done == 1 and not result.cancelled
    # progress: every stage reported, overall fraction never goes back and ends at 1
    assert [s for s in STAGES if any(p.stage == s for p in reports)] == list(STAGES)
    overall = [p.overall for p in reports]
    assert overall == sorted(overall) and overall[-1] == pytest.approx(1.0)
    assert any(p.train is not None for p in reports if p.stage == "training")


@pytest.mark.slow
def test_region_labels_become_base_classes_and_are_predicted(tiny_set, tiny_result):
    manifest, maps = tiny_set
    first, _ = tiny_result
    scratch = [r.key for r in first.regions if r.gt == "scratch"][:2]
    result = run_discovery(manifest, replace(TINY, classes=2), maps=maps,
                           region_labels={scratch[0]: "scratch", scratch[1]: "scratch", "gone.png#0": "x"})
    assert result.base_classes == ["scratch"]
    assert result.cluster_names == ["scratch", NORMAL_CLUSTER_NAME, "class 1", "class 2"]
    assert result.normal_cluster == 1
    assert {r.key: r.label for r in result.regions if r.label} == {scratch[0]: "scratch", scratch[1]: "scratch"}
    assert any("gone.png#0" in p for p in result.problems)


def test_single_image_is_refused(tiny_set):
    manifest, maps = tiny_set
    one = replace(manifest, images=[manifest.unlabeled[-1]])
    with pytest.raises(PipelineError, match="only one image"):
        run_discovery(one, TINY, maps=maps)


def test_no_anomalies_found_is_refused(tiny_set):
    manifest, maps = tiny_set
    flat = {key: np.zeros_like(value) for key, value in maps.items()}
    with pytest.raises(PipelineError, match="no anomalies found"):
        run_discovery(manifest, TINY, maps=flat)


def test_one_class_is_refused(tiny_set):
    manifest, maps = tiny_set
    with pytest.raises(PipelineError, match="at least 2 defect classes"):
        run_discovery(manifest, replace(TINY, classes=1), maps=maps)


def test_more_classes_than_regions_is_refused(tiny_set):
    manifest, maps = tiny_set
    with pytest.raises(PipelineError, match="larger than the number of regions"):
        run_discovery(manifest, replace(TINY, classes=500), maps=maps)


def test_missing_map_is_named(tiny_set):
    manifest, maps = tiny_set
    partial = dict(maps)
    gone = manifest.unlabeled[0].relpath
    del partial[gone]
    with pytest.raises(PipelineError, match=gone):
        run_discovery(manifest, TINY, maps=partial)


def test_cancel_before_training_stops_the_run(tiny_set):
    manifest, maps = tiny_set
    with pytest.raises(DiscoveryCancelled):
        run_discovery(manifest, TINY, maps=maps, should_cancel=lambda: True)


def test_otsu_binarizer_runs_the_same_stages(tiny_set):
    from core.regions.mebin import binarize_otsu

    mask_map = np.zeros((32, 32), np.uint8)
    mask_map[4:14, 4:14] = 200
    mask_map[20:30, 20:30] = 180
    (result,) = binarize_otsu([mask_map])
    assert result.num_anomalies == 2 and 0 <= result.threshold < 180
    assert result.mask[8, 8] == 255 and result.mask[0, 0] == 0


def test_labeled_set_loads_classes_and_masks(tmp_path):
    from core.imageio import write_image

    crop = np.full((10, 10, 3), 100, np.uint8)
    write_image(tmp_path / "dent" / "a.png", crop)
    write_image(tmp_path / "dent" / "a_mask.png", np.pad(np.full((4, 4), 255, np.uint8), 3))
    write_image(tmp_path / "scuff" / "b.png", crop)
    labeled = load_labeled_crops(tmp_path)
    assert labeled.base_classes == ["dent", "scuff"]
    assert labeled.labels.tolist() == [0, 1]
    assert labeled.masks[0].sum() == 16 * 255 and labeled.masks[1].min() == 255
    with pytest.raises(DatasetError, match="does not exist"):
        load_labeled_crops(tmp_path / "nope")


@pytest.mark.slow
def test_auto_classes_reports_its_evidence(tiny_set):
    manifest, maps = tiny_set
    result = run_discovery(manifest, replace(TINY, classes=None), maps=maps)
    estimate = result.estimate
    assert estimate is not None and estimate.table
    assert result.n_novel == estimate.k >= 2
    assert len(result.cluster_names) == estimate.k + 1
    # regions with a mask, less likely false detections (score < EstimateConfig.min_score) when enough remain
    assert 3 <= estimate.n_samples <= sum(r.region.area > 0 for r in result.regions)


@pytest.mark.slow
def test_engineer_threshold_overrides_replace_mebins_choice(tiny_set, tiny_result):
    manifest, maps = tiny_set
    baseline, _ = tiny_result
    defective = next(r.relpath for r in manifest.unlabeled if r.gt_class != "good")
    normal = next(r.relpath for r in manifest.unlabeled if r.gt_class == "good")
    overrides = {defective: 254, normal: 0}  # nothing survives 254; everything above 0 is foreground
    result = run_discovery(manifest, TINY, maps=maps, thresholds=overrides)
    assert result.binarization[defective].threshold == 254
    assert result.binarization[defective].num_anomalies == 0
    assert result.binarization[normal].threshold == 0
    boxes = [r.region.box for r in result.regions if r.image == defective]
    assert boxes == [(0, 0, 64, 64)]  # no foreground: the whole image is one crop
    untouched = next(r.relpath for r in manifest.unlabeled if r.relpath not in overrides)
    assert result.binarization[untouched].threshold == baseline.binarization[untouched].threshold


def test_the_bar_follows_the_work_when_nothing_is_trained(tiny_set):
    """The descriptors train no MGViT: the training stage's fixed 70 % made the bar jump from 18 % to
    89 % in an instant and then stand still through the grouping and the 2-D map. Planned by the
    stages' expected seconds, the training stage takes none of it and the prediction reports inside."""
    from dataclasses import replace

    manifest, maps = tiny_set
    reports = []
    run_discovery(manifest, replace(TINY, representation="descriptors"), maps=maps, progress=reports.append)
    overall = [p.overall for p in reports]
    assert overall == sorted(overall) and overall[-1] == pytest.approx(1.0)
    training = [p.overall for p in reports if p.stage == "training"]
    assert max(training) - min(training) < 0.01
    prediction = [p for p in reports if p.stage == "prediction"]
    assert prediction[0].overall < 0.8 and {"grouping the regions", "drawing the 2-D map"} <= {p.message for p in prediction}


def test_a_plan_shares_what_is_left_of_the_bar():
    from core.progress import StageReporter, stage_seconds

    events = []
    reporter = StageReporter(events.append)
    reporter.plan(stage_seconds(100, redraw=True, epochs=0))
    reporter.finish("maps")
    reporter.finish("mebin")
    at_cut = reporter.done
    reporter.plan(stage_seconds(100, n_regions=2000, redraw=True, epochs=0))  # MEBin counted many regions
    assert reporter.done == at_cut and reporter.shares["training"] == 0.0
    assert sum(reporter.shares[s] for s in STAGES if s not in ("maps", "mebin")) == pytest.approx(1.0 - at_cut)
    assert reporter.shares["regions"] > 0.5 * (1.0 - at_cut)  # redrawing 2,000 masks is most of what is left
    for stage in ("regions", "estimate", "training", "prediction", "metrics"):
        reporter.finish(stage)
    assert events[-1].overall == pytest.approx(1.0)
