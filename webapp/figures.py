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

import pandas as pd
import plotly.graph_objects as go

from storage import ClusterInfo
from storage.records import STATE_NO_ANOMALY
from webapp.widgets import CHART_LAYOUT

#: Trace name of regions marked normal by the engineer on the UMAP plot.
NORMAL_TRACE = "marked normal by you"
#: Trace name of whole-image placeholders of images where MEBin found no anomaly.
NO_ANOMALY_TRACE = "no anomaly found (whole image)"
#: Color of normal regions and normal clusters on the plot.
NORMAL_COLOR = "#b0b7c3"
#: Above this many points the scatter uses WebGL (Scattergl); below, SVG (crisper, any browser).
WEBGL_MIN_POINTS = 1500
#: Longest label drawn in a legend or on an axis; longer names are cut with an ellipsis.
LABEL_CHARS = 32


def plot_text(text: Any, limit: int | None = LABEL_CHARS) -> str:
    """User text made safe for a plotly label: HTML escaped (shown literally), cut to `limit`
    characters before escaping so no escape sequence is cut in half."""
    value = str(text)
    if limit is not None and len(value) > limit:
        value = value[: limit - 1].rstrip() + "…"
    return html.escape(value, quote=False)


def _custom_data(part: pd.DataFrame, cluster_name: str) -> list[list[Any]]:
    """[region id, confidence, image, cluster] per point as plain lists: a numpy array would travel
    as a typed array and come back from the browser's selection as a dict instead of a list."""
    images = part["image"] if "image" in part else [""] * len(part)
    return [[int(r), round(float(c), 4), plot_text(i, 60), cluster_name]
            for r, c, i in zip(part["region_id"], part["confidence"], images)]


def umap_figure(points: pd.DataFrame, clusters: Sequence[ClusterInfo], selected: Collection[int] = (),
                height: int = 560) -> go.Figure:
    """The UMAP scatter: one trace per cluster (its color), regions marked normal in one gray trace,
    whole-image placeholders of images with no anomaly found in one hollow trace.

    Every point carries [region id, confidence, image, cluster] as custom_data so a box / lasso
    selection reports region ids whatever trace the point is in. The `selected` region ids are
    drawn highlighted (plotly's selectedpoints), so the selection stays visible after any rerun.
    """
    trace_type = go.Scattergl if len(points) >= WEBGL_MIN_POINTS else go.Scatter
    marker_size = 5 if len(points) >= WEBGL_MIN_POINTS else 8
    figure = go.Figure()
    has_xy = points["x"].notna() & points["y"].notna()
    points = points[has_xy]
    chosen = set(int(i) for i in selected)
    cluster_normal = {c.id: c.is_normal for c in clusters}
    none_found = points["state"] == STATE_NO_ANOMALY
    region_normal = (points["is_normal"].astype(bool) & ~none_found
                     & ~points["cluster_id"].map(cluster_normal).fillna(False).astype(bool))
    hover = ("<b>%{customdata[3]}</b><br>region %{customdata[0]} · confidence %{customdata[1]:.2f}"
             "<br>%{customdata[2]}<br><i>click to see its crop beside the plot</i><extra></extra>")

    def add(part: pd.DataFrame, name: str, full_name: str, marker: dict[str, Any]) -> None:
        selected_points = None
        if chosen:
            selected_points = [i for i, r in enumerate(part["region_id"]) if int(r) in chosen]
        figure.add_trace(trace_type(
            x=part["x"].to_numpy(), y=part["y"].to_numpy(), mode="markers", name=name,
            customdata=_custom_data(part, plot_text(full_name, 80)), marker=marker, hovertemplate=hover,
            selectedpoints=selected_points, selected=dict(marker=dict(opacity=1.0)),
            unselected=dict(marker=dict(opacity=0.18)),
        ))

    by_cluster = dict(tuple(points[~region_normal & ~none_found].groupby("cluster_id", sort=False)))
    for cluster in clusters:
        part = by_cluster.get(cluster.id)
        if part is None or part.empty:
            continue
        suffix = " · normal" if cluster.is_normal else ""
        add(part, f"{plot_text(cluster.display_name)}{suffix} ({len(part)})", cluster.display_name + suffix,
            dict(color=NORMAL_COLOR if cluster.is_normal else cluster.color, size=marker_size, opacity=0.85,
                 line=dict(width=0)))
    normal = points[region_normal]
    if not normal.empty:
        add(normal, f"{NORMAL_TRACE} ({len(normal)})", NORMAL_TRACE,
            dict(color=NORMAL_COLOR, size=marker_size, symbol="x", opacity=0.9))
    placeholders = points[none_found]
    if not placeholders.empty:
        add(placeholders, f"{NO_ANOMALY_TRACE} ({len(placeholders)})", NO_ANOMALY_TRACE,
            # an open symbol is drawn in the marker color: gray rings, visible on the plot and the legend
            dict(color="#6b7280", size=marker_size + 1, symbol="circle-open", opacity=0.9, line=dict(width=1.5)))
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
