""""No anomaly found", "predicted normal" and "marked normal" are three states, kept apart in
storage and in every export."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from storage import export
from storage.api import Store
from storage.records import (
    NO_ANOMALY_CLASS,
    NORMAL_CLASS,
    STATE_DEFECT,
    STATE_MARKED_NORMAL,
    STATE_NO_ANOMALY,
    STATE_NORMAL,
    AssignmentInput,
    ClusterInput,
)

from builders import make_dataset, square_region

#: img_00: one real defect; img_01: a real region the model calls normal; img_02 and img_03: MEBin
#: found nothing (whole-image placeholder, area 0), the model put both in its normal slot.
LAYOUT = {"test/img_00.png": (49, 1), "test/img_01.png": (36, 0), "test/img_02.png": (0, 0), "test/img_03.png": (0, 1)}


def _run(store: Store, tmp_path: Path) -> tuple[int, dict[str, int], dict[int, int]]:
    records = make_dataset(tmp_path / "data", 4)
    project = store.create_project("states", tmp_path / "data")
    store.record_images(project.id, records)
    infos = store.record_regions(project.id, [square_region(image, 0, area) for image, (area, _) in LAYOUT.items()])
    run = store.start_run(project.id, "discover", status="running")
    clusters = store.write_results(
        run.id, [ClusterInput(0, "normal / false detection", is_normal=True), ClusterInput(1, "crack")],
        [AssignmentInput(info.id, slot, 0.9, probabilities=np.eye(2)[slot]) for info, (_, slot) in zip(infos, LAYOUT.values())],
    )
    store.finish_run(run.id)
    return run.id, {i.image: i.id for i in infos}, {c.slot: c.id for c in clusters}


def test_states_are_counted_filtered_and_listed_apart(store: Store, tmp_path: Path) -> None:
    run_id, region_of, clusters = _run(store, tmp_path)
    states = {a.region.image: a.state for a in store.run_assignments(run_id)}
    assert states == {"test/img_00.png": STATE_DEFECT, "test/img_01.png": STATE_NORMAL,
                      "test/img_02.png": STATE_NO_ANOMALY, "test/img_03.png": STATE_NO_ANOMALY}
    store.mark_regions_normal(run_id, [region_of["test/img_00.png"]])  # the engineer: a false detection
    counts = store.state_counts(run_id)
    assert {s: c["regions"] for s, c in counts.items()} == {STATE_DEFECT: 0, STATE_NORMAL: 1, STATE_MARKED_NORMAL: 1, STATE_NO_ANOMALY: 2}
    assert {s: c["images"] for s, c in counts.items()} == {STATE_DEFECT: 0, STATE_NORMAL: 1, STATE_MARKED_NORMAL: 1, STATE_NO_ANOMALY: 2}
    assert [a.region.image for a in store.run_assignments(run_id, state=STATE_NO_ANOMALY)] == ["test/img_02.png", "test/img_03.png"]
    listed = store.no_anomaly_images(run_id)
    assert [(i.image, i.class_name, i.cluster_id) for i in listed] == [("test/img_02.png", NO_ANOMALY_CLASS, None), ("test/img_03.png", NO_ANOMALY_CLASS, None)]
    by_cluster = {c.id: c for c in store.list_clusters(run_id)}
    assert (by_cluster[clusters[0]].no_anomaly_count, by_cluster[clusters[1]].no_anomaly_count) == (1, 1)
    assert by_cluster[clusters[0]].engine_normal and not by_cluster[clusters[1]].engine_normal
    points = store.umap_points(run_id).set_index("image")["state"].to_dict()
    assert points == {**states, "test/img_00.png": STATE_MARKED_NORMAL}


def test_exports_write_no_anomaly_found_as_its_own_value(store: Store, tmp_path: Path) -> None:
    run_id, region_of, clusters = _run(store, tmp_path)
    store.mark_cluster_normal(clusters[1])  # the engineer calls the crack cluster normal
    regions = pd.read_csv(export.export_regions_csv(store, run_id, tmp_path / "regions.csv")).set_index("image")
    assert regions["class_name"].to_dict() == {"test/img_00.png": NORMAL_CLASS, "test/img_01.png": NORMAL_CLASS,
                                               "test/img_02.png": NO_ANOMALY_CLASS, "test/img_03.png": NO_ANOMALY_CLASS}
    assert regions["state"].to_dict() == {"test/img_00.png": STATE_MARKED_NORMAL, "test/img_01.png": STATE_NORMAL,
                                          "test/img_02.png": STATE_NO_ANOMALY, "test/img_03.png": STATE_NO_ANOMALY}
    assert not regions.loc["test/img_02.png", "is_normal"]  # no anomaly found is not "normal"
    images = pd.read_csv(export.export_images_csv(store, run_id, tmp_path / "images.csv")).set_index("image")
    assert images.loc["test/img_02.png", "class_name"] == NO_ANOMALY_CLASS and images.loc["test/img_02.png", "state"] == STATE_NO_ANOMALY
    assert images.loc["test/img_01.png", "class_name"] == NORMAL_CLASS
    coco = json.loads(export.export_coco_json(store, run_id, tmp_path / "c.json", include_normal=True).read_text())
    assert {im["file_name"]: im["state"] for im in coco["images"] if im["state"]}["test/img_03.png"] == STATE_NO_ANOMALY
    assert {a["state"] for a in coco["annotations"]} == {STATE_MARKED_NORMAL, STATE_NORMAL}  # placeholders left out
    coco = export.coco_dict(store, run_id, include_normal=True, include_no_anomaly=True)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert sorted(names[a["category_id"]] for a in coco["annotations"] if a["state"] == STATE_NO_ANOMALY) == [NO_ANOMALY_CLASS] * 2
    with zipfile.ZipFile(export.export_crops_zip(store, run_id, tmp_path / "a.zip", include_no_anomaly=True)) as archive:
        assert sorted(archive.namelist()) == sorted(
            [f"{NO_ANOMALY_CLASS}/{region_of['test/img_02.png']}.png", f"{NO_ANOMALY_CLASS}/{region_of['test/img_03.png']}.png",
             "classes.csv", "crops.csv"])
    with zipfile.ZipFile(export.export_crops_zip(store, run_id, tmp_path / "b.zip")) as archive:
        assert sorted(archive.namelist()) == ["classes.csv", "crops.csv"]


def test_marked_normal_goes_back_into_the_labeled_set(store: Store, tmp_path: Path) -> None:
    """The labeled set a retrain receives holds the engineer's normal verdicts as NORMAL_CLASS."""
    records = make_dataset(tmp_path / "data", 4)
    project = store.create_project("retrain", tmp_path / "data")
    store.record_images(project.id, records)
    regions = store.record_regions(project.id, [square_region(r.relpath, i, 9 + i, x0=8 * i)
                                                for r in records if r.role == "unlabeled" for i in range(2)])
    run = store.start_run(project.id, "discover", status="running")
    slots = [0, 1, 2, 2, 1, 1, 2, 0]  # slot 0 the engine's normal slot, 1 "crack", 2 unnamed
    clusters = {c.slot: c.id for c in store.write_results(
        run.id, [ClusterInput(0, "normal / false detection", is_normal=True), ClusterInput(1, "crack"), ClusterInput(2)],
        [AssignmentInput(r.id, s, 0.8) for r, s in zip(regions, slots)])}
    store.finish_run(run.id)
    marked = regions[1].id  # a "crack" that is a false detection
    store.mark_regions_normal(run.id, [marked])
    store.mark_cluster_normal(clusters[2])  # the unnamed cluster is all false detections
    assert store.promote_to_labels(run.id) == 6
    labeled = store.labeled_set(project.id)
    expected = {r.id: ("crack" if s == 1 else NORMAL_CLASS) for r, s in zip(regions, slots) if s != 0}
    expected[marked] = NORMAL_CLASS
    assert labeled == expected
    assert not {regions[0].id, regions[7].id} & set(labeled)  # the engine's own normal verdicts are no labels
    store.undo(run.id)  # promote is an edit: undone, the labels go
    assert store.labeled_set(project.id) == {}


def test_a_weak_region_is_no_anomaly_found_in_storage_and_exports(store: Store, tmp_path: Path) -> None:
    """An image where nothing cleared the floor: its strongest spot (a real crop, mask pixels and
    all) is stored as weak and reads as "no anomaly found" everywhere, like the whole-image placeholder."""
    from dataclasses import replace

    records = make_dataset(tmp_path / "data", 2)
    project = store.create_project("weak", tmp_path / "data")
    store.record_images(project.id, records)
    spot = replace(square_region("test/img_01.png", 0, 20), weak=True)
    infos = store.record_regions(project.id, [square_region("test/img_00.png", 0, 49), spot])
    assert [i.weak for i in infos] == [False, True] and infos[1].area == 20 and infos[1].no_anomaly
    assert [i.weak for i in store.list_regions(project.id)] == [False, True]
    run = store.start_run(project.id, "discover", status="running")
    clusters = store.write_results(run.id, [ClusterInput(0, "normal / false detection", is_normal=True), ClusterInput(1, "crack")],
                                   [AssignmentInput(info.id, 1, 0.9, probabilities=np.eye(2)[1]) for info in infos])
    store.finish_run(run.id)
    states = {a.region.image: a.state for a in store.run_assignments(run.id)}
    assert states == {"test/img_00.png": STATE_DEFECT, "test/img_01.png": STATE_NO_ANOMALY}
    assert [i.image for i in store.no_anomaly_images(run.id)] == ["test/img_01.png"]
    crack = next(c for c in store.list_clusters(run.id) if c.id == clusters[1].id)
    assert (crack.region_count, crack.no_anomaly_count) == (2, 1)
    assert store.umap_points(run.id).set_index("image")["state"].to_dict() == states
    assert store.promote_to_labels(run.id) == 1  # the named cluster labels its real defect, not the weak spot
    assert set(store.labeled_set(project.id)) == {infos[0].id}
