"""Exports read back with pandas / zipfile / json and compared field by field."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from storage import export
from storage.api import Store
from storage.records import NORMAL_CLASS

from builders import Scenario, build_scenario

FORMULA = "=HYPERLINK(\"http://x\",\"click\")"
NAMES = {1: FORMULA, 2: "Kratzer «groß» <i>&amp;</i>, \"q\""}


def _prepare(store: Store, tmp_path: Path) -> tuple[Scenario, int]:
    scenario = build_scenario(store, tmp_path)
    for slot, name in NAMES.items():
        store.rename_cluster(scenario.clusters[slot], name)
    marked = [r for r, s in scenario.slots.items() if s == 1][0]
    store.mark_regions_normal(scenario.run_id, [marked])
    return scenario, marked


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""], encoding="utf-8")


def test_neutralize_cell() -> None:
    for text in ("=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"):
        assert export.neutralize_cell(text) == "'" + text
    for value in ("plain", "a=b", 3, -2.5, None, "'already"):
        assert export.neutralize_cell(value) == value


def test_regions_csv_field_by_field(store: Store, tmp_path: Path) -> None:
    scenario, marked = _prepare(store, tmp_path)
    path = export.export_regions_csv(store, scenario.run_id, tmp_path / "out" / "regions.csv")
    frame = _read(path)
    assert list(frame.columns) == export.REGION_COLUMNS
    expected = {a.region.id: a for a in store.run_assignments(scenario.run_id)}
    assert sorted(frame["region_id"]) == sorted(expected) and len(frame) == len(scenario.region_ids)
    for row in frame.itertuples(index=False):
        item = expected[row.region_id]
        slot = scenario.slots[row.region_id]
        assert row.image == item.region.image
        assert (row.x0, row.y0, row.x1, row.y1) == item.region.box
        assert row.cluster_id == item.cluster_id == scenario.clusters[slot]
        if slot == 0 or row.region_id == marked:
            assert row.class_name == NORMAL_CLASS and row.is_normal
        else:
            name = NAMES[slot]
            assert row.class_name == ("'" + name if name.startswith("=") else name) and not row.is_normal
        assert row.confidence == pytest.approx(item.confidence, abs=1e-12)
        assert row.anomaly_score == pytest.approx(item.region.score, abs=1e-12)
        assert row.area == item.region.area and row.run_id == scenario.run_id


def test_images_csv_field_by_field(store: Store, tmp_path: Path) -> None:
    scenario, _ = _prepare(store, tmp_path)
    frame = _read(export.export_images_csv(store, scenario.run_id, tmp_path / "images.csv", tau=5.0))
    assert list(frame.columns) == export.IMAGE_COLUMNS
    expected = {c.image: c for c in store.image_classes(scenario.run_id, tau=5.0)}
    assert sorted(frame["image"]) == sorted(expected)
    for row in frame.itertuples(index=False):
        item = expected[row.image]
        assert row.class_name == ("'" + item.class_name if item.class_name.startswith("=") else item.class_name)
        assert (None if pd.isna(row.cluster_id) else int(row.cluster_id)) == item.cluster_id
        assert row.confidence == pytest.approx(item.confidence, abs=1e-12)
        assert row.region_count == item.region_count == 3 and row.run_id == scenario.run_id


def test_crops_zip_folder_per_class(store: Store, tmp_path: Path) -> None:
    scenario, marked = _prepare(store, tmp_path)
    path = export.export_crops_zip(store, scenario.run_id, tmp_path / "crops.zip")
    crops = {a.region.id: Path(a.region.crop_path).read_bytes() for a in store.run_assignments(scenario.run_id)}
    with zipfile.ZipFile(path) as archive:
        classes = pd.read_csv(io.BytesIO(archive.read("classes.csv")), keep_default_na=False)
        manifest = pd.read_csv(io.BytesIO(archive.read("crops.csv")), keep_default_na=False)
        folder_of = dict(zip(classes["class_name"], classes["folder"]))
        assert set(folder_of) == {"'" + NAMES[1], NAMES[2]}  # class names as given (CSV-neutralized)
        assert "/" not in folder_of["'" + NAMES[1]] and '"' not in folder_of[NAMES[2]]
        expected_regions = {r for r, s in scenario.slots.items() if s != 0 and r != marked}
        assert set(manifest["region_id"]) == expected_regions
        files = [n for n in archive.namelist() if n.endswith(".png")]
        assert len(files) == len(expected_regions)
        for row in manifest.itertuples(index=False):
            assert archive.read(row.file) == crops[row.region_id]
            slot = scenario.slots[row.region_id]
            assert row.file.split("/")[0] == export.folder_name(NAMES[slot])
    with_normal = export.export_crops_zip(store, scenario.run_id, tmp_path / "all.zip", include_normal=True)
    with zipfile.ZipFile(with_normal) as archive:
        assert sum(n.startswith(f"{NORMAL_CLASS}/") for n in archive.namelist()) == sum(
            1 for r, s in scenario.slots.items() if s == 0 or r == marked
        )


def test_crops_zip_distinct_folders_for_colliding_names(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path)
    store.rename_cluster(scenario.clusters[1], "a/b")
    store.rename_cluster(scenario.clusters[2], "a_b")
    with zipfile.ZipFile(export.export_crops_zip(store, scenario.run_id, tmp_path / "c.zip")) as archive:
        classes = pd.read_csv(io.BytesIO(archive.read("classes.csv")), keep_default_na=False)
    assert sorted(classes["class_name"]) == ["a/b", "a_b"] and classes["folder"].nunique() == 2


def test_coco_json(store: Store, tmp_path: Path) -> None:
    scenario, marked = _prepare(store, tmp_path)
    data = json.loads(export.export_coco_json(store, scenario.run_id, tmp_path / "coco.json").read_text(encoding="utf-8"))
    categories = {c["id"]: c["name"] for c in data["categories"]}
    assert sorted(categories.values()) == sorted(NAMES.values())  # exact names, no CSV quoting in JSON
    images = {i["id"]: i for i in data["images"]}
    assert {i["file_name"] for i in images.values()} == {r.relpath for r in scenario.records if r.role == "unlabeled"}
    assert all((i["width"], i["height"]) == (32, 32) for i in images.values())
    expected = {a.region.id: a for a in store.run_assignments(scenario.run_id)}
    annotated = {a["region_id"] for a in data["annotations"]}
    assert annotated == {r for r, s in scenario.slots.items() if s != 0 and r != marked}
    for annotation in data["annotations"]:
        item = expected[annotation["region_id"]]
        x0, y0, x1, y1 = item.region.box
        assert annotation["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert images[annotation["image_id"]]["file_name"] == item.region.image
        assert categories[annotation["category_id"]] == NAMES[scenario.slots[item.region.id]]
        assert annotation["area"] == item.region.area and annotation["iscrowd"] == 0
        assert annotation["score"] == pytest.approx(item.region.score)
    everything = export.coco_dict(store, scenario.run_id, include_normal=True)
    assert NORMAL_CLASS in {c["name"] for c in everything["categories"]}
    assert len(everything["annotations"]) == len(scenario.region_ids)
