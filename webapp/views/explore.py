"""Explore: the UMAP of a run's regions beside the selection's crops, the clusters and every edit.

Select points with box, lasso or a click (or a cluster, or an image's regions); their crops appear
beside the plot with the actions on them right underneath, and the plot keeps the selection
highlighted. Click a crop's label to open the region in its image. Name, merge, split, move and
mark regions normal; every edit is one transaction in storage and can be undone (Ctrl+Z) and
redone (Ctrl+Shift+Z). The parts live in webapp/explore_*.py; the points are read once per run
and their cluster columns once per revision (webapp/run_data.py), so 50,000 regions stay quick.
"""

from __future__ import annotations

import streamlit as st

from storage.records import STATE_NO_ANOMALY
from webapp import explore_panels, messages, navigation, run_data, selection
from webapp.explore_context import ExploreContext, region_states, short, state_cards
from webapp.figures import COLOUR_BY, DRAWN_POINTS
from webapp.widgets import empty_state, literal, metric_cards
from webapp.workspace import get_store

store = get_store()
project_id = navigation.select_project()
run_id = navigation.select_run(project_id)
assert project_id is not None and run_id is not None  # select_* stop the page otherwise

st.title("Explore", anchor=False)
messages.show()

revision = run_data.run_revision(store, run_id)
ctx = ExploreContext(store, store.get_project(project_id), run_id, revision,
                     run_data.umap_points(store, store.url, run_id, revision),
                     run_data.clusters_of(store, store.url, run_id, revision))
points = ctx.points

if points.empty:
    empty_state("This run has no regions", "The discovery run finished without regions to show. "
                "Check the Detection & MEBin page: maybe no anomaly was found in the images.")
    st.stop()

# ------------------------------------------------------------------------------ header and toolbar
empty_clusters = len(ctx.clusters) - len(ctx.populated)
named = sum(1 for c in ctx.populated if c.name and not c.is_normal)
states = region_states(points)
metric_cards([
    ("Regions", f"{len(points):,}", f"Anomaly regions of this run, in {points['image'].nunique():,} images."),
    ("Clusters", f"{len(ctx.populated)}", "Clusters holding regions (merged ones are hidden)."
     + (f" {empty_clusters} empty cluster(s) — labeled classes no region fell into, or the normal slot — "
        "are not counted; they stay available as move and merge targets." if empty_clusters else "")),
    ("Named", f"{named} / {len(ctx.populated)}", "Clusters with a name: they become the labeled set."),
    *state_cards(states),
])

selection.sync_chart_selection(points)
selected = [i for i in selection.selected_ids() if i in ctx.known_ids]
tools = st.container(horizontal=True, vertical_alignment="center")
if tools.button("Undo", icon=":material/undo:", disabled=not store.can_undo(run_id), shortcut="Mod+Z",
                help="Revert the last edit of this run (Ctrl+Z)."):
    messages.perform(lambda: store.undo(run_id), lambda e: f"Undid: {e.kind.replace('_', ' ')}.")
    st.rerun()
if tools.button("Redo", icon=":material/redo:", disabled=not store.can_redo(run_id), shortcut="Mod+Shift+Z",
                help="Re-apply the edit undone last (Ctrl+Shift+Z)."):
    messages.perform(lambda: store.redo(run_id), lambda e: f"Redid: {e.kind.replace('_', ' ')}.")
    st.rerun()
if tools.button("Clear selection", icon=":material/deselect:", disabled=not selected):
    selection.clear_selection()
    st.session_state.pop(selection.FOCUS_KEY, None)
    st.rerun()
if states["none_found"] and tools.button(f"Images with no anomaly found ({states['none_found']})",
                                        icon=":material/image_search:", key="explore_select_none_found",
                                        help="Select the placeholders (strongest spot or whole image) of images "
                                             "where MEBin found nothing, to look at them and move or mark them."):
    selection.set_selection(points.loc[points["state"] == STATE_NO_ANOMALY, "region_id"].tolist(), "no anomaly found")
    st.rerun()
source = st.session_state.get(selection.SELECTION_SOURCE_KEY) or ""
tools.caption(
    f"**{len(selected):,} selected** ({literal(short(source, 60))})" if selected
    else "Nothing selected: draw a box or a lasso around points, click one, or pick a cluster."
)

# ------------------------------------------------------------------------------ plot + panels
left, right = st.columns([3, 2], gap="medium")
with left:
    colour = st.radio("Colour by", COLOUR_BY, horizontal=True, key="explore_colour_by",
                      help="cluster: one colour per cluster; confidence: how sure the model is of each region "
                           "(the low ones are worth a look)")
    st.session_state[selection.REVISION_KEY] = revision
    figure = run_data.cached_umap_figure(store, store.url, run_id, revision, selection.highlighted(selected, revision),
                                         colour)
    st.plotly_chart(
        figure, key=selection.CHART_KEY, on_select=selection.on_chart_select, selection_mode=("box", "lasso", "points"),
        config={"displaylogo": False, "modeBarButtonsToRemove": ["toImage"], "scrollZoom": True},
        width="stretch",
    )
    st.caption("UMAP of the region embeddings, one color per cluster. Lasso, box or click points: their crops "
               "show on the right (the plot cannot show images in its hover). Double-click resets the zoom."
               + (f" The plot draws {DRAWN_POINTS:,} of the {len(points):,} regions (a fixed sample); a box or "
                  "lasso selects every region inside it, drawn or not." if len(points) > DRAWN_POINTS else ""))

with right:
    explore_panels.panels(ctx, selected)

ctx.remember_seen()
