"""storage.points and the image-class filter: the Explore page's fast reads give what the
region-by-region reads give (states, files, clusters, image classes)."""

from __future__ import annotations

import pytest

from builders import fill_store


@pytest.fixture()
def filled(tmp_path):
    result = fill_store(tmp_path, n_images=12, n_classes=3)
    yield result
    result.store.close()


def test_points_agree_with_the_assignments_after_edits(filled):
    store, run_id = filled.store, filled.run_id
    store.mark_regions_normal(run_id, filled.region_ids[:2])
    store.mark_cluster_normal(filled.cluster_ids[1], True)
    store.rename_cluster(filled.cluster_ids[0], "deep scratch")
    geometry = store.umap_geometry(run_id)
    points = store.umap_points(run_id, geometry)
    assert points.equals(store.umap_points(run_id))  # the kept geometry gives the same frame
    by_id = points.set_index("region_id")
    assigned = store.run_assignments(run_id)
    assert sorted(by_id.index) == sorted(a.region.id for a in assigned)
    for a in assigned:
        row = by_id.loc[a.region.id]
        assert (row["cluster_id"], row["state"], row["image"]) == (a.cluster_id, a.state, a.region.image)
        assert (row["crop_path"], row["mask_path"]) == (a.region.crop_path, a.region.mask_path)
        assert bool(row["is_normal"]) == (a.is_normal or store.get_cluster(a.cluster_id).is_normal)
    assert set(points.loc[points["cluster_id"] == filled.cluster_ids[0], "cluster_name"]) == {"deep scratch"}
    versions = store.cluster_versions(run_id)
    store.rename_cluster(filled.cluster_ids[2], "hole")
    assert store.cluster_versions(run_id) != versions  # an edit changes the revision


def test_image_classes_of_some_images_are_those_of_all(filled):
    store, run_id = filled.store, filled.run_id
    store.move_regions(run_id, filled.region_ids[:1], filled.cluster_ids[2])
    everything = {c.image: c for c in store.image_classes(run_id)}
    chosen = sorted(everything)[3:5]
    assert {c.image: c for c in store.image_classes(run_id, images=chosen)} == {i: everything[i] for i in chosen}
    assert store.image_classes(run_id, images=[]) == []


def test_project_counts_are_those_of_the_lists(filled):
    from collections import Counter

    store = filled.store
    images = store.list_images(filled.project_id)
    counts = store.project_counts(filled.project_id)
    assert counts["roles"] == dict(Counter(i.role for i in images))
    assert counts["sizes"] == dict(Counter(f"{i.width} x {i.height}" for i in images if i.width))
    assert counts["gt_classes"] == dict(Counter(i.gt_class for i in images if i.role == "unlabeled" and i.gt_class))
    assert counts["regions"] == len(store.list_regions(filled.project_id)) > 0
    assert counts["maps"] == len(store.list_maps(filled.project_id)) == 0
