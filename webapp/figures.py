"""The app's plotly figures: the UMAP scatter, confusion matrices and the training-loss chart.

Plotly renders a subset of HTML in trace names, tick labels and hover text, so every text that
comes from a user or a file goes through `plot_text` (escaped, shortened); the full name stays in
the hover. No storage access here: figures are built from frames and records.
"""

from __future__ import annotations

import html
import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from storage import ClusterInfo
from storage.records import STATE_DEFECT, STATE_NO_ANOMALY
from webapp.widgets import CHART_LAYOUT

#: Legend entry of regions marked normal by the engineer (drawn as crosses in their cluster's trace).
NORMAL_TRACE = "× marked normal by you"
#: Legend entry of the placeholders of images where MEBin found no anomaly (hollow rings in their
#: cluster's trace): the map's strongest spot, or the whole image when the map is flat.
NO_ANOMALY_TRACE = "○ no anomaly found (strongest spot or whole image)"
#: Color of normal regions and normal clusters on the plot.
NORMAL_COLOR = "#b0b7c3"
#: Marker symbols (plotly's numeric codes, sent as one typed array): a region, a placeholder, a marked one.
SYMBOL_REGION, SYMBOL_NO_ANOMALY, SYMBOL_MARKED = 0, 100, 4
#: What the plot can colour its points by.
COLOUR_BY = ("cluster", "confidence")
#: Above this many points the scatter uses WebGL (Scattergl); below, SVG (crisper, any browser).
WEBGL_MIN_POINTS = 1500
#: The plot draws at most this many points (a fixed sample of a larger run, every region that is
#: not an ordinary defect and every highlighted one included): box and lasso still select every
#: region inside them (webapp.selection), and the browser stays quick. benchmarks/explore.py at 50,000
#: regions in Chromium on 2 cores: 15,000 drawn points gave a worst warm interaction of 1.62 s (box
#: select 1.62 s, colour by 1.53 s), 5,000 gave 0.95 s (box select 0.68 s): drawing is the browser's.
DRAWN_POINTS = 5_000
#: Longest label drawn in a legend or on an axis; longer names are cut with an ellipsis.
LABEL_CHARS = 32


def plot_text(text: Any, limit: int | None = LABEL_CHARS) -> str:
    """User text made safe for a plotly label: HTML escaped (shown literally), cut to `limit`
    characters before escaping so no escape sequence is cut in half."""
    value = str(text)
    if limit is not None and len(value) > limit:
        value = value[: limit - 1].rstrip() + "…"
    return html.escape(value, quote=False)


def _custom_data(part: pd.DataFrame) -> np.ndarray:
    """[region id, confidence] per point as one float array: plotly sends it as a binary typed
    array (a few bytes a point), and a selection reports it back as {"0": id, "1": confidence}."""
    return np.column_stack([part["region_id"].to_numpy(np.float64), part["confidence"].to_numpy(np.float64)])


def _symbols(part: pd.DataFrame, marked: pd.Series) -> np.ndarray:
    """Marker symbol per point: a ring for a placeholder, a cross for a region marked normal."""
    symbols = np.full(len(part), SYMBOL_REGION, dtype=np.int16)
    symbols[(part["state"] == STATE_NO_ANOMALY).to_numpy()] = SYMBOL_NO_ANOMALY
    symbols[marked.loc[part.index].to_numpy()] = SYMBOL_MARKED
    return symbols


def _colours(part: pd.DataFrame, colour: str, by: str, with_scale: bool) -> dict[str, Any]:
    """The marker colours of a trace: its cluster's colour, or each point's confidence on one shared scale."""
    if by == "cluster":
        return {"color": colour}
    scale = dict(title=dict(text="confidence", side="right"), thickness=12, len=0.6) if with_scale else None
    return {"color": part["confidence"].to_numpy(np.float32), "colorscale": "Viridis", "cmin": 0.0, "cmax": 1.0,
            "showscale": with_scale, "colorbar": scale}


def drawn_points(points: pd.DataFrame, keep: Collection[int] = (), limit: int = DRAWN_POINTS) -> pd.DataFrame:
    """The points the plot draws: all of them up to `limit`, else a fixed random sample of `limit`
    that holds every region not an ordinary defect and the `keep` ids first (order kept)."""
    if len(points) <= limit:
        return points
    priority = np.random.default_rng(0).random(len(points))
    first = (points["state"] != STATE_DEFECT) | points["region_id"].isin(list(keep))
    priority[first.to_numpy()] = -1.0
    return points.iloc[np.sort(np.argsort(priority, kind="stable")[:limit])]


def umap_figure(points: pd.DataFrame, clusters: Sequence[ClusterInfo], selected: Collection[int] = (),
                height: int = 560, colour: str = COLOUR_BY[0], limit: int = DRAWN_POINTS) -> go.Figure:
    """The UMAP scatter: one trace per cluster holding every region of it, so its legend count is
    the cluster's region count (as in the Clusters table and the pickers). Placeholders of images
    with no anomaly found are hollow rings, regions marked normal crosses, each explained by a
    legend entry of its own (with its count) that holds no point.

    Every point carries [region id, confidence] as custom_data (one binary array per trace) so a
    box / lasso selection reports region ids whatever trace the point is in. The `selected` region
    ids are drawn highlighted (plotly's selectedpoints), so the selection stays visible after any rerun.
    `colour` "confidence" colours every point by its confidence on one scale instead of by cluster.
    A run of more than `limit` regions is drawn as a sample (drawn_points); the legend counts all.
    """
    if colour not in COLOUR_BY:
        raise ValueError(f"colour must be one of {COLOUR_BY}, not {colour!r}")
    large = len(points) >= WEBGL_MIN_POINTS
    trace_type = go.Scattergl if large else go.Scatter
    marker_size = 5 if large else 8
    figure = go.Figure()
    points = drawn_points(points[points["x"].notna() & points["y"].notna()], selected, limit)
    chosen = np.fromiter((int(i) for i in selected), dtype=np.int64)
    cluster_normal = {c.id: c.is_normal for c in clusters}
    none_found = points["state"] == STATE_NO_ANOMALY
    marked = (points["is_normal"].astype(bool) & ~none_found
              & ~points["cluster_id"].map(cluster_normal).fillna(False).astype(bool))
    by_cluster = dict(tuple(points.groupby("cluster_id", sort=False)))
    for cluster in clusters:
        part = by_cluster.get(cluster.id)
        if part is None or part.empty:
            continue
        suffix = " · normal" if cluster.is_normal else ""
        name = f"{plot_text(cluster.display_name)}{suffix}"
        traced = any(t.customdata is not None for t in figure.data)
        selected_points = (np.flatnonzero(np.isin(part["region_id"].to_numpy(), chosen)).astype(np.int32)
                           if len(chosen) else None)
        figure.add_trace(trace_type(
            x=part["x"].to_numpy(np.float32), y=part["y"].to_numpy(np.float32), mode="markers",
            name=f"{name} ({cluster.region_count:,})", customdata=_custom_data(part),
            marker=dict(**_colours(part, NORMAL_COLOR if cluster.is_normal else cluster.color, colour, not traced),
                        size=marker_size, opacity=0.85, symbol=_symbols(part, marked),
                        line=dict(width=1.5 if none_found.loc[part.index].any() else 0, color=cluster.color)),
            hovertemplate=(f"<b>{plot_text(cluster.display_name, 80)}{suffix}</b><br>region %{{customdata[0]:.0f}} · "
                           "confidence %{customdata[1]:.2f}<br><i>select it to see its crop beside the plot</i>"
                           "<extra></extra>"),
            selectedpoints=selected_points, selected=dict(marker=dict(opacity=1.0)),
            unselected=dict(marker=dict(opacity=0.18)),
        ))
    for label, count, symbol in ((NORMAL_TRACE, int(marked.sum()), "x"),
                                 (NO_ANOMALY_TRACE, int(none_found.sum()), "circle-open")):
        if count:  # a legend entry explaining a symbol; it holds no point
            figure.add_trace(trace_type(x=[None], y=[None], mode="markers", name=f"{label} ({count:,})",
                                        marker=dict(color="#6b7280", size=marker_size + 1, symbol=symbol),
                                        hoverinfo="skip"))
    figure.update_layout(
        template="plotly_white", height=height, margin=dict(l=10, r=10, t=10, b=10),
        dragmode="lasso", uirevision="umap", clickmode="event+select",
        legend=dict(orientation="h", yanchor="top", y=-0.02, x=0, font=dict(size=11)),
        xaxis=dict(showticklabels=False, title=None, zeroline=False),
        yaxis=dict(showticklabels=False, title=None, zeroline=False, scaleanchor=None),
    )
    return figure


def confusion_figure(table: pd.DataFrame, title: str) -> go.Figure:
    """A confusion matrix heatmap with the counts in the cells; long class names are shortened
    (the full, escaped name is in the hover) and every row keeps a readable height."""
    z = table.to_numpy()
    columns, rows = [str(c) for c in table.columns], [str(i) for i in table.index]
    # Shortened labels may collide; a row/column position keeps them apart.
    x = [f"{plot_text(c, 24)}" + ("\u200b" * n) for n, c in enumerate(columns)]
    y = [f"{plot_text(r, 24)}" + ("\u200b" * n) for n, r in enumerate(rows)]
    hover_text = [[f"truth {plot_text(r, 80)}<br>predicted {plot_text(c, 80)}" for c in columns] for r in rows]
    figure = go.Figure(go.Heatmap(
        z=z, x=x, y=y, colorscale="Blues", text=z, texttemplate="%{text}", showscale=False,
        customdata=hover_text, hovertemplate="%{customdata}<br>%{z}<extra></extra>",
    ))
    figure.update_layout(
        template="plotly_white", title=title, height=max(280, 120 + 44 * len(rows)),
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis=dict(title="predicted", side="bottom", tickmode="array", tickvals=x, ticktext=x, automargin=True,
                   tickangle=-30 if len(columns) > 4 else 0),
        yaxis=dict(title="ground truth", autorange="reversed", tickmode="array", tickvals=y, ticktext=y,
                   automargin=True),
    )
    return figure


#: Keys of a loss-history entry that are not loss values.
NOT_LOSSES = frozenset({"x", "epoch", "step", "steps", "epochs", "lr", "elapsed_s", "seconds", "teacher_temp",
                        "epoch_done", "steps_per_epoch"})


def loss_frame(loss_history: Sequence[Any]) -> pd.DataFrame:
    """Loss history (dicts with 'loss' and optional 'x', 'epoch', term losses) -> long frame of
    x, epoch (1-based: the epoch a step belongs to), term and value."""
    rows = []
    for index, entry in enumerate(loss_history or []):
        if isinstance(entry, (int, float)):
            entry = {"loss": float(entry)}
        if not isinstance(entry, dict):
            continue
        x = float(entry.get("x", entry.get("epoch", index + 1)))
        epoch = max(1, math.ceil(x - 1e-9))  # a step at x in (e-1, e] belongs to epoch e
        for key, value in entry.items():
            if key in NOT_LOSSES or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if key == "total" and "loss" in entry:
                continue
            rows.append({"x": x, "epoch": epoch, "term": "total" if key == "loss" else key, "value": float(value)})
    return pd.DataFrame(rows, columns=["x", "epoch", "term", "value"])


def loss_chart(loss_history: Sequence[Any], title: str = "Training loss") -> go.Figure | None:
    """The loss per epoch (mean over its steps, bold) over the single steps (faint); the other loss
    terms can be switched on in the legend. None without data."""
    frame = loss_frame(loss_history)
    if frame.empty:
        return None
    figure = go.Figure()
    total = frame[frame["term"] == "total"]
    if len(total) > total["epoch"].nunique():  # steps within epochs: draw them faint behind the means
        figure.add_trace(go.Scatter(x=total["x"], y=total["value"], mode="lines", name="total, per step",
                                    line=dict(width=1, color="rgba(37, 99, 235, 0.25)"), hoverinfo="skip"))
    for term, part in frame.groupby("term", sort=False):
        means = part.groupby("epoch", sort=True)["value"].mean()
        figure.add_trace(go.Scatter(
            x=means.index.to_numpy(), y=means.to_numpy(), mode="lines+markers" if len(means) < 30 else "lines",
            name=f"{term}, epoch mean", line=dict(width=3 if term == "total" else 1.5,
                                                  color="#2563eb" if term == "total" else None),
            visible=True if term == "total" else "legendonly",
        ))
    layout = dict(CHART_LAYOUT, legend=dict(orientation="h", yanchor="top", y=-0.22, x=0),
                  margin=dict(l=10, r=10, t=36, b=60), height=300)
    figure.update_layout(**layout, title=title, xaxis_title="epoch", yaxis_title="loss")
    return figure
