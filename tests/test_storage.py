"""Storage API: every call, on SQLite and on a real PostgreSQL (fixtures in conftest.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pytest

from core.imageio import read_gray, read_image
from storage.api import Store, open_workspace
from storage.db import environment
from storage.records import (
    NORMAL_CLASS,
    AssignmentInput,
    BinarizationInput,
    ClusterInput,
    EditConflict,
    MapInput,
    NothingToUndo,
    NotFound,
    StorageError,
)

from builders import build_scenario, make_dataset, make_regions, slot_of

STRANGE_NAMES = ['<b>bold</b> & "quotes" \'single\'', "日本語の傷 ✓", "=SUM(A1:A9)", "  spaced  ", "a/b\\c; DROP TABLE x;--"]


# ---------------------------------------------------------------- projects and images


def test_projects_create_list_get_update_delete(store: Store, tmp_path: Path) -> None:
    first = store.create_project(STRANGE_NAMES[0], tmp_path / "data", {"tau": 100, "nested": {"a": [1, 2]}})
    second = store.create_project(STRANGE_NAMES[1], "/somewhere/else")
    assert [p.name for p in store.list_projects()] == STRANGE_NAMES[:2]
    got = store.get_project(first.id)
    assert got.name == STRANGE_NAMES[0] and got.data_root == str(tmp_path / "data")
    assert got.settings == {"tau": 100, "nested": {"a": [1, 2]}}
    assert store.project_dir(first.id).is_dir()
    assert store.update_project_settings(first.id, {"tau": 50}).settings == {"tau": 50}
    assert store.get_project(first.id).settings == {"tau": 50}
    with pytest.raises(NotFound, match="project 999"):
        store.get_project(999)
    with pytest.raises(StorageError):
        store.create_project("   ", tmp_path)
    store.delete_project(first.id)
    assert [p.id for p in store.list_projects()] == [second.id]


def test_delete_project_with_a_run_removes_everything(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path)
    store.merge_clusters(scenario.clusters[1], [scenario.clusters[2]])
    store.delete_project(scenario.project_id)
    assert store.list_projects() == []
    with pytest.raises(NotFound):
        store.get_run(scenario.run_id)


def test_record_images_hash_size_and_upsert(store: Store, tmp_path: Path) -> None:
    records = make_dataset(tmp_path / "data", 3)
    project = store.create_project("p", tmp_path / "data")
    infos = store.record_images(project.id, records)
    assert [i.relpath for i in infos] == [r.relpath for r in records]
    for info, record in zip(infos, records):
        data = record.path.read_bytes()
        assert info.content_hash == hashlib.sha256(data).hexdigest()
        assert info.file_size == len(data)
        assert (info.height, info.width) == (32, 32)
        assert info.role == record.role and info.gt_class == record.gt_class
    again = store.record_images(project.id, records[:1], compute_hash=False)
    assert again[0].id == infos[0].id  # same relpath -> same row
    assert len(store.list_images(project.id)) == 4
    assert [i.relpath for i in store.list_images(project.id, role="normal")] == ["normal/ref.png"]
    assert store.get_image(project.id, "test/img_01.png").gt_class == "scratch"
    with pytest.raises(NotFound, match="missing.png"):
        store.get_image(project.id, "missing.png")


def test_maps_and_binarizations(store: Store, tmp_path: Path) -> None:
    records = make_dataset(tmp_path / "data", 2)
    project = store.create_project("p", tmp_path / "data")
    store.record_images(project.id, records)
    map_file = tmp_path / "maps" / "a.npy"
    map_file.parent.mkdir()
    np.save(map_file, np.ones((4, 4), np.float32))
    inside = store.project_dir(project.id) / "maps" / "b.npy"
    inside.parent.mkdir(parents=True)
    np.save(inside, np.zeros((4, 4), np.float32))
    stats = {"min": 0.0, "max": np.float32(1.5), "mean": 0.25}
    assert store.record_maps(project.id, [MapInput("test/img_00.png", str(map_file), stats), MapInput("test/img_01.png", str(inside))]) == 2
    maps = store.list_maps(project.id)
    assert [(x["image"], x["source"]) for x in maps] == [("test/img_00.png", "imported"), ("test/img_01.png", "imported")]
    assert maps[0]["path"] == str(map_file) and maps[0]["stats"] == {"min": 0.0, "max": 1.5, "mean": 0.25}
    assert maps[1]["path"] == str(inside)  # stored relative to the workspace, returned absolute
    store.record_maps(project.id, [MapInput("test/img_00.png", str(inside), {"max": 2.0})])
    assert len(store.list_maps(project.id)) == 2 and store.list_maps(project.id)[0]["stats"] == {"max": 2.0}

    mask = np.zeros((32, 32), np.uint8)
    mask[4:9, 4:9] = 255
    counts = [0, 1, 1, 1, 1, 2]
    store.record_binarizations(project.id, [BinarizationInput("test/img_00.png", 131, 1, counts, mask, {"sample_rate": 4})])
    store.record_binarizations(project.id, [BinarizationInput("test/img_00.png", 120, 2, counts)])  # replaces
    store.record_binarizations(project.id, [BinarizationInput("test/img_01.png", 99, 1, [1], mask)])
    rows = store.list_binarizations(project.id)
    assert [(r["image"], r["threshold"], r["num_anomalies"]) for r in rows] == [("test/img_00.png", 120, 2), ("test/img_01.png", 99, 1)]
    assert rows[0]["counts"] == counts and rows[0]["mask_path"] is None
    np.testing.assert_array_equal(read_gray(rows[1]["mask_path"]), mask)
    with pytest.raises(NotFound, match="nope.png"):
        store.record_maps(project.id, [MapInput("nope.png", "x.npy")])


def test_regions_files_keys_and_replace(store: Store, tmp_path: Path) -> None:
    records = make_dataset(tmp_path / "data", 2)
    project = store.create_project("p", tmp_path / "data")
    store.record_images(project.id, records)
    regions = make_regions(records, 2)
    infos = store.record_regions(project.id, regions)
    assert [(i.image, i.index, i.box, i.area) for i in infos] == [(r.image, r.index, r.box, r.area) for r in regions]
    for info, region in zip(infos, regions):
        assert Path(info.crop_path).is_relative_to(store.project_dir(project.id) / "crops")
        np.testing.assert_array_equal(read_image(info.crop_path), region.image_crop)
        np.testing.assert_array_equal(read_gray(info.mask_path), region.mask_crop)
        assert info.score == pytest.approx(region.score)
    assert [r.id for r in store.list_regions(project.id)] == [i.id for i in infos]
    assert store.get_region(infos[1].id).box == infos[1].box
    assert store.region_ids_by_key(project.id) == {r.key: i.id for r, i in zip(regions, infos)}
    assert [r.index for r in store.image_regions(project.id, "test/img_00.png")] == [0, 1]
    # Re-extraction of one image replaces its regions only.
    fresh = store.record_regions(project.id, [regions[0]])
    assert len(store.image_regions(project.id, "test/img_00.png")) == 1
    assert len(store.image_regions(project.id, "test/img_01.png")) == 2
    assert fresh[0].id not in {i.id for i in infos[1:]}
    with pytest.raises(NotFound):
        store.get_region(infos[1].id)


# ---------------------------------------------------------------- runs


def test_run_lifecycle_progress_and_cancel(store: Store, tmp_path: Path) -> None:
    project = store.create_project("p", tmp_path)
    run = store.start_run(project.id, "discover", {"epochs": 2})
    assert run.status == "queued" and run.progress == 0 and run.pid is None
    running = store.mark_running(run.id, pid=12345)
    assert running.status == "running" and running.pid == 12345 and running.started_at is not None
    assert store.update_progress(run.id, 0.25, "train", "epoch 1/2", timings={"train_s": 1.5}, loss_history=[1.0, 0.8]) is False
    got = store.get_run(run.id)
    assert (got.progress, got.stage, got.message, got.timings, got.loss_history) == (0.25, "train", "epoch 1/2", {"train_s": 1.5}, [1.0, 0.8])
    assert store.update_progress(run.id, 7.0) is False and store.get_run(run.id).progress == 1.0  # clamped
    assert store.is_cancel_requested(run.id) is False
    flagged = store.cancel_run(run.id)
    assert flagged.status == "running" and flagged.cancel_requested
    assert store.update_progress(run.id, 0.5) is True and store.is_cancel_requested(run.id)
    assert store.mark_cancelled(run.id, "stopped at epoch 1").status == "cancelled"

    done = store.start_run(project.id, "discover", status="running", parent_run_id=run.id)
    assert done.pid is not None and done.parent_run_id == run.id
    finished = store.finish_run(done.id, metrics={"image": {"nmi": 0.61}}, timings={"total_s": 3}, checkpoint_path="ck.pt", loss_history=[0.5], message="ok")
    assert (finished.status, finished.progress, finished.metrics, finished.checkpoint_path) == ("done", 1.0, {"image": {"nmi": 0.61}}, "ck.pt")
    assert finished.finished_at is not None and finished.finished_at >= finished.created_at

    queued = store.start_run(project.id, "detect")
    assert store.cancel_run(queued.id).status == "cancelled"
    failed = store.start_run(project.id, "binarize", status="running")
    assert store.fail_run(failed.id, "map 'x.png' is empty").message == "map 'x.png' is empty"
    with pytest.raises(StorageError, match="cannot start again"):
        store.mark_running(failed.id)
    assert [r.id for r in store.list_runs(project.id)] == [failed.id, queued.id, done.id, run.id]
    assert [r.id for r in store.list_runs(project.id, kind="discover")] == [done.id, run.id]
    assert [r.id for r in store.list_runs(project.id, status="failed")] == [failed.id]
    with pytest.raises(StorageError):
        store.list_runs(project.id, status="bogus")
    with pytest.raises(NotFound):
        store.is_cancel_requested(999)


def test_write_results_is_atomic_and_replaces(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path)
    before = store.list_clusters(scenario.run_id)
    bad = [AssignmentInput(scenario.region_ids[0], 0, 0.9), AssignmentInput(scenario.region_ids[1], 7, 0.9)]
    with pytest.raises(StorageError, match="unknown slot 7"):
        store.write_results(scenario.run_id, [ClusterInput(0)], bad)
    with pytest.raises(StorageError, match="assigned twice"):
        store.write_results(scenario.run_id, [ClusterInput(0)], [AssignmentInput(scenario.region_ids[0], 0, 1.0)] * 2)
    with pytest.raises(StorageError, match="not a region of project"):
        store.write_results(scenario.run_id, [ClusterInput(0)], [AssignmentInput(10**6, 0, 1.0)])
    assert store.list_clusters(scenario.run_id) == before  # the failed writes left the old result intact
    store.rename_cluster(scenario.clusters[1], "old name")
    written = store.write_results(scenario.run_id, [ClusterInput(5, "only", "#123456")], [AssignmentInput(r, 5, 0.7) for r in scenario.region_ids])
    assert [(c.slot, c.name, c.color, c.region_count) for c in written] == [(5, "only", "#123456", len(scenario.region_ids))]
    assert store.edit_history(scenario.run_id) == []  # the history belonged to the replaced result


# ---------------------------------------------------------------- queries


def test_cluster_list_counts_and_pages(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path)
    clusters = store.list_clusters(scenario.run_id)
    assert [(c.slot, c.display_name, c.is_normal) for c in clusters] == [(0, "normal", True), (1, "cluster 1", False), (2, "dent", False)]
    for cluster in clusters:
        members = [r for r, s in scenario.slots.items() if s == cluster.slot]
        assert cluster.region_count == len(members)
        positions = [scenario.region_ids.index(r) for r in members]
        assert cluster.mean_confidence == pytest.approx(np.mean([0.5 + 0.01 * p for p in positions]))
        assert cluster.version == 1 and cluster.color.startswith("#")
    biggest = max(clusters, key=lambda c: c.region_count)
    again = store.get_cluster(biggest.id)
    assert again.mean_confidence == pytest.approx(biggest.mean_confidence)  # float sums may differ in the last bit
    assert dataclasses.replace(again, mean_confidence=None) == dataclasses.replace(biggest, mean_confidence=None)
    pages = [store.cluster_regions(biggest.id, offset=o, limit=2) for o in range(0, biggest.region_count, 2)]
    ids = [item.region.id for page in pages for item in page.items]
    assert len(ids) == len(set(ids)) == biggest.region_count and pages[0].total == biggest.region_count
    confidences = [item.confidence for page in pages for item in page.items]
    assert confidences == sorted(confidences)  # most doubtful first
    high_first = store.cluster_regions(biggest.id, limit=100, order="-confidence").items
    assert [i.confidence for i in high_first] == sorted(confidences, reverse=True)
    by_score = store.cluster_regions(biggest.id, limit=100, order="score").items
    assert [i.region.score for i in by_score] == sorted((i.region.score for i in by_score), reverse=True)
    by_image = store.cluster_regions(biggest.id, limit=100, order="image").items
    assert [(i.region.image, i.region.index) for i in by_image] == sorted((i.region.image, i.region.index) for i in by_image)
    assert store.cluster_regions(biggest.id, offset=1000).items == []
    with pytest.raises(StorageError, match="unknown order"):
        store.cluster_regions(biggest.id, order="random")
    with pytest.raises(NotFound):
        store.get_cluster(10**6)


def test_image_assignments_umap_and_embeddings(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path)
    items = store.image_assignments(scenario.run_id, "test/img_01.png")
    assert [i.region.index for i in items] == [0, 1, 2]
    for item in items:
        assert item.cluster_id == scenario.clusters[scenario.slots[item.region.id]] == item.original_cluster_id
    frame = store.umap_points(scenario.run_id)
    assert list(frame["region_id"]) == sorted(scenario.region_ids)
    for row in frame.itertuples():
        position = scenario.region_ids.index(row.region_id)
        assert (row.x, row.y) == (float(position), float(-position))
        assert row.slot == scenario.slots[row.region_id] and row.is_normal == (row.slot == 0)
        assert Path(row.crop_path).is_file()
    assert set(frame["cluster_name"]) == {"normal", "cluster 1", "dent"}
    ids, vectors = store.embeddings(scenario.run_id)
    assert ids == sorted(scenario.region_ids) and vectors.shape == (len(ids), 8) and vectors.dtype == np.float32
    some, subset = store.embeddings(scenario.run_id, ids[:2])
    np.testing.assert_array_equal(subset, vectors[:2])


def test_image_classes_area_weighted_fusion(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path, images=2)
    tau = 2.0  # small tau so area matters
    classes = {c.image: c for c in store.image_classes(scenario.run_id, tau=tau)}
    assert set(classes) == {"test/img_00.png", "test/img_01.png"}  # the normal reference is not classified
    for relpath, result in classes.items():
        items = store.image_assignments(scenario.run_id, relpath)
        logits = np.array([math.sqrt(i.region.area) / tau for i in items])
        weights = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        fused: dict[str, float] = {}
        for w, item in zip(weights, items):
            name = NORMAL_CLASS if scenario.slots[item.region.id] == 0 else {1: "cluster 1", 2: "dent"}[scenario.slots[item.region.id]]
            fused[name] = fused.get(name, 0.0) + w * item.confidence
        expected = max(fused, key=fused.get)  # type: ignore[arg-type]
        assert result.class_name == expected and result.confidence == pytest.approx(fused[expected])
        assert result.region_count == 3 and result.gt_class in ("dent", "scratch")
    # Marking every region of an image normal makes the image normal with confidence 1.
    first = [i.region.id for i in store.image_assignments(scenario.run_id, "test/img_00.png")]
    store.mark_regions_normal(scenario.run_id, first)
    fused_normal = {c.image: c for c in store.image_classes(scenario.run_id, tau=tau)}["test/img_00.png"]
    assert (fused_normal.class_name, fused_normal.cluster_id, fused_normal.confidence) == (NORMAL_CLASS, None, pytest.approx(1.0))


# ---------------------------------------------------------------- edits


def test_rename_recolor_stored_as_given(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path)
    cluster_id = scenario.clusters[1]
    for name in STRANGE_NAMES:
        assert store.rename_cluster(cluster_id, name).name == name
        assert store.get_cluster(cluster_id).name == name
    assert store.rename_cluster(cluster_id, "").name is None and store.get_cluster(cluster_id).display_name == "cluster 1"
    assert store.recolor_cluster(cluster_id, "#ABCDEF").color == "#abcdef"
    with pytest.raises(StorageError, match="not a #rrggbb"):
        store.recolor_cluster(cluster_id, "red; background:url(x)")
    assert store.get_cluster(cluster_id).version == 1 + len(STRANGE_NAMES) + 2  # one bump per edit


def test_merge_split_move_and_marks(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path)
    c0, c1, c2 = (scenario.clusters[s] for s in (0, 1, 2))
    total = len(scenario.region_ids)
    merged = store.merge_clusters(c1, [c2, c1])
    assert merged.region_count == total - sum(1 for s in scenario.slots.values() if s == 0)
    assert [c.id for c in store.list_clusters(scenario.run_id)] == [c0, c1]
    assert store.get_cluster(c2).merged_into_id == c1
    with pytest.raises(StorageError, match="merged into"):
        store.rename_cluster(c2, "x")
    with pytest.raises(StorageError, match="at least one other"):
        store.merge_clusters(c1, [c1])

    # Split back into the original two groups: the embeddings separate slots 1 and 2 cleanly,
    # but slot 1 itself has two groups (index parity), so split into 3 recovers three groups.
    parts = store.split_cluster(c1, 3, seed=0)
    assert parts[0].id == c1 and len(parts) == 3 and sum(p.region_count for p in parts) == merged.region_count
    groups = []
    for part in parts:
        members = [i.region for i in store.cluster_regions(part.id, limit=1000).items]
        groups.append({(scenario.slots[r.id], r.index % 2 if scenario.slots[r.id] == 1 else 0) for r in members})
    assert all(len(g) == 1 for g in groups)  # each part is exactly one embedding group
    assert {p.slot for p in parts[1:]} == {3, 4}
    with pytest.raises(StorageError, match="cannot split into"):
        store.split_cluster(parts[2].id, parts[2].region_count + 1)
    with pytest.raises(StorageError, match="k >= 2"):
        store.split_cluster(c1, 1)

    moved_ids = [i.region.id for i in store.cluster_regions(c0, limit=2).items]
    target = store.move_regions(scenario.run_id, moved_ids, parts[1].id)
    assert {i.region.id for i in store.cluster_regions(parts[1].id, limit=1000).items} >= set(moved_ids)
    assert target.region_count == parts[1].region_count + 2
    with pytest.raises(NotFound, match="no assignment"):
        store.move_regions(scenario.run_id, [10**6], c0)

    assert store.mark_regions_normal(scenario.run_id, moved_ids) == 2
    assert store.mark_regions_normal(scenario.run_id, moved_ids) == 0  # already normal
    assert all(i.is_normal for i in store.image_assignments(scenario.run_id, store.get_region(moved_ids[0]).image) if i.region.id in moved_ids)
    assert store.mark_cluster_normal(parts[2].id).is_normal is True
    frame = store.umap_points(scenario.run_id)
    assert frame.set_index("region_id").loc[moved_ids, "is_normal"].all()


def test_labels_promote_and_labeled_set(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path)
    c1, c2 = scenario.clusters[1], scenario.clusters[2]
    imported = {scenario.region_ids[0]: "imported-a", scenario.region_ids[1]: "imported-b"}
    assert store.set_labels(scenario.project_id, imported, "imported", author="loader") == 2
    store.set_labels(scenario.project_id, {scenario.region_ids[0]: "gt"}, "ground_truth")
    with pytest.raises(StorageError, match="unknown label source"):
        store.set_labels(scenario.project_id, {scenario.region_ids[0]: "x"}, "guess")
    with pytest.raises(NotFound):
        store.set_labels(scenario.project_id, {10**6: "x"})
    assert store.promote_to_labels(scenario.run_id) == sum(1 for s in scenario.slots.values() if s == 2)  # only "dent" is named
    store.rename_cluster(c1, STRANGE_NAMES[1])
    one = [r for r, s in scenario.slots.items() if s == 1][0]
    store.mark_regions_normal(scenario.run_id, [one])
    count = store.promote_to_labels(scenario.run_id, [c1], author="ana")
    assert count == sum(1 for s in scenario.slots.values() if s == 1)  # the marked one is labeled normal
    engineer = {l.region_id: l for l in store.list_labels(scenario.project_id, "engineer")}
    for region_id, slot in scenario.slots.items():
        if slot == 2:
            assert engineer[region_id].class_name == "dent"
        elif slot == 1 and region_id != one:
            assert engineer[region_id].class_name == STRANGE_NAMES[1] and engineer[region_id].author == "ana"
        elif region_id == one:
            assert engineer[region_id].class_name == NORMAL_CLASS  # marked normal: learned as normal
        else:
            assert region_id not in engineer  # the engine's normal slot is a prediction, not a label
    labeled = store.labeled_set(scenario.project_id)
    assert "gt" not in labeled.values()
    for region_id in imported:
        assert labeled[region_id] == (engineer[region_id].class_name if region_id in engineer else imported[region_id])
    assert len(store.list_labels(scenario.project_id)) == len(engineer) + 3
    assert store.promote_to_labels(scenario.run_id, [c2]) == sum(1 for s in scenario.slots.values() if s == 2)


def _state(store: Store, run_id: int, project_id: int) -> tuple:
    clusters = tuple((c.id, c.name, c.color, c.is_normal, c.merged_into_id, c.region_count) for c in store.list_clusters(run_id, include_merged=True))
    frame = store.umap_points(run_id)
    assignments = tuple(zip(frame["region_id"], frame["cluster_id"], frame["is_normal"]))
    labels = tuple((l.region_id, l.class_name) for l in store.list_labels(project_id, "engineer"))
    return clusters, assignments, labels


def test_undo_redo_chain_of_every_edit_kind(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path)
    run, c0, c1, c2 = scenario.run_id, *(scenario.clusters[s] for s in (0, 1, 2))
    assert not store.can_undo(run) and not store.can_redo(run)
    with pytest.raises(NothingToUndo):
        store.undo(run)
    states = [_state(store, run, scenario.project_id)]
    edits = [
        lambda: store.rename_cluster(c1, "scratch", author="ana"),
        lambda: store.recolor_cluster(c2, "#000000"),
        lambda: store.mark_cluster_normal(c2, True),
        lambda: store.mark_cluster_normal(c2, False),
        lambda: store.move_regions(run, [r for r, s in scenario.slots.items() if s == 0][:2], c1),
        lambda: store.mark_regions_normal(run, [r for r, s in scenario.slots.items() if s == 1][:1]),
        lambda: store.promote_to_labels(run),
        lambda: store.merge_clusters(c1, [c2]),
        lambda: store.split_cluster(c1, 2),
        lambda: store.rename_cluster(c1, "second name"),
        lambda: store.promote_to_labels(run),
    ]
    for edit in edits:
        edit()
        states.append(_state(store, run, scenario.project_id))
        assert states[-1] != states[-2]
    history = store.edit_history(run)
    assert [e.kind for e in history] == ["rename", "recolor", "mark_cluster_normal", "mark_cluster_normal", "move",
                                         "mark_regions_normal", "promote", "merge", "split", "rename", "promote"]  # fmt: skip
    assert history[0].author == "ana" and history[0].payload == {"cluster_id": c1, "field": "name", "before": None, "after": "scratch"}
    for expected in reversed(states[:-1]):
        store.undo(run)
        assert _state(store, run, scenario.project_id) == expected
    assert not store.can_undo(run) and store.can_redo(run)
    for expected in states[1:]:
        store.redo(run)
        assert _state(store, run, scenario.project_id) == expected
    with pytest.raises(NothingToUndo):
        store.redo(run)
    # A new edit after undos drops the redo branch.
    store.undo(run)
    store.undo(run)
    store.rename_cluster(c0, "good")
    assert not store.can_redo(run)
    assert [e.state for e in store.edit_history(run)][-3:] == ["discarded", "discarded", "done"]
    store.undo(run)
    assert _state(store, run, scenario.project_id) == states[-3]


# ---------------------------------------------------------------- comparison


def test_match_clusters_changed_regions_and_carry_over(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path)
    store.rename_cluster(scenario.clusters[1], "scratch")
    second = store.start_run(scenario.project_id, "discover", parent_run_id=scenario.run_id)
    # New run: slots permuted (old 0 -> 2, 1 -> 0, 2 -> 1) and one region moved from old 1 to new 1.
    permutation = {0: 2, 1: 0, 2: 1}
    mover = [r for r, s in scenario.slots.items() if s == 1][0]
    assignments = [AssignmentInput(r, 1 if r == mover else permutation[s], 0.9) for r, s in scenario.slots.items()]
    clusters = store.write_results(second.id, [ClusterInput(0), ClusterInput(1), ClusterInput(2, "kept name")], assignments)
    new = {c.slot: c.id for c in clusters}
    matches = store.match_clusters(scenario.run_id, second.id)
    assert {(m.cluster_a_id, m.cluster_b_id) for m in matches} == {(scenario.clusters[s], new[permutation[s]]) for s in range(3)}
    counts = {s: sum(1 for x in scenario.slots.values() if x == s) for s in range(3)}
    assert {m.cluster_a_id: m.overlap for m in matches}[scenario.clusters[1]] == counts[1] - 1
    changes = store.changed_regions(scenario.run_id, second.id)
    assert [(c.region_id, c.cluster_a_name, c.cluster_b_name) for c in changes] == [(mover, "scratch", "cluster 1")]
    store.carry_over_names(scenario.run_id, second.id, author="ana")
    after = {c.slot: c for c in store.list_clusters(second.id)}
    assert after[0].name == "scratch"  # matched to old 1
    assert after[1].name == "dent"  # matched to old 2
    assert after[2].name == "kept name" and after[2].is_normal is False  # named already: kept
    store.undo(second.id)
    assert [c.name for c in store.list_clusters(second.id)] == [None, None, "kept name"]
    assert store.match_clusters(scenario.run_id, store.start_run(scenario.project_id, "x").id) == []


# ---------------------------------------------------------------- workspace and settings


def test_open_workspace_default_sqlite_and_env_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STUDIO_DATABASE_URL", raising=False)
    opened = open_workspace(tmp_path / "ws")
    assert (tmp_path / "ws" / "studio.sqlite").is_file() and opened.dialect == "sqlite"
    with opened.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    opened.create_project("kept", tmp_path)
    opened.close()
    other = tmp_path / "elsewhere.sqlite"
    monkeypatch.setenv("STUDIO_DATABASE_URL", f"sqlite:///{other}")
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws2"))
    assert environment() == ((tmp_path / "ws2").resolve(), f"sqlite:///{other}")  # the entry points' one read
    via_env = open_workspace(*environment())
    assert other.is_file() and via_env.list_projects() == []
    via_env.close()
    unset = open_workspace(tmp_path / "ws3")  # storage itself never reads the environment
    assert (tmp_path / "ws3" / "studio.sqlite").is_file() and unset.dialect == "sqlite"
    unset.close()
    monkeypatch.chdir(tmp_path)
    via_url = open_workspace(f"sqlite:///{tmp_path / 'ws' / 'studio.sqlite'}")
    assert [p.name for p in via_url.list_projects()] == ["kept"] and via_url.workspace == (tmp_path / "workspace").resolve()
    via_url.close()


def test_storage_does_not_import_streamlit() -> None:
    package = Path(__file__).resolve().parents[1] / "storage"
    for path in package.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+streamlit\b", source, re.MULTILINE), path
        assert ".cuda(" not in source, path
