"""The job runner: runs executed, claimed, lost, retried and given up, and the database says so
(real worker processes on the queue: test_jobs_distributed.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from core.decisions import decide
from core.demo.build import DemoConfig, generate_demo
from storage import CANCELLED, DONE, FAILED, RUNNING, SOURCE_GROUND_TRUTH, open_workspace
from jobs import runner as worker
from jobs.runner import MAX_ATTEMPTS, WorkerInfo
from webapp import evaluation, intake, job_control

from builders import TINY_DEMO, TINY_RUN, demo_maps



@pytest.fixture()
def project(tmp_path):
    """A workspace with one tiny demo project whose maps are imported (no detector needed)."""
    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    demo_maps(root, tmp_path / "maps")
    store = open_workspace(tmp_path / "workspace")
    info = intake.create_project(store, "tiny", intake.summarize_dataset(root, tmp_path / "maps"))
    yield store, info
    store.close()


@pytest.mark.slow
def test_discovery_job_runs_to_done_and_writes_clusters(project):
    store, info = project
    run_id = store.start_run(info.id, job_control.DISCOVER, TINY_RUN).id
    assert worker.execute(store, run_id) == DONE
    run = store.get_run(run_id)
    assert run.status == DONE, run.message
    assert run.attempts == 1 and run.worker.endswith(f":inline:{os.getpid()}")
    assert run.progress == pytest.approx(1.0)
    clusters = store.list_clusters(run_id)
    assert len(clusters) == TINY_RUN["classes"] + 1  # K defect classes + the normal slot
    assert sum(c.is_normal for c in clusters) == 1
    regions = store.list_regions(info.id)
    assert regions and sum(c.region_count for c in clusters) == len(regions)
    points = store.umap_points(run_id)
    assert len(points) == len(regions) and np.isfinite(points[["x", "y"]].to_numpy()).all()
    assert run.loss_history and all("loss" in p or "total" in p for p in run.loss_history)
    assert run.metrics["image"]["n"] == 9  # ground truth known: metrics over the defective images
    assert len(store.list_maps(info.id)) == 11 and len(store.list_binarizations(info.id)) == 11
    assert run.checkpoint_path and Path(run.checkpoint_path).is_file()

    # Retraining: the engineer's labels
    # become a known class, and names carry over from the previous run.
    biggest = max((c for c in clusters if not c.is_normal), key=lambda c: c.region_count)
    store.rename_cluster(biggest.id, "dents")
    labeled = {r.id: "scratch" for r in regions if r.image.startswith("test/scratch/")}
    store.set_labels(info.id, labeled, source="engineer")
    retrain = store.start_run(info.id, job_control.DISCOVER, {**TINY_RUN, "labels_from_project": True},
                              parent_run_id=run_id)
    assert worker.execute(store, retrain.id) == DONE, store.get_run(retrain.id).message
    names = {c.name for c in store.list_clusters(retrain.id)}
    assert "scratch" in names  # the labeled class is predicted as a known class
    for match in store.match_clusters(run_id, retrain.id):  # names carried over to unnamed matches
        source, target = store.get_cluster(match.cluster_a_id), store.get_cluster(match.cluster_b_id)
        if source.name == "dents":
            assert target.name in ("dents", "scratch", "normal / false detection")
    assert f"matched to run #{run_id}" in store.get_run(retrain.id).message
    assert [r.id for r in store.list_regions(info.id)] == [r.id for r in regions]  # labels kept
    assert len(store.labeled_set(info.id)) == len(labeled)



def _lose(store, run_id: int) -> None:
    """The run's worker stopped reporting long ago."""
    import sqlalchemy as sa

    from storage import models as m

    with store.engine.begin() as connection:
        connection.execute(sa.update(m.Run).where(m.Run.id == run_id).values(heartbeat_at=m.utcnow().replace(year=2000)))


def test_a_run_is_claimed_once_and_a_lost_one_is_taken_again_then_given_up(project):
    store, info = project
    run = store.start_run(info.id, job_control.DISCOVER, {})
    first = store.claim_run(run.id, worker="gpu-1:gpu:11", device="cuda:0", lease_s=30)
    assert first.status == RUNNING and first.attempts == 1 and first.host == "gpu-1"
    assert job_control.place(store, first) == "running on gpu-1, cuda:0"
    assert store.claim_run(run.id, worker="gpu-2:gpu:12", device="cpu", lease_s=30) is None  # still reporting
    assert store.lost_runs(30) == [] and store.heartbeat([run.id]) == []
    for attempt in range(2, MAX_ATTEMPTS + 1):
        _lose(store, run.id)
        assert [r.id for r in store.lost_runs(30)] == [run.id]
        again = store.claim_run(run.id, worker=f"gpu-{attempt}:gpu:1{attempt}", device="cpu", lease_s=30)
        assert again.attempts == attempt and again.events[-1]["event"] == "retried"
        assert f"gpu-{attempt - 1}" in again.events[-1]["note"]
    _lose(store, run.id)
    assert worker.execute(store, run.id, WorkerInfo("gpu-9:gpu:19", "cpu", lease_s=30)) == FAILED
    failed = store.get_run(run.id)
    assert f"lost {MAX_ATTEMPTS} times" in failed.message and failed.attempts == MAX_ATTEMPTS
    cancelled = store.start_run(info.id, job_control.DISCOVER, {}).id
    store.cancel_run(cancelled)
    assert store.claim_run(cancelled, worker="w:gpu:1", device="cpu", lease_s=30) is None


def test_the_worker_records_a_crash_as_failed_with_its_message(project, tmp_path):
    store, info = project
    gone = tmp_path / "moved-away"
    bad = store.create_project("broken", str(gone))
    run = store.start_run(bad.id, job_control.DETECT, {})
    assert worker.execute(store, run.id) == FAILED
    failed = store.get_run(run.id)
    assert failed.status == FAILED and str(gone) in failed.message


def test_the_worker_refuses_unknown_kinds_and_skips_runs_not_queued(project):
    store, info = project
    odd = store.start_run(info.id, "teleport", {})
    assert worker.execute(store, odd.id) == FAILED
    assert "teleport" in store.get_run(odd.id).message
    with pytest.raises(ValueError, match="unknown job kind"):
        job_control.start_job(store, info.id, "teleport", {})
    cancelled = store.start_run(info.id, job_control.DETECT, {})
    store.cancel_run(cancelled.id)
    assert worker.execute(store, cancelled.id) == CANCELLED


def test_detect_job_imports_maps_and_stores_masks_and_crops_in_process(project):
    store, info = project
    run = store.start_run(info.id, job_control.DETECT, {"map_source": "import"})
    assert worker.execute(store, run.id) == DONE
    binarizations = store.list_binarizations(info.id)
    assert len(binarizations) == 11
    defective = [b for b in binarizations if not b["image"].startswith("test/good/")]
    assert sum(b["num_anomalies"] > 0 for b in defective) >= 8  # GT-made maps: MEBin finds the defects
    for record in binarizations:
        assert len(record["counts"]) == 64 and 0 <= record["threshold"] <= 255
        assert Path(record["mask_path"]).is_file()
    regions = store.list_regions(info.id)
    assert regions and all(Path(r.crop_path).is_file() for r in regions)
    # Re-running keeps unchanged regions (and any labels on them).
    again = store.start_run(info.id, job_control.DETECT, {"map_source": "import"})
    assert worker.execute(store, again.id) == DONE
    assert [r.id for r in store.list_regions(info.id)] == [r.id for r in regions]


def test_only_runs_that_can_never_end_are_failed_and_one_waiting_in_line_is_not(project):
    store, info = project
    waiting = job_control.start_job(store, info.id, job_control.DISCOVER, {})  # in the queue, no worker yet
    lost = store.start_run(info.id, job_control.DISCOVER, {})  # recorded, its job never queued
    assert job_control.place(store, store.get_run(waiting)) == "queued, 1st in line on the gpu queue"
    assert job_control.fail_abandoned(store, older_than_s=3600) == []
    assert job_control.fail_abandoned(store, older_than_s=0) == [lost.id]
    assert store.get_run(lost.id).status == FAILED and store.get_run(waiting).status == "queued"
    store.claim_run(waiting, worker="gone:gpu:1", device="cpu", lease_s=30)
    _lose(store, waiting)
    assert job_control.fail_abandoned(store, older_than_s=0) == [waiting]
    assert "gone:gpu:1 stopped reporting" in store.get_run(waiting).message
    job_control.client(store).close()


def test_run_settings_become_the_pipeline_config():
    config = decide({
        "classes": "auto", "backbone": "vit_micro_scratch", "epochs": 3, "batch_size": 16, "lr": 0.01,
        "tau": 50.0, "seed": 7, "device": "cpu", "image_size": 48, "guided": False, "binarizer": "otsu",
        "mebin_sample_rate": 8, "mebin_min_interval_len": 3, "detector_method": "zero-shot",
    }).config
    assert config.classes is None and config.device == "cpu" and config.seed == 7 and config.tau == 50.0
    assert config.model.backbone == "vit_micro_scratch" and config.model.input_size == 48
    assert (config.train.epochs, config.train.batch_size, config.train.guided) == (3, 16, False)
    assert config.train.lr == 0.01 and config.train.adamw_lr == 0.01
    assert (config.mebin.sample_rate, config.mebin.min_interval_len) == (8, 3)
    assert config.binarizer == "otsu" and config.detector.method == "zero-shot"
    assert decide({"classes": 4}).config.classes == 4


def test_settings_stored_by_older_runs_still_decide(project):
    """A run the database holds from before the settings table (the old form's keys, None for unset
    fields, a retrain's copied settings) is read by the same table: the worker can rerun it."""
    store, info = project
    old = {"classes": "auto", "backbone": "auto", "weights": None, "pretrained": True, "device": "cpu",
           "batch_size": 32, "lr": None, "tau": 100.0, "seed": 0, "guided": True, "binarizer": "mebin",
           "representation": "auto", "refine": "references", "fallback": "peak", "prior": "none",
           "recompute_maps": False, "mebin_sample_rate": 4, "mebin_min_interval_len": 4, "use_labeled_set": True,
           "labels_from_project": True, "parent_run_id": 1, "epochs": None}
    stored = store.get_run(store.start_run(info.id, job_control.DISCOVER, old).id).settings
    decided = decide(stored)
    assert decided.config.classes is None and decided.config.device == "cpu"
    assert decided.decisions["backbone"].asked == "auto" and decided.decisions["representation"].asked == "auto"


@pytest.mark.slow
def test_a_run_with_coco_truth_keeps_it_and_the_evaluate_page_scores_what_the_run_recorded(tmp_path):
    """annotations.json at the data set's root: the worker stores the region truth the run matched,
    and the app's evaluation of the unedited run equals the metrics.json the engine wrote."""
    import json

    from core.dataset import load_dataset
    from test_representation_pipeline import _coco_from_masks

    root = generate_demo(tmp_path / "demo", DemoConfig(**TINY_DEMO))
    (root / "annotations.json").write_text(json.dumps(_coco_from_masks(load_dataset(root))))
    demo_maps(root, tmp_path / "maps")
    store = open_workspace(tmp_path / "workspace")
    try:
        info = intake.create_project(store, "coco", intake.summarize_dataset(root, tmp_path / "maps"))
        settings = {key: value for key, value in TINY_RUN.items() if key != "representation"}
        run = store.start_run(info.id, job_control.DISCOVER, settings)  # representation auto, a scratch backbone
        assert worker.execute(store, run.id) == DONE, store.get_run(run.id).message
        finished = store.get_run(run.id)
        recorded = finished.metrics
        assert recorded["representation"]["asked"] == "auto" and recorded["representation"]["used"] == "descriptors"
        assert "trained from scratch" in recorded["representation"]["why"] and "descriptors" in finished.message
        assert finished.checkpoint_path is None  # the descriptors representation trains no model
        assert recorded["region_truth"].endswith("annotations.json")
        labels = store.list_labels(info.id, SOURCE_GROUND_TRUTH)
        assert len(labels) == recorded["region"]["n"] == len(store.list_regions(info.id))
        assert {label.class_name for label in labels} <= {"scratch", "hole", "stain", "normal"}
        shown = evaluation.evaluate_run(store, run.id)
        for level in ("image", "region"):
            assert shown[level].n == recorded[level]["n"]
            for name in ("nmi", "ari", "f1"):
                assert shown[level].metrics[name] == pytest.approx(recorded[level][name]), (level, name)
    finally:
        store.close()


def test_stored_maps_keep_the_detectors_normal_peaks_for_the_next_run(project):
    """A discovery on stored maps cuts at the same floor as the detection job that made them."""
    from core.dataset import load_dataset
    from jobs.maps import save_maps, stored_normal_peaks

    store, info = project
    keys = [r.relpath for r in load_dataset(Path(info.data_root)).unlabeled]
    store.record_images(info.id, load_dataset(Path(info.data_root)).images)
    maps = {key: np.full((64, 64), float(i), np.float32) for i, key in enumerate(keys)}
    assert stored_normal_peaks(store, info.id, keys) == []  # nothing stored yet
    save_maps(store, info.id, maps, "built-in learned", [0.5, 1.5])
    assert stored_normal_peaks(store, info.id, keys) == [0.5, 1.5]
    save_maps(store, info.id, maps, "imported")  # a later import has no normal images' peaks
    assert stored_normal_peaks(store, info.id, keys) == []


def test_each_kind_waits_in_its_queue_and_classify_on_the_cpu_queue(project):
    from jobs import engine

    store, info = project
    ids = {kind: job_control.start_job(store, info.id, kind, {}) for kind in job_control.JOB_KINDS}
    queues = {kind: store.get_run(run_id).queue for kind, run_id in ids.items()}
    assert queues == {job_control.DISCOVER: "gpu", job_control.DETECT: "gpu", job_control.CLASSIFY: "cpu"}
    found = job_control.client(store)._open().list_workflows(workflow_ids=[engine.workflow_id(i) for i in ids.values()])
    assert {w.workflow_id: (w.queue_name, str(w.status)) for w in found} == {
        engine.workflow_id(ids[kind]): (queue, "ENQUEUED") for kind, queue in queues.items()}
    assert job_control.place(store, store.get_run(ids[job_control.CLASSIFY])) == "queued, 1st in line on the cpu queue"
    assert job_control.place(store, store.get_run(ids[job_control.DETECT])) == "queued, 2nd in line on the gpu queue"
    job_control.cancel_job(store, ids[job_control.CLASSIFY])  # a queued job leaves the queue at once
    (cancelled,) = job_control.client(store)._open().list_workflows(workflow_ids=[engine.workflow_id(ids[job_control.CLASSIFY])])
    assert str(cancelled.status) == "CANCELLED" and store.get_run(ids[job_control.CLASSIFY]).status == CANCELLED
    job_control.client(store).close()
