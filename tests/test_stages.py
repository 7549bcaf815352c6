"""Each stage function of core.pipeline on tiny data (the whole chain is in test_pipeline.py)."""

import numpy as np
import pytest

from core.config import DiscoveryConfig, MEBinConfig, RegionConfig
from core.dataset import load_dataset
from core.demo.build import generate_demo, maps_from_ground_truth
from core.errors import PipelineError
from core.labels import plan_labels
from core.regions.mebin import search_range
from core.evaluation.metrics import discovery_metrics, protocol_levels
from core.pipeline import binarize_maps, compute_metrics, cut_regions, estimate_classes, prepare_maps
from core.records import GOOD, region_key
from core.regions.crops import noise_floor, recut_image
from core.results import ImageResult, RegionResult


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = generate_demo(tmp_path_factory.mktemp("stages") / "set", image_size=48, n_train_good=2, n_test_good=2,
                         n_per_class=2, defect_types=("scratch", "hole"))
    manifest = load_dataset(root)
    records = manifest.unlabeled
    # half-size maps: prepare_maps brings them to the images' size
    raw = {key: m[::2, ::2] for key, m in maps_from_ground_truth(records).items()}
    return records, raw


def test_prepare_maps_resizes_and_normalizes_over_the_set(tiny):
    records, raw = tiny
    maps = prepare_maps(records, raw)
    assert maps.keys == [r.relpath for r in records]
    for key in maps.keys:
        assert maps.normalized[key].dtype == np.uint8
        assert maps.normalized[key].shape == maps.images[key].shape[:2] == (48, 48)
    assert max(int(m.max()) for m in maps.normalized.values()) == 255
    gone = records[1].relpath
    with pytest.raises(PipelineError, match=gone):
        prepare_maps(records, {k: v for k, v in raw.items() if k != gone})
    with pytest.raises(PipelineError, match="NaN"):
        prepare_maps(records, {**raw, gone: np.full((4, 4), np.nan, np.float32)})


def test_binarize_maps_applies_overrides_and_keeps_the_evidence(tiny):
    records, raw = tiny
    maps = prepare_maps(records, raw)
    plain = binarize_maps(maps, MEBinConfig())
    key = next(r.relpath for r in records if r.gt_class != GOOD)
    overridden = binarize_maps(maps, MEBinConfig(), thresholds={key: 254, "not/an/image.png": 3})
    assert overridden[key].threshold == 254 and overridden[key].num_anomalies == 0 and not overridden[key].mask.any()
    assert np.array_equal(overridden[key].counts, plain[key].counts)
    others = [k for k in maps.keys if k != key]
    assert all(overridden[k].threshold == plain[k].threshold for k in others)
    otsu = binarize_maps(maps, MEBinConfig(), "otsu")
    assert otsu[key].interval is None and otsu[key].counts.size == 0 and 0 <= otsu[key].threshold < 255
    with pytest.raises(PipelineError, match="unknown binarizer"):
        binarize_maps(maps, MEBinConfig(), "canny")


def test_recut_image_reproduces_the_regions_of_the_run(tiny):
    """The Review page's re-crop at MEBin's own threshold gives exactly the run's crops and scores."""
    records, raw = tiny
    maps = prepare_maps(records, raw)
    binarization = binarize_maps(maps, MEBinConfig())
    regions = cut_regions(maps, binarization, RegionConfig())
    assert {r.image for r in regions} == set(maps.keys)  # every image gets at least one crop
    assert all(r.key == region_key(r.image, r.index) for r in regions)
    span = search_range(list(maps.normalized.values()))
    floor = noise_floor(list(maps.normalized.values()), RegionConfig().noise_z)
    for key in maps.keys:
        result = binarization[key]
        mask, count, again = recut_image(key, maps.images[key], maps.normalized[key], result.threshold, span,
                                         MEBinConfig(), RegionConfig(), floor=floor)
        if result.threshold < 255:
            assert np.array_equal(mask, result.mask) and count == result.num_anomalies
        mine = [r for r in regions if r.image == key]
        if result.threshold < 255:
            assert [(r.box, r.area, r.score) for r in again] == [(r.box, r.area, r.score) for r in mine]


def test_plan_labels_and_estimate_checks(tiny):
    records, raw = tiny
    maps = prepare_maps(records, raw)
    regions = cut_regions(maps, binarize_maps(maps, MEBinConfig()), RegionConfig())
    plan = plan_labels(regions, None, {regions[0].key: "dent", "gone.png#3": "dent"})
    assert plan.base_classes == ["dent"] and plan.include_base
    assert plan.region_label_index.tolist() == [0] + [-1] * (len(regions) - 1)
    assert any("gone.png#3" in p for p in plan.problems)
    k, estimate = estimate_classes(regions, plan, DiscoveryConfig(classes=2), "cpu")
    assert (k, estimate) == (2, None)
    with pytest.raises(PipelineError, match="larger than the number of regions"):
        estimate_classes(regions, plan, DiscoveryConfig(classes=len(regions)), "cpu")


def test_protocol_levels_and_metrics():
    levels = protocol_levels(["a", "b", GOOD, None], [1, 2, 0, 1], ["a", GOOD, "b"], [1, 0, 2])
    assert levels["image"] == (["a", "b"], [1, 2])
    assert levels["region"] == (["a", "b"], [1, 2])
    assert levels["image_with_good"] == (["a", "b", GOOD], [1, 2, 0])
    metrics = discovery_metrics(["a", "b", GOOD, None], [1, 2, 0, 1], ["a", GOOD, "b"], [1, 0, 2], 0)
    assert metrics["image"] == {"nmi": 1.0, "ari": 1.0, "f1": 1.0, "n": 2}
    assert metrics["normal_images"] == {"share_predicted_normal": 1.0, "n": 1}
    assert metrics["classes"] == ["a", "b"]
    assert discovery_metrics([None], [0], [], [], 0) is None


def test_compute_metrics_reads_the_results():
    def image(key, gt, cluster):
        return ImageResult(image=key, cluster=cluster, confidence=1.0, probabilities=np.eye(3)[cluster], n_regions=1,
                           gt=gt, threshold=0, num_anomalies=1, score=1.0)

    def region(key, gt, cluster):
        from core.records import Region

        crop = np.zeros((2, 2, 3), np.uint8)
        return RegionResult(region=Region(key, 0, (0, 0, 2, 2), crop, crop[..., 0], 4, 1.0), cluster=cluster,
                            confidence=1.0, probabilities=np.eye(3)[cluster], embedding=np.ones(2), umap_x=0.0,
                            umap_y=0.0, gt=gt)

    images = [image("x.png", "a", 1), image("y.png", "a", 2), image("z.png", GOOD, 0)]
    regions = [region("x.png", "a", 1), region("y.png", "a", 1)]
    metrics = compute_metrics(images, regions, normal_cluster=0)
    assert metrics["image"]["n"] == 2 and metrics["image"]["f1"] == 0.5
    assert metrics["region"]["f1"] == 1.0
    assert metrics["normal_images"]["share_predicted_normal"] == 1.0


def test_stages_runner_checks_cancel_times_and_reports_each_stage():
    from core.errors import DiscoveryCancelled
    from core.stages import Stages

    events = []
    stages = Stages(events.append, should_cancel=lambda: False)
    with stages("maps", "anomaly maps") as stage:
        stage.report(0.5, "half")
        stage.summary = "2 maps"
    with stages("mebin") as stage:
        stage.summary = "1 of 2 images with anomalies"
    assert [(e.stage, e.fraction, e.message) for e in events] == [
        ("maps", 0.0, "anomaly maps"), ("maps", 0.5, "half"), ("maps", 1.0, "2 maps"),
        ("mebin", 1.0, "1 of 2 images with anomalies")]
    assert events[-1].overall == pytest.approx(0.14)  # core.progress.STAGES: maps 10 %, mebin 4 %
    assert set(stages.timings) == {"maps", "mebin"} and min(stages.timings.values()) >= 0
    cancelled = Stages(should_cancel=lambda: True)
    with pytest.raises(DiscoveryCancelled, match="before regions"):
        with cancelled("regions"):
            raise AssertionError("a cancelled stage does not start")
    with cancelled("metrics", cancellable=False):
        pass  # the last stages of a run finish what training started
    assert "metrics" in cancelled.timings


def test_the_representation_says_what_each_stage_needs():
    from core.config import DiscoveryConfig

    vit, descriptors, hybrid = (DiscoveryConfig(representation=name).space for name in ("vit", "descriptors", "hybrid"))
    assert (vit.trains_model, vit.grouped, vit.can_be_taught) == (True, False, False)
    assert (descriptors.trains_model, descriptors.grouped, descriptors.can_be_taught) == (False, True, False)
    assert (hybrid.trains_model, hybrid.grouped, hybrid.can_be_taught) == (True, True, True)

