"""The Explore selection: region ids in st.session_state, set by the UMAP chart, a cluster, an image
or a clicked thumbnail, and read by the gallery, the edit forms and the Export page.

The chart's on_select callback writes it, reading the chart's state as a mapping (so AppTest can
set it); the figure shows it as `selectedpoints` so the highlight survives every rerun, except a
selection drawn on the plot itself, which plotly keeps showing until the run changes (`highlighted`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

#: Session-state key of the selected region ids (list[int]).
SELECTION_KEY = "explore_selection"
#: Where the selection came from ("plot", "cluster <name>", "image <path>").
SELECTION_SOURCE_KEY = "explore_selection_source"
#: Session-state key of the UMAP chart widget.
CHART_KEY = "explore_umap"
#: The chart selection adopted last (to tell a new chart selection from an old one).
LAST_CHART_KEY = "explore_last_chart_selection"
#: Gallery page index.
PAGE_KEY = "explore_gallery_page"
#: The region opened from the gallery (its crop, image and cluster are shown).
FOCUS_KEY = "explore_focus_region"
#: The run revision the page shows (set by the page on each full run) ...
REVISION_KEY = "explore_revision"
#: ... and the one a selection drawn on the plot was made on: the plot shows that selection itself.
PLOT_REVISION_KEY = "explore_plot_selection_revision"


def region_ids_from_selection(state: Mapping[str, Any] | None) -> list[int]:
    """Region ids of the points in a plotly chart state ({"selection": {"points": [...]}}).

    Each point carries its region id as the first custom_data value; points without one are
    ignored. custom_data sent as a numpy array reaches the browser as a typed array and comes back
    as {"0": id, "1": ...}, so both forms are read. Order kept, no duplicates.
    """
    if not state:
        return []
    try:
        points = state["selection"]["points"]
    except (KeyError, TypeError):
        return []
    ids: dict[int, None] = {}
    for point in points or []:
        custom = point.get("customdata") if isinstance(point, Mapping) else None
        if custom is None:
            continue
        if isinstance(custom, Mapping):  # a numpy custom_data array arrives as {"0": id, "1": ...}
            custom = custom.get("0", custom.get(0))
        value = custom[0] if isinstance(custom, (list, tuple)) and custom else custom
        try:
            ids[int(value)] = None
        except (TypeError, ValueError):
            continue
    return list(ids)


def inside_polygon(x: np.ndarray, y: np.ndarray, xs: list[float], ys: list[float]) -> np.ndarray:
    """Which points (x, y) lie inside the polygon (xs, ys): even-odd ray casting, one pass per edge."""
    inside = np.zeros(len(x), dtype=bool)
    for i in range(len(xs)):
        x1, y1, x2, y2 = xs[i - 1], ys[i - 1], xs[i], ys[i]
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)
        inside ^= crosses & (x < (x2 - x1) * (y - y1) / (y2 - y1) + x1)
    return inside


def region_ids_in_shapes(state: Mapping[str, Any] | None, points: pd.DataFrame) -> list[int] | None:
    """Region ids of every point inside the chart selection's boxes and lassos, drawn or not (the plot
    may draw a sample of a large run); None when the selection has no box or lasso (clicked points)."""
    selection = (state or {}).get("selection") if isinstance(state, Mapping) else None
    if not isinstance(selection, Mapping) or not (selection.get("box") or selection.get("lasso")):
        return None
    x, y = points["x"].to_numpy(float), points["y"].to_numpy(float)
    chosen = np.zeros(len(points), dtype=bool)
    for box in selection.get("box") or []:
        (x0, x1), (y0, y1) = sorted(box["x"][:2]), sorted(box["y"][:2])
        chosen |= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    for lasso in selection.get("lasso") or []:
        chosen |= inside_polygon(x, y, list(lasso["x"]), list(lasso["y"]))
    clicked = region_ids_from_selection(state) if selection.get("points") and not chosen.any() else []
    return list(dict.fromkeys([*points.loc[chosen, "region_id"].astype(int).tolist(), *clicked]))


def selected_ids() -> list[int]:
    """The current selection (region ids)."""
    return list(st.session_state.get(SELECTION_KEY) or [])


def set_selection(ids: Iterable[int], source: str) -> None:
    """Replace the selection and go back to the first gallery page."""
    st.session_state[SELECTION_KEY] = [int(i) for i in dict.fromkeys(ids)]
    st.session_state[SELECTION_SOURCE_KEY] = source
    st.session_state[PAGE_KEY] = 0
    st.session_state[PLOT_REVISION_KEY] = st.session_state.get(REVISION_KEY) if source == "plot" else None


def highlighted(selected: list[int], revision: tuple) -> tuple[int, ...]:
    """The selection the figure must draw highlighted: none when the engineer drew it on the plot
    of this very revision (plotly shows it already, and an unchanged figure is not sent and drawn
    again: 50,000 points), else the selection (from a cluster, an image, or before an edit)."""
    if st.session_state.get(SELECTION_SOURCE_KEY) == "plot" and st.session_state.get(PLOT_REVISION_KEY) == revision:
        return ()
    return tuple(selected)


def on_chart_select() -> None:
    """on_select callback of the UMAP chart: a new box / lasso / click selection is adopted by
    sync_chart_selection on the run it starts (which has the points; an empty one clears)."""
    if not region_ids_from_selection(st.session_state.get(CHART_KEY)) and not _shapes(st.session_state.get(CHART_KEY)):
        st.session_state[LAST_CHART_KEY] = None
        set_selection([], "plot")


def _shapes(state: Any) -> bool:
    selection = state.get("selection") if isinstance(state, Mapping) else None
    return isinstance(selection, Mapping) and bool(selection.get("box") or selection.get("lasso"))


def sync_chart_selection(points: pd.DataFrame) -> None:
    """Adopt the chart's selection when it is new: every region inside its boxes and lassos (drawn
    or not), else the clicked points. An empty chart state is ignored: after an edit the figure
    changes and the chart starts empty, which must not drop the engineer's selection."""
    state = st.session_state.get(CHART_KEY)
    chart = state.get("selection") if isinstance(state, Mapping) else None
    if not isinstance(chart, Mapping):
        return
    clicked = chart.get("points") or []
    key = repr((chart.get("box"), chart.get("lasso"), len(clicked), clicked[:1], clicked[-1:]))
    if key == st.session_state.get(LAST_CHART_KEY):
        return
    ids = region_ids_in_shapes(state, points)
    if ids is None:
        ids = region_ids_from_selection(state)
    if ids:
        st.session_state[LAST_CHART_KEY] = key
        set_selection(ids, "plot")


def clear_selection() -> None:
    """Select nothing."""
    set_selection([], "")
