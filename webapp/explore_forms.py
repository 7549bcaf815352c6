"""The Explore page's edit forms: rename, merge, split, mark a cluster normal, and the actions on the
selected regions (move, mark normal). Every edit is one storage transaction checked against the
cluster versions the engineer saw; its message names clusters literally.
"""

from __future__ import annotations

import streamlit as st

from webapp import messages
from webapp.explore_context import MAX_NAME_CHARS, ExploreContext, plural, quoted, short


def rename_form(ctx: ExploreContext, cluster_id: int | None, key: str = "explore_rename") -> None:
    """Rename a cluster (the given one, or one picked in the form); Enter saves."""
    with st.form(key, clear_on_submit=True, border=True):
        if cluster_id is None:
            st.markdown("**Rename a cluster**")
            rename_id = st.selectbox("Cluster", ctx.cluster_ids, format_func=ctx.cluster_label, key="rename_cluster")
        else:
            st.markdown(f"**Rename {quoted(short(ctx.name_of(cluster_id), 40))}** (all selected regions are in it)")
            rename_id = cluster_id
        new_name = st.text_input(f"New name (up to {MAX_NAME_CHARS} characters; Enter saves, empty clears the name)",
                                 key=f"{key}_name" if cluster_id is not None else "rename_name",
                                 max_chars=MAX_NAME_CHARS)
        if st.form_submit_button("Rename", icon=":material/edit:", type="primary"):
            old = ctx.name_of(rename_id)
            result = messages.perform(
                lambda: ctx.store.rename_cluster(rename_id, new_name.strip() or None,
                                                 expected_version=ctx.expected(rename_id)),
                lambda c: f"Renamed {quoted(old)} to {quoted(c.display_name)}.",
            )
            if result is not None and len(new_name) >= MAX_NAME_CHARS:
                messages.flash("info", f"The name reached the {MAX_NAME_CHARS}-character limit; anything typed or "
                                       "pasted beyond it was not kept.")
            st.rerun()


def merge_form(ctx: ExploreContext) -> None:
    with st.form("explore_merge", border=True):
        st.markdown("**Merge clusters**")
        target_id = st.selectbox("Merge into (keeps its name)", ctx.cluster_ids, format_func=ctx.cluster_label,
                                 key="merge_target")
        source_ids = st.multiselect("Clusters to merge into it", ctx.cluster_ids, format_func=ctx.cluster_label,
                                    key="merge_sources")
        if st.form_submit_button("Merge", icon=":material/merge:"):
            sources = [s for s in source_ids if s != target_id]
            if not sources:
                messages.flash("warning", "Choose at least one other cluster to merge into the target.")
            else:
                names = ", ".join(quoted(ctx.name_of(s)) for s in sources)
                messages.perform(
                    lambda: ctx.store.merge_clusters(target_id, sources,
                                                     expected_versions=ctx.expected_versions([target_id, *sources])),
                    lambda c: f"Merged {names} into {quoted(c.display_name)} ({c.region_count} regions).",
                )
            st.rerun()


def split_form(ctx: ExploreContext) -> None:
    with st.form("explore_split", border=True):
        st.markdown("**Split a cluster**")
        split_cols = st.columns([3, 1])
        split_id = split_cols[0].selectbox("Cluster", ctx.cluster_ids, format_func=ctx.cluster_label,
                                           key="split_cluster")
        k = split_cols[1].number_input("into k", min_value=2, max_value=12, value=2, step=1, key="split_k")
        if st.form_submit_button("Split", icon=":material/call_split:"):
            messages.perform(
                lambda: ctx.store.split_cluster(split_id, int(k), expected_version=ctx.expected(split_id)),
                lambda parts: f"Split {quoted(ctx.name_of(split_id))} into {len(parts)} clusters of "
                              + ", ".join(str(p.region_count) for p in parts) + " regions.",
            )
            st.rerun()


def cluster_normal_form(ctx: ExploreContext) -> None:
    with st.form("explore_cluster_normal", border=True):
        st.markdown("**Whole cluster is normal / false detection**")
        normal_id = st.selectbox("Cluster", ctx.cluster_ids, format_func=ctx.cluster_label, key="normal_cluster")
        normal_value = st.radio("Mark", ["normal / false detection", "a defect class"], horizontal=True,
                                key="normal_cluster_value")
        if st.form_submit_button("Apply", icon=":material/block:"):
            value = normal_value.startswith("normal")
            messages.perform(
                lambda: ctx.store.mark_cluster_normal(normal_id, value, expected_version=ctx.expected(normal_id)),
                lambda c: f"{quoted(c.display_name)} is now "
                          + ("normal / false detection." if value else "a defect class."),
            )
            st.rerun()


def cluster_forms(ctx: ExploreContext) -> None:
    """Rename, merge, split and mark whole clusters normal."""
    rename_form(ctx, None)
    merge_form(ctx)
    split_form(ctx)
    cluster_normal_form(ctx)


def selection_actions(ctx: ExploreContext, selected: list[int]) -> None:
    """Move the selected regions, mark them normal or clear the mark; rename their cluster when they share one."""
    with st.form("explore_move", border=True):
        move_cols = st.columns([3, 1], vertical_alignment="bottom")
        move_target = move_cols[0].selectbox("Move the selected regions to", ctx.cluster_ids,
                                             format_func=ctx.cluster_label, key="move_target")
        if move_cols[1].form_submit_button("Move", icon=":material/drive_file_move:", type="primary"):
            messages.perform(
                lambda: ctx.store.move_regions(ctx.run_id, selected, move_target,
                                               expected_version=ctx.expected(move_target)),
                lambda c: f"Moved {plural(len(selected), 'region')} to {quoted(c.display_name)}.",
            )
            st.rerun()
    buttons = st.container(horizontal=True)
    if buttons.button("Mark normal", icon=":material/block:", key="mark_selection_normal",
                      help="These regions are no defect (false detections of the detector): marked normal by you."):
        messages.perform(lambda: ctx.store.mark_regions_normal(ctx.run_id, selected, True),
                         lambda n: f"Marked {plural(n, 'region')} as normal.")
        st.rerun()
    if buttons.button("Clear mark", icon=":material/undo:", key="clear_selection_normal"):
        messages.perform(lambda: ctx.store.mark_regions_normal(ctx.run_id, selected, False),
                         lambda n: f"Cleared the normal mark of {plural(n, 'region')}.")
        st.rerun()
    only = ctx.indexed.loc[selected, "cluster_id"].unique()
    if len(only) == 1 and int(only[0]) in ctx.by_cluster_id:
        rename_form(ctx, int(only[0]), key="explore_rename_selection")
