"""Explore: the UMAP of a run's regions beside the selection's crops, the clusters and every edit.

Select points with box, lasso or a click (or a cluster, or an image's regions); their crops appear
beside the plot with the actions on them right underneath, and the plot keeps the selection
highlighted. Click a crop's label to open the region in its image. Name, merge, split, move and
mark regions normal; every edit is one transaction in storage and can be undone (Ctrl+Z) and
redone (Ctrl+Shift+Z).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from storage import ClusterInfo, NotFound
from storage.records import STATE_MARKED_NORMAL, STATE_NO_ANOMALY, STATE_NORMAL
from webapp import messages, navigation, run_data, selection
from webapp.workspace import get_store
from webapp.gallery import THUMB_SIZE, draw_boxes, load_image, thumbnail, thumbnail_uri
from webapp.widgets import empty_state, literal, metric_cards

#: Thumbnails per gallery page (columns x rows): three rows keep the actions on the first screen.
GALLERY_COLUMNS, GALLERY_ROWS = 4, 3
PAGE_SIZE = GALLERY_COLUMNS * GALLERY_ROWS
#: Session key of the cluster versions the engineer last saw (for conflict detection).
SEEN_KEY = "explore_seen_versions"
#: Session key of the image shown in the image view.
IMAGE_KEY = "explore_image"

store = get_store()
project_id = navigation.select_project()
run_id = navigation.select_run(project_id)
assert project_id is not None and run_id is not None  # select_* stop the page otherwise
project = store.get_project(project_id)

st.title("Explore", anchor=False)
messages.show()

revision = run_data.run_revision(store, run_id)
clusters: list[ClusterInfo] = run_data.clusters_of(store, store.url, run_id, revision)
points = run_data.umap_points(store, store.url, run_id, revision)
seen_versions: dict[int, int] = dict(st.session_state.get(SEEN_KEY, {}).get(run_id, {}))
by_cluster_id = {c.id: c for c in clusters}


def expected(cluster_id: int) -> int | None:
    """The version of a cluster as the engineer saw it (None: not seen yet, no check)."""
    return seen_versions.get(cluster_id)


def name_of(cluster_id: int) -> str:
    cluster = by_cluster_id.get(cluster_id)
    return cluster.display_name if cluster else f"cluster #{cluster_id}"


def short(text: str, limit: int = 48) -> str:
    """A long name cut with an ellipsis for a picker or a caption (the full name is in the help)."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def cluster_label(cluster_id: int) -> str:
    cluster = by_cluster_id[cluster_id]
    flag = " · normal" if cluster.is_normal else ""
    return f"{short(cluster.display_name)} ({cluster.region_count} regions{flag})"


def plural(count: int, word: str) -> str:
    """'1 region', '3 regions'."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def quoted(name: str) -> str:
    """A name for a message rendered as markdown: quoted and escaped, shown literally."""
    return f"“{literal(name)}”"


def region_states(points: pd.DataFrame) -> dict[str, int]:
    """How many regions are marked normal by the engineer, predicted normal (the engine's normal
    slot) and placeholders (strongest spot or whole image) where no anomaly was found (storage's region_state)."""
    counts = points["state"].value_counts()
    return {"marked": int(counts.get(STATE_MARKED_NORMAL, 0)), "predicted": int(counts.get(STATE_NORMAL, 0)),
            "none_found": int(counts.get(STATE_NO_ANOMALY, 0))}


def state_cards(states: dict[str, int]) -> list[tuple[str, str, str]]:
    """Metric cards of the three normal-like states, kept apart."""
    cards = [
        ("Marked normal", f"{states['marked']:,}", "Regions you marked normal (false detections of the detector)."),
        ("Model: normal", f"{states['predicted']:,}", "Predicted normal: regions the model put in its normal cluster."),
    ]
    cards.append(("No anomaly", f"{states['none_found']:,}",
                  "Images where nothing rose above what normal images reach, each shown as its map's strongest "
                  "spot or the whole image (hollow rings on the plot). Not a verdict that the part is normal: "
                  "look at them."))
    return cards


#: Longest cluster name storage keeps; the field says so instead of stopping silently.
MAX_NAME_CHARS = 200


def rename_form(cluster_id: int | None, key: str = "explore_rename") -> None:
    """Rename a cluster (the given one, or one picked in the form); Enter saves."""
    with st.form(key, clear_on_submit=True, border=True):
        if cluster_id is None:
            st.markdown("**Rename a cluster**")
            rename_id = st.selectbox("Cluster", cluster_ids, format_func=cluster_label, key="rename_cluster")
        else:
            st.markdown(f"**Rename {quoted(short(name_of(cluster_id), 40))}** (all selected regions are in it)")
            rename_id = cluster_id
        new_name = st.text_input(f"New name (up to {MAX_NAME_CHARS} characters; Enter saves, empty clears the name)",
                                 key=f"{key}_name" if cluster_id is not None else "rename_name",
                                 max_chars=MAX_NAME_CHARS)
        if st.form_submit_button("Rename", icon=":material/edit:", type="primary"):
            old = name_of(rename_id)
            result = messages.perform(
                lambda: store.rename_cluster(rename_id, new_name.strip() or None, expected_version=expected(rename_id)),
                lambda c: f"Renamed {quoted(old)} to {quoted(c.display_name)}.",
            )
            if result is not None and len(new_name) >= MAX_NAME_CHARS:
                messages.flash("info", f"The name reached the {MAX_NAME_CHARS}-character limit; anything typed or "
                                       "pasted beyond it was not kept.")
            st.rerun()


def cluster_forms() -> None:
    """Rename, merge, split and mark whole clusters normal."""
    rename_form(None)
    with st.form("explore_merge", border=True):
        st.markdown("**Merge clusters**")
        target_id = st.selectbox("Merge into (keeps its name)", cluster_ids, format_func=cluster_label,
                                 key="merge_target")
        source_ids = st.multiselect("Clusters to merge into it", cluster_ids, format_func=cluster_label,
                                    key="merge_sources")
        if st.form_submit_button("Merge", icon=":material/merge:"):
            sources = [s for s in source_ids if s != target_id]
            if not sources:
                messages.flash("warning", "Choose at least one other cluster to merge into the target.")
            else:
                names = ", ".join(quoted(name_of(s)) for s in sources)
                messages.perform(
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
            messages.perform(
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
            messages.perform(
                lambda: store.mark_cluster_normal(normal_id, value, expected_version=expected(normal_id)),
                lambda c: f"{quoted(c.display_name)} is now " + ("normal / false detection." if value else "a defect class."),
            )
            st.rerun()


if points.empty:
    empty_state("This run has no regions", "The discovery run finished without regions to show. "
                "Check the Detection & MEBin page: maybe no anomaly was found in the images.")
    st.stop()

# ------------------------------------------------------------------------------ header and toolbar
populated = [c for c in clusters if c.region_count > 0]
empty_clusters = len(clusters) - len(populated)
named = sum(1 for c in populated if c.name and not c.is_normal)
states = region_states(points)
metric_cards([
    ("Regions", f"{len(points):,}", f"Anomaly regions of this run, in {points['image'].nunique():,} images."),
    ("Clusters", f"{len(populated)}", "Clusters holding regions (merged ones are hidden)."
     + (f" {empty_clusters} empty cluster(s) — labeled classes no region fell into, or the normal slot — "
        "are not counted; they stay available as move and merge targets." if empty_clusters else "")),
    ("Named", f"{named} / {len(populated)}", "Clusters with a name: they become the labeled set."),
    *state_cards(states),
])

selection.sync_chart_selection()
known_ids = set(points["region_id"].tolist())
selected = [i for i in selection.selected_ids() if i in known_ids]
can_undo, can_redo = store.can_undo(run_id), store.can_redo(run_id)
tools = st.container(horizontal=True, vertical_alignment="center")
if tools.button("Undo", icon=":material/undo:", disabled=not can_undo, shortcut="Mod+Z",
                help="Revert the last edit of this run (Ctrl+Z)."):
    messages.perform(lambda: store.undo(run_id), lambda e: f"Undid: {e.kind.replace('_', ' ')}.")
    st.rerun()
if tools.button("Redo", icon=":material/redo:", disabled=not can_redo, shortcut="Mod+Shift+Z",
                help="Re-apply the edit undone last (Ctrl+Shift+Z)."):
    messages.perform(lambda: store.redo(run_id), lambda e: f"Redid: {e.kind.replace('_', ' ')}.")
    st.rerun()
if tools.button("Clear selection", icon=":material/deselect:", disabled=not selected):
    selection.clear_selection()
    st.session_state.pop(selection.FOCUS_KEY, None)
    st.rerun()
if states["none_found"] and tools.button(f"Images with no anomaly found ({states['none_found']})",
                                        icon=":material/image_search:", key="explore_select_none_found",
                                        help="Select the placeholders (strongest spot or whole image) of images where MEBin found "
                                             "nothing, to look at them and move or mark them."):
    selection.set_selection(points.loc[points["state"] == STATE_NO_ANOMALY, "region_id"].tolist(), "no anomaly found")
    st.rerun()
source = st.session_state.get(selection.SELECTION_SOURCE_KEY) or ""
tools.caption(
    f"**{len(selected):,} selected** ({literal(short(source, 60))})" if selected
    else "Nothing selected: draw a box or a lasso around points, click one, or pick a cluster."
)


@st.cache_resource(max_entries=4, show_spinner=False)
def region_files(_store, store_url: str, project: int, run: int, revision: tuple) -> dict[int, tuple[str | None, str | None]]:
    """region id -> (crop path, mask path) of the regions this run assigned (as they were when it
    ran: later re-crops make new versions), loaded once per run revision."""
    return {r.id: (r.crop_path, r.mask_path) for r in _store.list_regions(project, run_id=run)}


def files_of(region_id: int) -> tuple[str | None, str | None]:
    files = region_files(store, store.url, project_id, run_id, revision)
    if region_id in files:
        return files[region_id]
    try:
        region = store.get_region(region_id)
    except NotFound:
        return None, None
    return region.crop_path, region.mask_path


indexed = points.set_index("region_id", drop=False)


def open_region(region_id: int) -> None:
    """Show one region with its image (a thumbnail's label was clicked)."""
    st.session_state[selection.FOCUS_KEY] = int(region_id)
    st.session_state[IMAGE_KEY] = str(indexed.loc[region_id, "image"])


def focused_region_panel() -> None:
    """The region opened from the gallery: its crop large, its image with every box, its cluster."""
    focus = st.session_state.get(selection.FOCUS_KEY)
    if focus not in known_ids:
        return
    point = indexed.loc[focus]
    image_rel = str(point["image"])
    with st.container(border=True, key="explore_focus"):
        st.markdown(f"**Region #{int(focus)}** · {quoted(short(str(point['cluster_name']), 60))} · "
                    f"confidence {float(point['confidence']):.2f}"
                    + (" · no anomaly found in this image" if point["state"] == STATE_NO_ANOMALY else ""))
        crop_col, image_col = st.columns([1, 2])
        crop, mask = files_of(int(focus))
        crop_col.image(thumbnail(crop, mask, 256), caption="crop with its mask outline", width="stretch")
        picture = load_image(str(Path(project.data_root) / image_rel))
        if picture is None:
            image_col.warning(f"The image file {literal(image_rel)} cannot be read.")
        else:
            boxes = store.image_assignments(run_id, image_rel)
            colors = ["#ff2d2d" if a.region.id == focus else "#9aa3ad" for a in boxes]
            labels = [f"#{a.region.id}" for a in boxes]
            image_col.image(draw_boxes(picture, [a.region.box for a in boxes], colors, labels),
                            caption=f"{image_rel} · region #{int(focus)} in red", width="stretch")
        if st.button("Close", key="explore_focus_close", icon=":material/close:"):
            st.session_state.pop(selection.FOCUS_KEY, None)
            st.rerun()


def gallery(shown_ids: list[int]) -> None:
    """A page of thumbnails; each label opens its region, the cluster name sits under it."""
    pages = max(1, math.ceil(len(shown_ids) / PAGE_SIZE))
    page = min(int(st.session_state.get(selection.PAGE_KEY, 0)), pages - 1)
    if pages > 1:
        nav = st.container(horizontal=True, vertical_alignment="center")
        if nav.button("Previous", icon=":material/chevron_left:", disabled=page == 0, key="gallery_prev"):
            st.session_state[selection.PAGE_KEY] = page - 1
            st.rerun()
        nav.caption(f"Page {page + 1} of {pages}")
        if nav.button("Next", icon=":material/chevron_right:", disabled=page >= pages - 1, key="gallery_next"):
            st.session_state[selection.PAGE_KEY] = page + 1
            st.rerun()
    on_page = shown_ids[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
    with st.container(key="explore_gallery"):
        for row_start in range(0, len(on_page), GALLERY_COLUMNS):
            cells = st.columns(GALLERY_COLUMNS, gap="small")
            for cell, region_id in zip(cells, on_page[row_start : row_start + GALLERY_COLUMNS]):
                point = indexed.loc[region_id]
                crop, mask = files_of(int(region_id))
                cell.image(thumbnail(crop, mask, THUMB_SIZE), width="stretch")
                name = str(point["cluster_name"])
                if cell.button(f"#{int(region_id)} · {float(point['confidence']):.2f}", key=f"open_{region_id}",
                               type="tertiary", help=f"Open region #{int(region_id)} in its image ({literal(name)})"):
                    open_region(int(region_id))
                    st.rerun()
                cell.caption(STATE_NO_ANOMALY if point["state"] == STATE_NO_ANOMALY else literal(short(name, 14)))


# ------------------------------------------------------------------------------ plot + panels
left, right = st.columns([3, 2], gap="medium")
with left:
    figure = run_data.cached_umap_figure(store, store.url, run_id, revision, tuple(selected))
    st.plotly_chart(
        figure, key=selection.CHART_KEY, on_select=selection.on_chart_select, selection_mode=("box", "lasso", "points"),
        config={"displaylogo": False, "modeBarButtonsToRemove": ["toImage"], "scrollZoom": True},
        width="stretch",
    )
    st.caption("UMAP of the region embeddings, one color per cluster. Lasso, box or click points: their crops "
               "show on the right (the plot cannot show images in its hover). Double-click resets the zoom.")

# Pickers list populated clusters first (largest first), then the empty ones (e.g. the normal slot).
cluster_ids = [c.id for c in sorted(clusters, key=lambda c: (c.region_count == 0, -c.region_count, c.slot))]

with right:
    tab_selection, tab_clusters, tab_image, tab_history = st.tabs(
        [f"Selection ({len(selected):,})", "Clusters", "Image view", "History"])

with tab_selection:
    focused_region_panel()
    if selected:
        n_images = points[points["region_id"].isin(selected)]["image"].nunique()
        counts = points[points["region_id"].isin(selected)]["cluster_name"].value_counts()
        st.subheader(f"Selection · {plural(len(selected), 'region')}", anchor=False)
        st.caption(f"From {plural(n_images, 'image')} · in "
                   + ", ".join(f"{literal(short(str(n), 24))} ({c})" for n, c in counts.head(4).items())
                   + (" ..." if len(counts) > 4 else ""))
        gallery(selected)
        with st.form("explore_move", border=True):
            move_cols = st.columns([3, 1], vertical_alignment="bottom")
            move_target = move_cols[0].selectbox("Move the selected regions to", cluster_ids, format_func=cluster_label,
                                                 key="move_target")
            if move_cols[1].form_submit_button("Move", icon=":material/drive_file_move:", type="primary"):
                messages.perform(
                    lambda: store.move_regions(run_id, selected, move_target, expected_version=expected(move_target)),
                    lambda c: f"Moved {plural(len(selected), 'region')} to {quoted(c.display_name)}.",
                )
                st.rerun()
        buttons = st.container(horizontal=True)
        if buttons.button("Mark normal", icon=":material/block:", key="mark_selection_normal",
                          help="These regions are no defect (false detections of the detector): marked normal by you."):
            messages.perform(lambda: store.mark_regions_normal(run_id, selected, True),
                             lambda n: f"Marked {plural(n, 'region')} as normal.")
            st.rerun()
        if buttons.button("Clear mark", icon=":material/undo:", key="clear_selection_normal"):
            messages.perform(lambda: store.mark_regions_normal(run_id, selected, False),
                             lambda n: f"Cleared the normal mark of {plural(n, 'region')}.")
            st.rerun()
        only = points.loc[points["region_id"].isin(selected), "cluster_id"].unique()
        if len(only) == 1 and int(only[0]) in by_cluster_id:
            rename_form(int(only[0]), key="explore_rename_selection")
    else:
        st.subheader("Most doubtful regions", anchor=False)
        st.caption("Lowest confidence first. Select points on the plot (or a cluster) to see their crops here, "
                   "with the actions on them.")
        gallery(list(points.sort_values("confidence")["region_id"].head(PAGE_SIZE)))

with tab_clusters:
    best = points.sort_values("confidence", ascending=False).drop_duplicates("cluster_id").set_index("cluster_id")
    rows = []
    for c in sorted(populated, key=lambda c: -c.region_count):
        sample = None
        if c.id in best.index:
            crop, mask = files_of(int(best.loc[c.id, "region_id"]))
            sample = thumbnail_uri(crop, mask, 64)
        rows.append({"sample": sample, "cluster": c.display_name, "regions": c.region_count,
                     "confidence": c.mean_confidence,
                     "state": "normal" if c.is_normal else ("named" if c.name else "unnamed")})
    st.dataframe(
        pd.DataFrame(rows), hide_index=True, width="stretch", row_height=56, key="explore_cluster_table",
        column_config={
            "sample": st.column_config.ImageColumn("sample", width=64, help="The most confident crop"),
            "cluster": st.column_config.TextColumn("cluster", width="medium"),
            "regions": st.column_config.NumberColumn("regions", width=64),
            "confidence": st.column_config.ProgressColumn("confidence", min_value=0.0, max_value=1.0, format="%.2f",
                                                          width=90, help="Mean confidence of its regions"),
            "state": st.column_config.TextColumn("state", width=72, help="normal, named or unnamed"),
        },
    )
    if empty_clusters:
        st.caption(f"{empty_clusters} empty cluster{'s' if empty_clusters > 1 else ''} not listed (still available "
                   "as move and merge targets).")
    pick = st.columns([3, 1], vertical_alignment="bottom")
    show_id = pick[0].selectbox("Cluster to show in the gallery", cluster_ids, format_func=cluster_label,
                                key="explore_show_cluster")
    if pick[1].button("Select", key="explore_select_cluster", width="stretch",
                      help="Select its regions: their crops and the actions on them show in the Selection tab."):
        ids = points.loc[points["cluster_id"] == show_id, "region_id"].tolist()
        selection.set_selection(ids, f"cluster {name_of(show_id)}")
        st.rerun()
    cluster_forms()

with tab_image:
    images = sorted(points["image"].unique())
    default_image = st.session_state.get(IMAGE_KEY)
    if selected and default_image not in images:
        first = points.loc[points["region_id"] == selected[0], "image"]
        if not first.empty:
            default_image = first.iloc[0]
    if default_image not in images:
        default_image = images[0]
    image_rel = st.selectbox("Image", images, index=images.index(default_image), key="explore_image_pick")
    st.session_state[IMAGE_KEY] = image_rel
    picture = load_image(str(Path(project.data_root) / image_rel))
    boxes = store.image_assignments(run_id, image_rel)
    if picture is None:
        st.warning(f"The image file {literal(image_rel)} cannot be read from {literal(project.data_root)}.")
    else:
        colors = [by_cluster_id[a.cluster_id].color if a.cluster_id in by_cluster_id else "#888888" for a in boxes]
        labels = [f"{name_of(a.cluster_id)} {a.confidence:.2f}" for a in boxes]
        normal = [a.is_normal or (a.cluster_id in by_cluster_id and by_cluster_id[a.cluster_id].is_normal)
                  for a in boxes]
        st.image(draw_boxes(picture, [a.region.box for a in boxes], colors, labels, normal),
                 caption=f"{image_rel} · {plural(len(boxes), 'region')}", width="stretch")
    image_classes = {c.image: c for c in run_data.image_classes_of(store, store.url, run_id, revision)}
    fused = image_classes.get(image_rel)
    members = points[points["image"] == image_rel].sort_values("region_id")
    if fused is not None:
        st.metric("Image class (area-weighted fusion)", literal(fused.class_name), border=True,
                  help="Regions vote with weights growing with their area; normal regions vote 'normal'.")
        st.caption(f"Confidence {fused.confidence:.2f} · {plural(fused.region_count, 'region')}"
                   + (f" · ground truth: {literal(fused.gt_class)}" if fused.gt_class else ""))
    st.dataframe(
        members[["region_id", "cluster_name", "confidence", "state"]].rename(
            columns={"region_id": "region", "cluster_name": "cluster"}),
        hide_index=True, width="stretch",
    )
    if st.button("Select this image's regions", key="explore_select_image", width="stretch"):
        selection.set_selection(members["region_id"].tolist(), f"image {image_rel}")
        st.rerun()

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
