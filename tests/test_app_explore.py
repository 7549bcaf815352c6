"""AppTest tests of the Explore, Labels & runs, Evaluate and Export pages on a synthetic store.

The store is filled directly through the storage API: tiny images written by the test, regions
with crop and mask PNGs, a finished discovery run with clusters, UMAP points and embeddings.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from storage import AssignmentInput, ClusterInput
from webapp import downloads, evaluation, figures, selection

from builders import Filled, fill_store

ROOT = Path(__file__).resolve().parents[1]
VIEWS = ROOT / "webapp" / "views"


def page(name: str, filled: Filled, **session) -> AppTest:
    """An AppTest of one page with the synthetic project and run selected."""
    at = AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=60)
    at.session_state["project_id"] = filled.project_id
    at.session_state["run_id"] = filled.run_id
    for key, value in session.items():
        at.session_state[key] = value
    return at


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def texts(at: AppTest) -> str:
    """All markdown, captions and alert texts of the page, for assertions on messages."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    for kind in ("success", "info", "warning", "error"):
        parts += [e.value for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def select_points(at: AppTest, region_ids: list[int]) -> None:
    """A box/lasso selection as the chart reports it: points carry [region id, confidence]."""
    at.session_state[selection.CHART_KEY] = {"selection": {
        "points": [{"curve_number": 0, "point_index": i, "customdata": [rid, 0.5]} for i, rid in enumerate(region_ids)],
        "point_indices": list(range(len(region_ids))), "box": [], "lasso": []}}


# ------------------------------------------------------------------------------ explore


def test_selection_parsing_reads_region_ids_from_custom_data():
    state = {"selection": {"points": [{"customdata": [7, 0.9]}, {"customdata": [3, 0.1]}, {"customdata": [7, 0.9]},
                                      {"x": 1.0}], "point_indices": [], "box": [], "lasso": []}}
    assert selection.region_ids_from_selection(state) == [7, 3]
    assert selection.region_ids_from_selection(None) == []
    assert selection.region_ids_from_selection({"selection": {"points": [{"customdata": 5}]}}) == [5]
    # What a browser sends back for custom_data that was a numpy array (a typed array).
    assert selection.region_ids_from_selection({"selection": {"points": [{"customdata": {"0": 9, "1": 0.4}}]}}) == [9]


def test_umap_figure_has_one_trace_per_cluster_with_region_ids(filled):
    points = filled.store.umap_points(filled.run_id)
    clusters = filled.store.list_clusters(filled.run_id)
    figure = figures.umap_figure(points, clusters)
    carried = sorted(int(row[0]) for trace in figure.data for row in trace.customdata)
    assert carried == sorted(filled.region_ids)
    assert len(figure.data) == 3  # three populated clusters; the empty normal slot has no trace
    filled.store.mark_regions_normal(filled.run_id, filled.region_ids[:2])
    figure = figures.umap_figure(filled.store.umap_points(filled.run_id), clusters)
    assert figure.data[-1].name == f"{figures.NORMAL_TRACE} (2)" and figure.data[-1].x == (None,)
    crosses = [int(trace.customdata[i][0]) for trace in figure.data[:-1]
               for i in range(len(trace.x)) if trace.marker.symbol[i] == figures.SYMBOL_MARKED]
    assert sorted(crosses) == sorted(filled.region_ids[:2])


def test_the_legend_counts_every_region_of_a_cluster_as_the_clusters_table(filled):
    """Issue 24, defect 3: the legend said 'cluster 1 (23)' where the table and pickers said 26
    (regions marked normal and placeholders were drawn in traces of their own)."""
    filled.store.mark_regions_normal(filled.run_id, filled.region_ids[:1])
    clusters = filled.store.list_clusters(filled.run_id)
    figure = figures.umap_figure(filled.store.umap_points(filled.run_id), clusters)
    legend = {trace.name for trace in figure.data}
    for cluster in clusters:
        if cluster.region_count:
            assert f"{cluster.display_name} ({cluster.region_count})" in legend


def test_explore_renders_and_selection_shows_the_selected_crops(filled):
    at = page("explore", filled).run()
    no_exception(at)
    assert at.title[0].value == "Explore"
    assert len(at.get("plotly_chart")) == 1
    # Nothing selected: the gallery shows the most doubtful regions.
    assert any("Most doubtful" in s.value for s in at.subheader)
    chosen = filled.region_ids[3:6]
    select_points(at, chosen)
    at.run()
    no_exception(at)
    assert at.session_state[selection.SELECTION_KEY] == chosen
    assert any("Selection · 3 regions" in s.value for s in at.subheader), [s.value for s in at.subheader]
    assert gallery_ids(at) == chosen
    # The selection survives an edit (the figure changes, the chart starts empty).
    click(at, "Mark normal")
    assert at.session_state[selection.SELECTION_KEY] == chosen
    assert gallery_ids(at) == chosen


def test_gallery_pages_through_a_large_selection(tmp_path, monkeypatch):
    big = fill_store(tmp_path, n_images=12)  # 24 regions: two gallery pages of 12
    monkeypatch.setenv("STUDIO_WORKSPACE", str(big.store.workspace))
    st.cache_resource.clear()
    at = page("explore", big, **{selection.SELECTION_KEY: big.region_ids}).run()
    assert gallery_ids(at) == big.region_ids[:12]
    assert any("Page 1 of 2" in c.value for c in at.caption)
    click(at, "Next")
    assert gallery_ids(at) == big.region_ids[12:]
    click(at, "Previous")
    assert gallery_ids(at) == big.region_ids[:12]


def test_select_a_cluster_shows_its_regions(filled):
    at = page("explore", filled).run()
    target = filled.cluster_ids[1]
    at.selectbox(key="explore_show_cluster").set_value(target)
    click(at, "Select")
    expected_ids = [a.region.id for a in filled.store.cluster_regions(target, limit=1000).items]
    assert sorted(at.session_state[selection.SELECTION_KEY]) == sorted(expected_ids)
    assert sorted(gallery_ids(at)) == sorted(expected_ids)


def test_rename_stores_the_name_exactly_and_undo_redo(filled):
    store, target = filled.store, filled.cluster_ids[0]
    at = page("explore", filled).run()
    name = 'Kratzer <b>"tief"</b> =1+1'
    at.selectbox(key="rename_cluster").set_value(target)
    at.text_input(key="rename_name").input(name)
    click(at, "Rename")
    assert store.get_cluster(target).name == name
    assert "Renamed" in texts(at)
    click(at, "Undo")
    assert store.get_cluster(target).name is None
    click(at, "Redo")
    assert store.get_cluster(target).name == name


def test_merge_then_undo_restores_both_clusters(filled):
    store = filled.store
    a, b, c = filled.cluster_ids[:3]
    sizes = {x: store.get_cluster(x).region_count for x in (a, b, c)}
    at = page("explore", filled).run()
    at.selectbox(key="merge_target").set_value(a)
    at.multiselect(key="merge_sources").set_value([b, c])
    click(at, "Merge")
    no_exception(at)
    assert store.get_cluster(a).region_count == sum(sizes.values())
    assert store.get_cluster(b).merged_into_id == a
    assert len(store.list_clusters(filled.run_id)) == 2  # a and the empty normal slot
    click(at, "Undo")
    assert {x: store.get_cluster(x).region_count for x in (a, b, c)} == sizes
    assert store.get_cluster(b).merged_into_id is None


def test_split_move_and_mark_normal_change_the_database(filled):
    store, run_id = filled.store, filled.run_id
    a, b = filled.cluster_ids[:2]
    at = page("explore", filled).run()
    at.selectbox(key="split_cluster").set_value(a)
    at.number_input(key="split_k").set_value(2)
    click(at, "Split")
    no_exception(at)
    live = store.list_clusters(run_id)
    assert len(live) == 5 and store.get_cluster(a).region_count < 6

    moving = [r.region.id for r in store.cluster_regions(b, limit=2).items]
    at.session_state[selection.SELECTION_KEY] = moving
    at.run()
    at.selectbox(key="move_target").set_value(a)
    click(at, "Move")
    assigned = {r.region.id: r.cluster_id for r in store.run_assignments(run_id)}
    assert all(assigned[r] == a for r in moving)

    click(at, "Mark normal")
    marked = {r.region.id for r in store.run_assignments(run_id) if r.is_normal}
    assert marked == set(moving)
    click(at, "Undo")
    assert not any(r.is_normal for r in store.run_assignments(run_id))

    at.selectbox(key="normal_cluster").set_value(b)
    click(at, "Apply")
    assert store.get_cluster(b).is_normal


def test_concurrent_edit_shows_a_conflict_message(filled):
    store, target = filled.store, filled.cluster_ids[2]
    at = page("explore", filled).run()
    store.rename_cluster(target, "named in another tab")  # bumps the version the page saw
    at.selectbox(key="rename_cluster").set_value(target)
    at.text_input(key="rename_name").input("mine")
    click(at, "Rename")
    no_exception(at)
    assert "Edit conflict" in texts(at)
    assert store.get_cluster(target).name == "named in another tab"


def test_image_view_shows_the_fused_class(filled):
    store = filled.store
    store.rename_cluster(filled.cluster_ids[0], "scratch")
    image = store.get_region(filled.region_ids[0]).image
    at = page("explore", filled).run()
    at.selectbox(key="explore_image_pick").set_value(image)
    at.run()
    no_exception(at)
    metric = [m for m in at.metric if m.label.startswith("Image class")]
    assert metric and metric[0].value == "scratch"


def click(at: AppTest, label: str) -> None:
    """Click the (first) button with this label and run the page."""
    buttons = [b for b in at.button if b.label == label]
    assert buttons, f"no button {label!r}: {[b.label for b in at.button]}"
    buttons[0].click().run()
    no_exception(at)


def gallery_ids(at: AppTest) -> list[int]:
    """Region ids of the gallery thumbnails, from their open buttons (key "open_<id>"), in order."""
    return [int(b.key.removeprefix("open_")) for b in at.button if b.key and b.key.startswith("open_")]


# ------------------------------------------------------------------------------ labels & runs


def second_run(filled: Filled, *, swap: int = 2) -> int:
    """A finished second run of the same regions, as a retraining would leave it: the same three
    groups under shifted slots, plus `swap` regions of group 0 moved into a new fourth cluster."""
    store = filled.store
    run = store.start_run(filled.project_id, "discover", {"classes": 4, "labels_from_project": True},
                          status="running", parent_run_id=filled.run_id)
    old = {a.region.id: a for a in store.run_assignments(filled.run_id)}
    slot_of = {cid: (i + 1) % 3 for i, cid in enumerate(filled.cluster_ids[:3])}
    moved = [rid for rid, a in old.items() if a.cluster_id == filled.cluster_ids[0]][:swap]
    clusters = [ClusterInput(slot=s) for s in range(4)] + [ClusterInput(slot=4, is_normal=True)]
    assignments = [AssignmentInput(rid, 3 if rid in moved else slot_of[a.cluster_id], a.confidence, a.umap_x, a.umap_y)
                   for rid, a in old.items()]
    store.write_results(run.id, clusters, assignments)
    store.finish_run(run.id)
    return run.id


def test_labels_page_promotes_named_clusters(filled):
    store = filled.store
    store.rename_cluster(filled.cluster_ids[0], "scratch")
    store.rename_cluster(filled.cluster_ids[1], "hole")
    at = page("labels", filled).run()
    no_exception(at)
    assert at.title[0].value == "Labels & runs"
    click(at, "Add the 2 named clusters to the labeled set")
    labeled = store.labeled_set(filled.project_id)
    in_named = {a.region.id: a.cluster_name for a in store.run_assignments(filled.run_id) if a.cluster_name}
    assert labeled == in_named and set(labeled.values()) == {"scratch", "hole"}
    assert "regions are now labeled" in texts(at)
    # One run only: the comparison explains itself instead of showing an empty table.
    assert "Only one finished run" in texts(at)


def test_the_promote_button_says_what_it_does_with_regions_marked_normal(filled):
    """Issue 24, defect 6: the help said regions marked normal are skipped; they become 'normal' labels."""
    store = filled.store
    store.rename_cluster(filled.cluster_ids[0], "scratch")
    marked = next(a.region.id for a in store.run_assignments(filled.run_id) if a.cluster_id == filled.cluster_ids[0])
    store.mark_regions_normal(filled.run_id, [marked])
    at = page("labels", filled).run()
    promote = at.button(key="labels_promote")
    assert "skipped" not in promote.help and "labeled 'normal'" in promote.help
    promote.click().run()
    assert store.labeled_set(filled.project_id)[marked] == "normal"  # what the help says


def test_labels_page_compares_runs_and_carries_names(filled):
    store = filled.store
    store.rename_cluster(filled.cluster_ids[0], "scratch")
    new_run = second_run(filled, swap=2)
    at = page("labels", filled).run()
    no_exception(at)
    at.selectbox(key="compare_a").set_value(filled.run_id)
    at.selectbox(key="compare_b").set_value(new_run)
    at.run()
    no_exception(at)
    values = {m.label: m.value for m in at.metric}
    assert values["Regions in both runs"] == str(len(filled.region_ids))
    assert values["Changed cluster"] == "2"
    assert values["New clusters in B"] == "1"
    changed = at.dataframe[-1].value
    assert len(changed) == 2 and set(changed["cluster in A"]) == {"scratch"}
    click(at, "Give B's unnamed clusters the names of their matches in A")
    names = {c.name for c in store.list_clusters(new_run) if c.name}
    assert names == {"scratch"}


def test_retrain_starts_a_job_with_the_labeled_set(filled, monkeypatch):
    from webapp import job_control

    launched = []
    monkeypatch.setattr(job_control.engine.JobClient, "enqueue", lambda client, run_id, kind: launched.append(run_id))
    store = filled.store
    store.rename_cluster(filled.cluster_ids[0], "scratch")
    store.promote_to_labels(filled.run_id)
    at = page("labels", filled).run()
    click(at, "Start the new run")
    assert len(launched) == 1
    run = store.get_run(launched[0])
    assert run.settings["labels_from_project"] is True and run.parent_run_id == filled.run_id
    assert f"Run #{run.id} started" in texts(at)


# ------------------------------------------------------------------------------ evaluate


def test_evaluate_page_shows_metrics_and_confusion(filled):
    at = page("evaluate", filled).run()
    no_exception(at)
    values = {m.label: m.value for m in at.metric}
    # Clusters equal the ground-truth classes exactly in the synthetic run.
    assert values["NMI"] == "1.000" and values["F1"] == "1.000"
    assert len(at.get("plotly_chart")) >= 2
    result = evaluation.evaluate_run(filled.store, filled.run_id)
    assert result["image"].n == 9 and result["region"].n == 18
    assert result["region"].confusion.to_numpy().sum() == 18
    # Moving regions across clusters lowers the region-level score.
    a, b = filled.cluster_ids[:2]
    filled.store.move_regions(filled.run_id, [r.region.id for r in filled.store.cluster_regions(a, limit=3).items], b)
    assert evaluation.evaluate_run(filled.store, filled.run_id)["region"].metrics["f1"] < 1.0


def test_evaluate_page_without_ground_truth_says_so(tmp_path, monkeypatch):
    bare = fill_store(tmp_path)
    images = bare.store.list_images(bare.project_id)
    from core.records import ImageRecord as Record

    bare.store.record_images(bare.project_id, [Record(tmp_path / "data" / i.relpath, i.relpath, i.role, None)
                                               for i in images], compute_hash=False)
    monkeypatch.setenv("STUDIO_WORKSPACE", str(bare.store.workspace))
    st.cache_resource.clear()
    at = page("evaluate", bare).run()
    no_exception(at)
    assert "No ground truth" in texts(at)


def test_evaluate_page_shows_region_truth_and_coverage_without_image_classes(tmp_path, monkeypatch):
    """A plain folder with COCO annotations: no image classes, region-level metrics, confusion and recall."""
    from core.records import ImageRecord as Record
    from storage import SOURCE_GROUND_TRUTH

    bare = fill_store(tmp_path)
    images = bare.store.list_images(bare.project_id)
    bare.store.record_images(bare.project_id, [Record(tmp_path / "data" / i.relpath, i.relpath, i.role, None)
                                               for i in images], compute_hash=False)
    assignments = bare.store.run_assignments(bare.run_id)
    truth = {a.region.id: ("open" if i % 2 else "short") for i, a in enumerate(assignments)}
    bare.store.set_labels(bare.project_id, truth, source=SOURCE_GROUND_TRUTH)
    result = evaluation.evaluate_run(bare.store, bare.run_id)
    assert "image" not in result and result["region"].n == len(truth)
    assert sorted(result["region"].confusion.index) == ["open", "short"]
    monkeypatch.setenv("STUDIO_WORKSPACE", str(bare.store.workspace))
    st.cache_resource.clear()
    at = page("evaluate", bare).run()
    no_exception(at)
    assert "No ground truth" not in texts(at) and any("Region level" in s.value for s in at.subheader)
    assert {m.label for m in at.metric} >= {"NMI", "ARI", "F1"}


# ------------------------------------------------------------------------------ export


def test_export_bytes_match_the_database(filled):
    store = filled.store
    store.rename_cluster(filled.cluster_ids[0], "=HYPERLINK(1)")
    store.mark_regions_normal(filled.run_id, filled.region_ids[-1:])
    regions = pd.read_csv(io.BytesIO(downloads.regions_csv_bytes(store, filled.run_id)))
    assigned = {a.region.id: a for a in store.run_assignments(filled.run_id)}
    assert sorted(regions["region_id"]) == sorted(assigned)
    for row in regions.itertuples(index=False):
        a = assigned[row.region_id]
        assert (row.x0, row.y0, row.x1, row.y1) == a.region.box
        assert row.cluster_id == a.cluster_id
        assert row.confidence == pytest.approx(a.confidence)
    assert set(regions.loc[regions["cluster_id"] == filled.cluster_ids[0], "class_name"]) <= {"'=HYPERLINK(1)", "normal"}
    assert regions.loc[regions["region_id"] == filled.region_ids[-1], "class_name"].item() == "normal"
    chosen = filled.region_ids[:3]
    part = pd.read_csv(io.BytesIO(downloads.regions_csv_bytes(store, filled.run_id, chosen)))
    assert sorted(part["region_id"]) == sorted(chosen)
    images = pd.read_csv(io.BytesIO(downloads.images_csv_bytes(store, filled.run_id, chosen)))
    assert set(images["image"]) == {assigned[r].region.image for r in chosen}
    with zipfile.ZipFile(io.BytesIO(downloads.crops_zip_bytes(store, filled.run_id))) as archive:
        crops = [n for n in archive.namelist() if n.endswith(".png")]
        assert len(crops) == len(assigned) - 1  # the region marked normal is left out
    coco = json.loads(downloads.coco_json_bytes(store, filled.run_id))
    assert len(coco["annotations"]) == len(assigned) - 1


def test_export_page_offers_everything_or_the_selection(filled):
    at = page("export", filled).run()
    no_exception(at)
    assert at.title[0].value == "Export"
    values = {m.label: m.value for m in at.metric}
    assert values["Regions"] == str(len(filled.region_ids))
    at = page("export", filled, **{selection.SELECTION_KEY: filled.region_ids[:4]}).run()
    at.radio(key="export_scope").set_value(1).run()
    no_exception(at)
    values = {m.label: m.value for m in at.metric}
    assert values["Regions"] == "4"
    preview = at.dataframe[-1].value
    assert sorted(preview["region_id"]) == sorted(filled.region_ids[:4])


# ------------------------------------------------------------------------------ issue 11


def test_names_with_html_are_escaped_and_shortened_in_every_plot_label(filled):
    store = filled.store
    long_html = "<b>html</b> " + "x" * 150
    store.rename_cluster(filled.cluster_ids[0], long_html)
    figure = figures.umap_figure(store.umap_points(filled.run_id), store.list_clusters(filled.run_id))
    names = [trace.name for trace in figure.data]
    assert not any("<b>" in n for n in names) and any(n.startswith("&lt;b&gt;html&lt;/b&gt;") for n in names)
    assert all(len(n) < 80 for n in names)  # the legend does not clip a 160-character name
    assert "<b>html" not in str(figure.data[0].customdata)  # the hover shows it literally too
    table = evaluation.evaluate_run(store, filled.run_id)["image"].confusion
    confusion = figures.confusion_figure(table, "t")
    labels = list(confusion.data[0].x) + list(confusion.layout.xaxis.ticktext)
    assert labels and not any("<b>" in str(v) for v in labels)
    assert confusion.layout.height >= 120 + 44 * len(table.index)  # rows keep their height
    assert figures.plot_text("<b>html</b>", 8) == "&lt;b&gt;html…"  # cut before escaping, never mid-escape


def test_the_plot_keeps_the_selection_highlighted(filled):
    chosen = filled.region_ids[:3]
    figure = figures.umap_figure(filled.store.umap_points(filled.run_id), filled.store.list_clusters(filled.run_id),
                                 selected=chosen)
    highlighted = sorted(int(trace.customdata[i][0]) for trace in figure.data for i in (() if trace.selectedpoints is None else trace.selectedpoints))
    assert highlighted == sorted(chosen)


def test_clicking_a_thumbnail_opens_the_region_in_its_image(filled):
    at = page("explore", filled, **{selection.SELECTION_KEY: filled.region_ids[:2]}).run()
    target = filled.region_ids[1]
    at.button(key=f"open_{target}").click().run()
    no_exception(at)
    assert f"Region #{target}" in texts(at)
    assert any(f"region #{target} in red" in (img.caption or "") for e in at.get("image") for img in e.proto.imgs)


def test_cards_count_clusters_with_regions_and_the_three_normal_states_apart(tmp_path, monkeypatch):
    filled = fill_store(tmp_path)
    store = filled.store
    # A whole-image placeholder (area 0) of an image where MEBin found nothing, in its own run.
    from core.records import Region as RegionRecord

    image = store.list_images(filled.project_id)[0].relpath
    blank = np.zeros((64, 64), dtype=np.uint8)
    (placeholder,) = store.record_regions(filled.project_id, [RegionRecord(
        image, 9, (0, 0, 64, 64), np.zeros((64, 64, 3), np.uint8), blank, 0, 0.0)],
        replace=False)
    run = store.start_run(filled.project_id, "discover", {"classes": 3}, status="running")
    clusters = [ClusterInput(slot=s) for s in range(5)] + [ClusterInput(slot=5, is_normal=True)]
    ids = filled.region_ids
    assignments = [AssignmentInput(r, 0 if i < 6 else 1, 0.9, float(i), 0.0, None) for i, r in enumerate(ids[:-2])]
    assignments += [AssignmentInput(ids[-2], 5, 0.8, 1.0, 1.0, None), AssignmentInput(ids[-1], 1, 0.7, 2.0, 1.0, None),
                    AssignmentInput(placeholder.id, 5, 0.6, 3.0, 3.0, None)]
    store.write_results(run.id, clusters, assignments)
    store.finish_run(run.id)
    store.mark_regions_normal(run.id, [ids[-1]])
    monkeypatch.setenv("STUDIO_WORKSPACE", str(store.workspace))
    st.cache_resource.clear()
    at = AppTest.from_file(str(VIEWS / "explore.py"), default_timeout=60)
    at.session_state["project_id"], at.session_state["run_id"] = filled.project_id, run.id
    at.run()
    no_exception(at)
    values = {m.label: m.value for m in at.metric}
    assert values["Clusters"] == "3"  # slots 0, 1 and the normal one hold regions; three are empty
    assert values["Marked normal"] == "1" and values["Model: normal"] == "1" and values["No anomaly"] == "1"
    at.button(key="explore_select_none_found").click().run()
    assert at.session_state[selection.SELECTION_KEY] == [placeholder.id]
    assert "no anomaly found" in texts(at)
    figure = figures.umap_figure(store.umap_points(run.id), store.list_clusters(run.id))
    (legend,) = [t for t in figure.data if t.name.startswith(figures.NO_ANOMALY_TRACE)]
    assert legend.name.endswith("(1)") and legend.marker.symbol == "circle-open"
    rings = [(int(t.customdata[i][0]), t.marker.color) for t in figure.data if t.customdata is not None
             for i in range(len(t.x)) if t.marker.symbol[i] == figures.SYMBOL_NO_ANOMALY]
    assert [r for r, _ in rings] == [placeholder.id] and "rgba(0,0,0,0)" not in str(rings[0][1])  # visible
    store.close()


def test_colour_by_confidence_keeps_the_traces_and_colours_points_on_one_scale(filled):
    points, clusters = filled.store.umap_points(filled.run_id), filled.store.list_clusters(filled.run_id)
    by_cluster = figures.umap_figure(points, clusters)
    by_confidence = figures.umap_figure(points, clusters, colour="confidence")
    assert [t.name for t in by_confidence.data] == [t.name for t in by_cluster.data]
    for trace in by_confidence.data:
        confidence = points.set_index("region_id").loc[[int(r) for r in trace.customdata[:, 0]], "confidence"]
        assert list(trace.marker.color) == pytest.approx(confidence.tolist(), abs=1e-6)
    assert sum(bool(t.marker.showscale) for t in by_confidence.data) == 1
    with pytest.raises(ValueError, match="colour must be one of"):
        figures.umap_figure(points, clusters, colour="rainbow")
    at = page("explore", filled).run()
    at.radio(key="explore_colour_by").set_value("confidence").run()
    no_exception(at)


def test_a_box_or_lasso_selects_every_region_inside_drawn_or_not(filled):
    points = filled.store.umap_points(filled.run_id)
    x0, x1 = float(points["x"].quantile(0.2)), float(points["x"].quantile(0.8))
    y0, y1 = float(points["y"].min()) - 1, float(points["y"].max()) + 1
    inside = points[(points["x"] >= x0) & (points["x"] <= x1)]["region_id"].tolist()
    box = {"selection": {"points": [], "box": [{"x": [x1, x0], "y": [y0, y1]}], "lasso": []}}
    assert sorted(selection.region_ids_in_shapes(box, points)) == sorted(inside)
    lasso = {"selection": {"points": [], "box": [], "lasso": [{"x": [x0, x1, x1, x0], "y": [y0, y0, y1, y1]}]}}
    assert sorted(selection.region_ids_in_shapes(lasso, points)) == sorted(inside)
    assert selection.region_ids_in_shapes({"selection": {"points": [{"customdata": [3, 0.1]}]}}, points) is None
    # The page adopts it: all regions inside, though the plot may draw only a sample of them.
    at = page("explore", filled)
    at.session_state[selection.CHART_KEY] = box
    at.run()
    no_exception(at)
    assert sorted(at.session_state[selection.SELECTION_KEY]) == sorted(inside)


def test_a_large_run_is_drawn_as_a_sample_that_keeps_what_matters(filled):
    store = filled.store
    store.mark_regions_normal(filled.run_id, filled.region_ids[:2])
    points, clusters = store.umap_points(filled.run_id), store.list_clusters(filled.run_id)
    figure = figures.umap_figure(points, clusters, selected=filled.region_ids[-1:], limit=6)
    drawn = [int(r) for t in figure.data if t.customdata is not None for r in t.customdata[:, 0]]
    assert len(drawn) == 6 and set(filled.region_ids[:2] + filled.region_ids[-1:]) <= set(drawn)
    legend = {t.name for t in figure.data}
    assert all(f"{c.display_name} ({c.region_count})" in legend for c in clusters if c.region_count)
    assert figures.drawn_points(points, limit=6).equals(figures.drawn_points(points, limit=6))  # a fixed sample
