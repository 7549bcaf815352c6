"""A finished run is a record: overrides and re-crops make new versions for the next run only."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from storage import export
from storage import models as m
from storage.api import Store
from storage.records import AssignmentInput, BinarizationInput, ClusterInput

from builders import build_scenario, square_region

IMAGE = "test/img_00.png"


def _override(store: Store, project_id: int, threshold: int = 77) -> list:
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[4:9, 4:9] = 255
    return store.record_threshold_override(
        project_id,
        BinarizationInput(IMAGE, threshold, 2, counts=[3, 2, 1], mask=mask, settings={"mebin_threshold": 120}),
        [square_region(IMAGE, 0, 25, side=12), square_region(IMAGE, 1, 4, side=6, x0=20)],
    )


def test_override_leaves_the_finished_run_and_its_export_unchanged(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path, images=3, per_image=3)
    store.record_binarizations(scenario.project_id, [BinarizationInput(IMAGE, 120, 3, counts=[3, 3])])
    before_csv = export.export_regions_csv(store, scenario.run_id, tmp_path / "before.csv").read_bytes()
    before_images = export.export_images_csv(store, scenario.run_id, tmp_path / "before_images.csv").read_bytes()
    before_regions = store.run_regions(scenario.run_id)
    before_counts = [(c.id, c.region_count, c.image_count) for c in store.list_clusters(scenario.run_id)]
    old_of_image = [r for r in before_regions if r.image == IMAGE]

    new = _override(store, scenario.project_id)

    # The finished run: same regions, same files, same counts, same CSVs byte for byte.
    assert store.run_regions(scenario.run_id) == before_regions
    assert all(Path(r.crop_path).is_file() for r in before_regions)  # type: ignore[arg-type]
    assert [(c.id, c.region_count, c.image_count) for c in store.list_clusters(scenario.run_id)] == before_counts
    assert len(store.image_assignments(scenario.run_id, IMAGE)) == 3
    assert store.image_regions(scenario.project_id, IMAGE, run_id=scenario.run_id) == old_of_image
    assert export.export_regions_csv(store, scenario.run_id, tmp_path / "after.csv").read_bytes() == before_csv
    assert export.export_images_csv(store, scenario.run_id, tmp_path / "after_images.csv").read_bytes() == before_images

    # The current binarization and regions are the override's: what the next run uses.
    assert [r.id for r in store.image_regions(scenario.project_id, IMAGE)] == [r.id for r in new]
    assert {r.id for r in store.list_regions(scenario.project_id)} & {r.id for r in old_of_image} == set()
    current = {b["image"]: b for b in store.list_binarizations(scenario.project_id)}[IMAGE]
    assert (current["threshold"], current["version"], current["settings"]["source"]) == (77, 2, "override")
    assert store.threshold_overrides(scenario.project_id) == {IMAGE: 77}
    assert [b["image"] for b in store.pending_overrides(scenario.project_id)] == [IMAGE]


def test_the_next_run_uses_the_override_and_it_stays_in_force(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path, images=3, per_image=3)
    new = _override(store, scenario.project_id)
    time.sleep(0.01)
    run = store.start_run(scenario.project_id, "discover", status="running")
    current = store.list_regions(scenario.project_id)
    assert {r.id for r in new} <= {r.id for r in current}
    store.write_results(run.id, [ClusterInput(0), ClusterInput(1)], [AssignmentInput(r.id, r.index % 2, 0.8) for r in current])
    # The run records the binarization it used: at the override's threshold it stays an override.
    store.record_binarizations(scenario.project_id, [BinarizationInput(IMAGE, 77, 2, settings={"source": "mebin"})])
    store.finish_run(run.id)
    assert [r.id for r in store.image_regions(scenario.project_id, IMAGE, run_id=run.id)] == [r.id for r in new]
    assert len(store.image_regions(scenario.project_id, IMAGE, run_id=scenario.run_id)) == 3  # the first run's
    assert store.threshold_overrides(scenario.project_id) == {IMAGE: 77}
    assert store.pending_overrides(scenario.project_id) == []  # used by a finished run
    # Resetting ends the override for the run after.
    _reset = store.record_threshold_override(scenario.project_id, BinarizationInput(IMAGE, 120, 3), [square_region(IMAGE, 0, 9)], reset=True)
    assert store.threshold_overrides(scenario.project_id) == {} and len(_reset) == 1
    assert store.list_binarizations(scenario.project_id)[0]["version"] == 3


def test_regions_nothing_uses_are_replaced_not_kept(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path, images=3, per_image=3)
    project = store.create_project("fresh", tmp_path / "data")
    store.record_images(project.id, scenario.records)
    first = store.record_regions(project.id, [square_region(IMAGE, 0, 9)])
    second = store.record_regions(project.id, [square_region(IMAGE, 0, 16)])
    assert [r.id for r in store.list_regions(project.id)] == [second[0].id]
    assert store.region_ids_by_key(project.id) == {f"{IMAGE}#0": second[0].id}
    with store.engine.connect() as connection:  # the first version is gone, not kept beside it
        rows = connection.execute(sa.select(m.Region.area).where(m.Region.project_id == project.id)).scalars().all()
    assert rows == [16] and first[0].area == 9


def test_an_override_recorded_the_older_way_is_pending_too(store: Store, tmp_path: Path) -> None:
    """record_binarizations with source "override" (then record_regions) is an override as well."""
    scenario = build_scenario(store, tmp_path, images=2, per_image=2)
    before = store.run_regions(scenario.run_id)
    store.record_binarizations(scenario.project_id, [BinarizationInput(IMAGE, 60, 1, settings={"source": "override"})])
    store.record_regions(scenario.project_id, [square_region(IMAGE, 0, 16)])
    assert store.run_regions(scenario.run_id) == before
    assert [b["threshold"] for b in store.pending_overrides(scenario.project_id)] == [60]
