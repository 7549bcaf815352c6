"""Explore: the UMAP of a run's regions, the selection's crops, the clusters and every edit.

Select points with box or lasso (or a cluster, or an image's regions); their crops appear in the
gallery beside the plot. Name, merge, split, move and mark regions normal / false detection;
every edit is one transaction in storage and can be undone (Ctrl+Z) and redone (Ctrl+Shift+Z).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from storage import ClusterInfo, NotFound
from webapp import explore_state as ex
from webapp import state
from webapp.gallery import THUMB_SIZE, draw_boxes, load_image, thumbnail, thumbnail_uri
from webapp.widgets import empty_state, escape_markdown, metric_cards

#: Thumbnails per gallery page (columns x rows).
GALLERY_COLUMNS, GALLERY_ROWS = 4, 5
PAGE_SIZE = GALLERY_COLUMNS * GALLERY_ROWS
#: Session key of the cluster versions the engineer last saw (for conflict detection).
SEEN_KEY = "explore_seen_versions"
#: Session key of the image shown in the image view.
IMAGE_KEY = "explore_image"

store = state.get_store()
project_id = state.select_project()
run_id = state.select_run(project_id)
assert project_id is not None and run_id is not None  # select_* stop the page otherwise
project = store.get_project(project_id)

st.title("Explore")
ex.show_flashes()

revision = ex.run_revision(store, run_id)
clusters: list[ClusterInfo] = ex.clusters_of(store, store.url, run_id, revision)
points = ex.umap_points(store, store.url, run_id, revision)
seen_versions: dict[int, int] = dict(st.session_state.get(SEEN_KEY, {}).get(run_id, {}))
by_cluster_id = {c.id: c for c in clusters}


def expected(cluster_id: int) -> int | None:
    """The version of a cluster as the engineer saw it (None: not seen yet, no check)."""
    return seen_versions.get(cluster_id)


def name_of(cluster_id: int) -> str:
    cluster = by_cluster_id.get(cluster_id)
    return cluster.display_name if cluster else f"cluster #{cluster_id}"


def cluster_label(cluster_id: int) -> str:
    cluster = by_cluster_id[cluster_id]
    flag = " · normal" if cluster.is_normal else ""
    return f"{cluster.display_name} ({cluster.region_count} regions{flag})"


def plural(count: int, word: str) -> str:
    """'1 region', '3 regions'."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def quoted(name: str) -> str:
    """A name for a message rendered as markdown: quoted and escaped, shown literally."""
    return f"“{escape_markdown(name)}”"


if points.empty:
    empty_state("This run has no regions", "The discovery run finished without regions to show. "
                "Check the Detection & MEBin page: maybe no anomaly was found in the images.")
    st.stop()

# ------------------------------------------------------------------------------ header and toolbar
named = sum(1 for c in clusters if c.name and not c.is_normal)
normal_regions = int(points["is_normal"].sum())
metric_cards([
    ("Regions", f"{len(points):,}"),
    ("Images", f"{points['image'].nunique():,}"),
    ("Clusters", f"{len(clusters)}", "Live clusters (merged ones are hidden)."),
    ("Named", f"{named} / {len(clusters)}", "Clusters with a name: they become the labeled set."),
    ("Normal / false detections", f"{normal_regions:,}", "Regions marked normal, or in a normal cluster."),
])

ex.sync_chart_selection()
known_ids = set(points["region_id"].tolist())
selection = [i for i in ex.selected_ids() if i in known_ids]
can_undo, can_redo = store.can_undo(run_id), store.can_redo(run_id)
tools = st.columns([1.5, 2.0, 1.6, 2.6], vertical_alignment="center")
if tools[0].button("Undo", icon=":material/undo:", disabled=not can_undo, shortcut="Mod+Z",
                   help="Revert the last edit of this run (Ctrl+Z).", width="stretch"):
    ex.perform(lambda: store.undo(run_id), lambda e: f"Undid: {e.kind.replace('_', ' ')}.")
    st.rerun()
if tools[1].button("Redo", icon=":material/redo:", disabled=not can_redo, shortcut="Mod+Shift+Z",
                   help="Re-apply the edit undone last (Ctrl+Shift+Z).", width="stretch"):
    ex.perform(lambda: store.redo(run_id), lambda e: f"Redid: {e.kind.replace('_', ' ')}.")
    st.rerun()
if tools[2].button("Clear selection", icon=":material/deselect:", disabled=not selection, width="stretch"):
    ex.clear_selection()
    st.rerun()
source = st.session_state.get(ex.SELECTION_SOURCE_KEY) or ""
tools[3].caption(
    f"**{len(selection):,} selected** ({escape_markdown(source)})" if selection
    else "Nothing selected: draw a box or a lasso around points, or pick a cluster below."
)

# ------------------------------------------------------------------------------ plot + gallery
left, right = st.columns([3, 2], gap="medium")
with left:
    figure = ex.cached_umap_figure(store, store.url, run_id, revision)
    st.plotly_chart(
        figure, key=ex.CHART_KEY, on_select=ex.on_chart_select, selection_mode=("box", "lasso", "points"),
        config={"displaylogo": False, "modeBarButtonsToRemove": ["toImage"], "scrollZoom": True},
        width="stretch",
    )
    st.caption("UMAP of the region embeddings, one color per cluster. Lasso or box-select points; "
               "double-click to reset the zoom.")


@st.cache_resource(max_entries=4, show_spinner=False)
def region_files(_store, store_url: str, project: int, revision: tuple) -> dict[int, tuple[str | None, str | None]]:
    """region id -> (crop path, mask path) of a project, loaded once per run revision."""
    return {r.id: (r.crop_path, r.mask_path) for r in _store.list_regions(project)}


def files_of(region_id: int) -> tuple[str | None, str | None]:
    files = region_files(store, store.url, project_id, revision)
    if region_id in files:
        return files[region_id]
    try:
        region = store.get_region(region_id)
    except NotFound:
        return None, None
    return region.crop_path, region.mask_path


with right:
    indexed = points.set_index("region_id", drop=False)
    if selection:
        st.subheader(f"Selection · {plural(len(selection), 'region')}")
        shown_ids = selection
    else:
        st.subheader("Most doubtful regions")
        st.caption("Lowest confidence first. Select points on the plot to see their crops here.")
        shown_ids = list(points.sort_values("confidence")["region_id"].head(PAGE_SIZE))
    pages = max(1, math.ceil(len(shown_ids) / PAGE_SIZE))
    page = min(int(st.session_state.get(ex.PAGE_KEY, 0)), pages - 1)
    if pages > 1:
        nav = st.columns([1, 2, 1])
        if nav[0].button("Previous", icon=":material/chevron_left:", disabled=page == 0, key="gallery_prev"):
            st.session_state[ex.PAGE_KEY] = page - 1
            st.rerun()
        nav[1].caption(f"Page {page + 1} of {pages}")
        if nav[2].button("Next", icon=":material/chevron_right:", disabled=page >= pages - 1, key="gallery_next"):
            st.session_state[ex.PAGE_KEY] = page + 1
            st.rerun()
    on_page = shown_ids[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
    grid = st.container(key="explore_gallery")
    with grid:
        for row_start in range(0, len(on_page), GALLERY_COLUMNS):
            cells = st.columns(GALLERY_COLUMNS, gap="small")
            for cell, region_id in zip(cells, on_page[row_start : row_start + GALLERY_COLUMNS]):
                point = indexed.loc[region_id]
                crop, mask = files_of(int(region_id))
                flag = " · normal" if bool(point["is_normal"]) else ""
                cell.image(
                    thumbnail(crop, mask, THUMB_SIZE),
                    caption=f"#{int(region_id)} · {float(point['confidence']):.2f}{flag}",
                    width="stretch",
                )
                cell.caption(escape_markdown(str(point["cluster_name"]))[:40])
    if selection and len(selection) > 0:
        counts = points[points["region_id"].isin(selection)]["cluster_name"].value_counts()
        st.caption("In: " + ", ".join(f"{escape_markdown(str(n))} ({c})" for n, c in counts.head(6).items())
                   + (" ..." if len(counts) > 6 else ""))

# ------------------------------------------------------------------------------ tabs
tab_clusters, tab_selection, tab_image, tab_history = st.tabs(
    ["Clusters", f"Selected regions ({len(selection):,})", "Image view", "History"]
)
# Pickers list populated clusters first (largest first), then the empty ones (e.g. the normal slot).
cluster_ids = [c.id for c in sorted(clusters, key=lambda c: (c.region_count == 0, -c.region_count, c.slot))]
populated = [c for c in clusters if c.region_count > 0]

with tab_clusters:
    table_col, forms_col = st.columns([3, 2], gap="medium")
    with table_col:
        best = points.sort_values("confidence", ascending=False).drop_duplicates("cluster_id").set_index("cluster_id")
        rows = []
        for c in sorted(populated, key=lambda c: -c.region_count):
            sample = None
            if c.id in best.index:
                crop, mask = files_of(int(best.loc[c.id, "region_id"]))
                sample = thumbnail_uri(crop, mask, 64)
            rows.append({
                "sample": sample, "cluster": c.display_name, "regions": c.region_count, "images": c.image_count,
                "confidence": c.mean_confidence, "normal": c.is_normal, "named": bool(c.name),
            })
        table = pd.DataFrame(rows)
        st.dataframe(
            table, hide_index=True, width="stretch", row_height=56, key="explore_cluster_table",
            column_config={
                "sample": st.column_config.ImageColumn("sample", width="small", help="The most confident crop"),
                "cluster": st.column_config.TextColumn("cluster", width="medium"),
                "confidence": st.column_config.ProgressColumn("mean confidence", min_value=0.0, max_value=1.0, format="%.2f"),
                "normal": st.column_config.CheckboxColumn("normal", help="Normal / false detection"),
                "named": st.column_config.CheckboxColumn("named"),
            },
        )
        empty = len(clusters) - len(populated)
        if empty:
            st.caption(f"{empty} empty cluster{'s' if empty > 1 else ''} not listed (still available as move "
                       "and merge targets).")
        pick = st.columns([3, 1], vertical_alignment="bottom")
        show_id = pick[0].selectbox("Cluster to show in the gallery", cluster_ids, format_func=cluster_label,
                                    key="explore_show_cluster")
        if pick[1].button("Select its regions", key="explore_select_cluster", width="stretch"):
            ids = points.loc[points["cluster_id"] == show_id, "region_id"].tolist()
            ex.set_selection(ids, f"cluster {name_of(show_id)}")
            st.rerun()

    with forms_col:
        with st.form("explore_rename", clear_on_submit=True, border=True):
            st.markdown("**Rename a cluster**")
            rename_id = st.selectbox("Cluster", cluster_ids, format_func=cluster_label, key="rename_cluster")
            new_name = st.text_input("New name (Enter to save; empty clears the name)", key="rename_name",
                                     max_chars=200)
            if st.form_submit_button("Rename", icon=":material/edit:", type="primary"):
                old = name_of(rename_id)
                ex.perform(
                    lambda: store.rename_cluster(rename_id, new_name.strip() or None, expected_version=expected(rename_id)),
                    lambda c: f"Renamed {quoted(old)} to {quoted(c.display_name)}.",
                )
                st.rerun()

        with st.form("explore_merge", border=True):
            st.markdown("**Merge clusters**")
            target_id = st.selectbox("Merge into (keeps its name)", cluster_ids, format_func=cluster_label,
                                     key="merge_target")
            source_ids = st.multiselect("Clusters to merge into it", cluster_ids, format_func=cluster_label,
                                        key="merge_sources")
            if st.form_submit_button("Merge", icon=":material/merge:"):
                sources = [s for s in source_ids if s != target_id]
                if not sources:
                    ex.flash("warning", "Choose at least one other cluster to merge into the target.")
                else:
                    names = ", ".join(quoted(name_of(s)) for s in sources)
                    ex.perform(
                        lambda: store.merge_clusters(
                            target_id, sources, expected_versions={i: v for i in [target_id, *sources]
                                                                   if (v := expected(i)) is not None}),
                        lambda c: f"Merged {names} into {quoted(c.display_name)} ({c.region_count} regions).",
                    )
                st.rerun()

        with st.form("explore_split", border=True):
            st.markdown("**Split a cluster**")
            split_cols = st.columns([3, 1])
            split_id = split_cols[0].selectbox("Cluster", cluster_ids, format_func=cluster_label, key="split_cluster")
            k = split_cols[1].number_input("into k", min_value=2, max_value=12, value=2, step=1, key="split_k")
            if st.form_submit_button("Split", icon=":material/call_split:"):
                ex.perform(
                    lambda: store.split_cluster(split_id, int(k), expected_version=expected(split_id)),
                    lambda parts: f"Split {quoted(name_of(split_id))} into {len(parts)} clusters of "
                                  + ", ".join(str(p.region_count) for p in parts) + " regions.",
                )
                st.rerun()

        with st.form("explore_cluster_normal", border=True):
            st.markdown("**Whole cluster is normal / false detection**")
            normal_id = st.selectbox("Cluster", cluster_ids, format_func=cluster_label, key="normal_cluster")
            normal_value = st.radio("Mark", ["normal / false detection", "a defect class"], horizontal=True,
                                    key="normal_cluster_value")
            if st.form_submit_button("Apply", icon=":material/block:"):
                value = normal_value.startswith("normal")
                ex.perform(
                    lambda: store.mark_cluster_normal(normal_id, value, expected_version=expected(normal_id)),
                    lambda c: f"{quoted(c.display_name)} is now " + ("normal / false detection." if value else "a defect class."),
                )
                st.rerun()

with tab_selection:
    if not selection:
        st.info("Select regions first: box or lasso on the plot, **Select its regions** under Clusters, "
                "or an image's regions in the Image view.", icon=":material/touch_app:")
    else:
        n_images = points[points['region_id'].isin(selection)]['image'].nunique()
        st.markdown(f"**{plural(len(selection), 'region')} selected** from {plural(n_images, 'image')}.")
        act = st.columns(2, gap="medium")
        with act[0]:
            with st.form("explore_move", border=True):
                move_target = st.selectbox("Move the selected regions to", cluster_ids, format_func=cluster_label,
                                           key="move_target")
                if st.form_submit_button("Move", icon=":material/drive_file_move:", type="primary"):
                    ex.perform(
                        lambda: store.move_regions(run_id, selection, move_target, expected_version=expected(move_target)),
                        lambda c: f"Moved {plural(len(selection), 'region')} to {quoted(c.display_name)}.",
                    )
                    st.rerun()
        with act[1]:
            with st.container(border=True):
                st.markdown("**Normal / false detection**")
                buttons = st.columns(2)
                if buttons[0].button("Mark normal", icon=":material/block:", key="mark_selection_normal",
                                     help="These regions are no defect (false detections of the detector).",
                                     width="stretch"):
                    ex.perform(lambda: store.mark_regions_normal(run_id, selection, True),
                               lambda n: f"Marked {plural(n, 'region')} as normal / false detection.")
                    st.rerun()
                if buttons[1].button("Clear mark", icon=":material/undo:", key="clear_selection_normal",
                                     width="stretch"):
                    ex.perform(lambda: store.mark_regions_normal(run_id, selection, False),
                               lambda n: f"Cleared the normal mark of {plural(n, 'region')}.")
                    st.rerun()

with tab_image:
    images = sorted(points["image"].unique())
    default_image = st.session_state.get(IMAGE_KEY)
    if selection:
        first = points.loc[points["region_id"] == selection[0], "image"]
        if not first.empty and default_image not in images:
            default_image = first.iloc[0]
    if default_image not in images:
        default_image = images[0]
    view_cols = st.columns([3, 2], gap="medium")
    with view_cols[1]:
        image_rel = st.selectbox("Image", images, index=images.index(default_image), key="explore_image_pick")
        st.session_state[IMAGE_KEY] = image_rel
        image_classes = {c.image: c for c in ex.image_classes_of(store, store.url, run_id, revision)}
        fused = image_classes.get(image_rel)
        members = points[points["image"] == image_rel].sort_values("region_id")
        if fused is not None:
            st.metric("Image class (area-weighted fusion)", fused.class_name, border=True,
                      help="Regions vote with weights growing with their area; normal regions vote 'normal'.")
            st.caption(f"Confidence {fused.confidence:.2f} · {fused.region_count} regions")
            if fused.gt_class:
                st.caption(f"Ground truth: {escape_markdown(fused.gt_class)}")
        st.dataframe(
            members[["region_id", "cluster_name", "confidence", "is_normal"]].rename(
                columns={"region_id": "region", "cluster_name": "cluster", "is_normal": "normal"}),
            hide_index=True, width="stretch",
        )
        if st.button("Select this image's regions", key="explore_select_image", width="stretch"):
            ex.set_selection(members["region_id"].tolist(), f"image {image_rel}")
            st.rerun()
    with view_cols[0]:
        picture = load_image(str(Path(project.data_root) / image_rel))
        if picture is None:
            st.warning(f"The image file {escape_markdown(image_rel)} cannot be read from {escape_markdown(project.data_root)}.")
        else:
            boxes = store.image_assignments(run_id, image_rel)
            colors = [by_cluster_id[a.cluster_id].color if a.cluster_id in by_cluster_id else "#888888" for a in boxes]
            labels = [f"{name_of(a.cluster_id)} {a.confidence:.2f}" for a in boxes]
            normal = [a.is_normal or (a.cluster_id in by_cluster_id and by_cluster_id[a.cluster_id].is_normal)
                      for a in boxes]
            st.image(draw_boxes(picture, [a.region.box for a in boxes], colors, labels, normal),
                     caption=f"{image_rel} · {len(boxes)} regions", width="stretch")

with tab_history:
    history = store.edit_history(run_id)
    if not history:
        st.caption("No edits yet in this run.")
    else:
        st.dataframe(
            pd.DataFrame([{"#": e.id, "edit": e.kind.replace("_", " "), "state": e.state,
                           "when": e.created_at.strftime("%Y-%m-%d %H:%M:%S") if e.created_at else "",
                           "by": e.author or ""} for e in reversed(history)]),
            hide_index=True, width="stretch",
        )

# What the engineer saw on this render: edits submitted from it are checked against these.
st.session_state.setdefault(SEEN_KEY, {})[run_id] = {c.id: c.version for c in clusters}
