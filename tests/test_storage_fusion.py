"""The image classes the app shows (Store.image_classes) are core's fusion of the stored region
probabilities, at the run's own tau, with the engineer's edits carried along."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.grouping.fusion import fuse_image
from storage.api import Store
from storage.records import NORMAL_CLASS, AssignmentInput, ClusterInput, StorageError

from builders import make_dataset, square_region

#: Image 0: two equal-area regions, p = [.4, .6, 0] and [.4, 0, .6] (the issue's example).
#: Image 1: three regions of different areas, where tau decides the winner.
PROBABILITIES = {
    "test/img_00.png": ([[0.4, 0.6, 0.0, 0.0], [0.4, 0.0, 0.6, 0.0]], [36, 36]),
    "test/img_01.png": ([[0.0, 0.6, 0.4, 0.0], [0.0, 0.0, 0.9, 0.1], [0.0, 0.0, 0.9, 0.1]], [64, 9, 9]),
}


def _run(store: Store, tmp_path: Path, tau: float) -> tuple[int, dict[int, int]]:
    records = make_dataset(tmp_path / "data", 2)
    project = store.create_project("fusion", tmp_path / "data")
    store.record_images(project.id, records)
    regions = [square_region(image, i, area, x0=8 * i)
               for image, (_, areas) in PROBABILITIES.items() for i, area in enumerate(areas)]
    infos = store.record_regions(project.id, regions)
    run = store.start_run(project.id, "discover", {"tau": tau}, status="running")
    vectors = [np.array(p) for rows, _ in PROBABILITIES.values() for p in rows]
    clusters = store.write_results(
        run.id,
        [ClusterInput(0, "crack"), ClusterInput(1, "hole"), ClusterInput(2, "scratch"), ClusterInput(3, "normal", is_normal=True)],
        [AssignmentInput(info.id, int(p.argmax()), float(p.max()), probabilities=p) for info, p in zip(infos, vectors)],
    )
    store.finish_run(run.id)
    return run.id, {c.slot: c.id for c in clusters}


def _core(image: str, tau: float, columns: np.ndarray | None = None) -> np.ndarray:
    rows, areas = PROBABILITIES[image]
    matrix = np.array(rows) if columns is None else np.array(rows) @ columns
    return fuse_image(matrix, areas, tau)


@pytest.mark.parametrize("tau", [100.0, 2.0])
def test_image_classes_equal_core_fusion_at_the_runs_tau(store: Store, tmp_path: Path, tau: float) -> None:
    run_id, by_slot = _run(store, tmp_path, tau)
    assert store.run_tau(run_id) == tau
    classes = {c.image: c for c in store.image_classes(run_id)}  # no tau given: the run's own
    for image in PROBABILITIES:
        fused = _core(image, tau)
        slot = int(fused.argmax())
        expected = None if slot == 3 else by_slot[slot]
        assert classes[image].cluster_id == expected
        assert classes[image].confidence == pytest.approx(fused[slot], abs=1e-6)
    # The example: core says class 0 ("crack", 0.4); the old winner-confidence sum said "hole".
    assert (classes["test/img_00.png"].class_name, classes["test/img_00.png"].confidence) == ("crack", pytest.approx(0.4))


def test_tau_changes_the_winner_as_in_core(store: Store, tmp_path: Path) -> None:
    run_id, by_slot = _run(store, tmp_path, 100.0)
    image = "test/img_01.png"
    for tau in (100.0, 0.5):
        got = {c.image: c for c in store.image_classes(run_id, tau=tau)}[image]
        assert got.cluster_id == by_slot[int(_core(image, tau).argmax())]
    # At tau 100 the weights are near equal: the two small scratches win; at 0.5 the large hole does.
    assert {c.image: c for c in store.image_classes(run_id, tau=100.0)}[image].class_name == "scratch"
    assert {c.image: c for c in store.image_classes(run_id, tau=0.5)}[image].class_name == "hole"


def test_edits_are_carried_into_the_fused_columns(store: Store, tmp_path: Path) -> None:
    run_id, by_slot = _run(store, tmp_path, 100.0)
    store.merge_clusters(by_slot[2], [by_slot[1]])  # hole goes into scratch: its columns add up
    merged = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=float)  # crack, scratch(+hole), normal
    classes = {c.image: c for c in store.image_classes(run_id)}
    fused = _core("test/img_00.png", 100.0, merged)
    assert classes["test/img_00.png"].cluster_id == by_slot[2]
    assert classes["test/img_00.png"].confidence == pytest.approx(fused.max(), abs=1e-6)
    store.mark_cluster_normal(by_slot[2])  # scratch is normal now: its mass votes normal
    classes = {c.image: c for c in store.image_classes(run_id)}
    assert (classes["test/img_00.png"].class_name, classes["test/img_00.png"].cluster_id) == (NORMAL_CLASS, None)
    assert classes["test/img_00.png"].confidence == pytest.approx(0.6, abs=1e-6)
    store.undo(run_id)
    store.undo(run_id)
    assert {c.image: c for c in store.image_classes(run_id)}["test/img_00.png"].class_name == "crack"


def test_a_moved_region_votes_for_its_new_cluster_with_certainty(store: Store, tmp_path: Path) -> None:
    run_id, by_slot = _run(store, tmp_path, 100.0)
    first = store.image_assignments(run_id, "test/img_00.png")
    store.move_regions(run_id, [first[0].region.id], by_slot[2])  # the engineer says: scratch
    got = {c.image: c for c in store.image_classes(run_id)}["test/img_00.png"]
    expected = fuse_image(np.array([[0.0, 0.0, 1.0], [0.4, 0.0, 0.6]]), [36, 36], 100.0)  # crack, hole, scratch
    assert got.class_name == "scratch" and got.confidence == pytest.approx(expected.max(), abs=1e-6)


def test_probabilities_must_follow_the_slots(store: Store, tmp_path: Path) -> None:
    records = make_dataset(tmp_path / "data", 1)
    project = store.create_project("bad", tmp_path / "data")
    store.record_images(project.id, records)
    info = store.record_regions(project.id, [square_region("test/img_00.png", 0, 9)])[0]
    run = store.start_run(project.id, "discover")
    with pytest.raises(StorageError, match="column j must be slot j"):
        store.write_results(run.id, [ClusterInput(0), ClusterInput(1)],
                            [AssignmentInput(info.id, 0, 0.9, probabilities=np.array([0.9, 0.05, 0.05]))])
    assert store.list_clusters(run.id) == []
