"""State and data of the explore and results pages (Explore, Labels & runs, Evaluate, Export).

The explore selection is a list of region ids in st.session_state[SELECTION_KEY]: the UMAP
chart's on_select callback writes it (reading the chart's state as a mapping, so AppTest can
set it), and so do "select this cluster" and the image view. Everything the pages compute from
the database (the UMAP figure, exports, metrics, run comparison) is a function here, cached by
the run's *revision* (the versions of its clusters, bumped by every edit) so a rerun that did
not change the run reuses the figure and frames instead of re-querying 5,000 regions.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.metrics import cluster_metrics, protocol_levels
from core.records import GOOD
from storage import (
    NORMAL_CLASS,
    SOURCE_GROUND_TRUTH,
    ClusterInfo,
    EditConflict,
    ImageClass,
    NothingToUndo,
    StorageError,
    Store,
)
from storage.export import (
    coco_dict,
    export_crops_zip,
    images_frame,
    neutralize_frame,
    regions_frame,
)

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
#: One-shot messages shown after the rerun an action triggers.
FLASH_KEY = "explore_flash"
#: Trace name of regions marked normal / false detection on the UMAP plot.
NORMAL_TRACE = "marked normal / false detection"
#: Color of normal regions and normal clusters on the plot.
NORMAL_COLOR = "#b0b7c3"
#: Above this many points the scatter uses WebGL (Scattergl); below, SVG (crisper, any browser).
WEBGL_MIN_POINTS = 1500

T = TypeVar("T")


# ------------------------------------------------------------------------------ selection


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


def selected_ids() -> list[int]:
    """The current selection (region ids)."""
    return list(st.session_state.get(SELECTION_KEY) or [])


def set_selection(ids: Iterable[int], source: str) -> None:
    """Replace the selection and go back to the first gallery page."""
    st.session_state[SELECTION_KEY] = [int(i) for i in dict.fromkeys(ids)]
    st.session_state[SELECTION_SOURCE_KEY] = source
    st.session_state[PAGE_KEY] = 0


def on_chart_select() -> None:
    """on_select callback of the UMAP chart: its box / lasso / click selection becomes ours."""
    ids = region_ids_from_selection(st.session_state.get(CHART_KEY))
    st.session_state[LAST_CHART_KEY] = ids
    set_selection(ids, "plot")


def sync_chart_selection() -> None:
    """Adopt a chart selection that reached session state without the callback (AppTest sets the
    chart's state directly). An empty chart state is ignored: after an edit the figure changes
    and the chart starts empty, which must not drop the engineer's selection."""
    ids = region_ids_from_selection(st.session_state.get(CHART_KEY))
    if ids and ids != st.session_state.get(LAST_CHART_KEY):
        st.session_state[LAST_CHART_KEY] = ids
        set_selection(ids, "plot")


def clear_selection() -> None:
    set_selection([], "")


# ------------------------------------------------------------------------------ messages


def flash(kind: str, text: str) -> None:
    """Queue a message ("success", "info", "warning", "error") for the next run of the page."""
    st.session_state.setdefault(FLASH_KEY, []).append((kind, text))


def show_flashes() -> None:
    """Show and forget the queued messages (plain text: names are never rendered as HTML)."""
    for kind, text in st.session_state.pop(FLASH_KEY, []) or []:
        show = {"success": st.success, "info": st.info, "warning": st.warning}.get(kind, st.error)
        show(text)


def perform(action: Callable[[], T], success: str | Callable[[T], str]) -> T | None:
    """Run one storage edit; queue its success message, or a clear one when it fails.

    EditConflict (someone else changed the cluster) and other storage errors become messages,
    never tracebacks; the page reruns afterwards and shows the fresh state.
    """
    try:
        result = action()
    except EditConflict as error:
        flash("error", f"Edit conflict: {error}. The page now shows the latest state; please try again.")
        return None
    except NothingToUndo as error:
        flash("info", str(error).capitalize() + ".")
        return None
    except StorageError as error:
        flash("error", str(error))
        return None
    flash("success", success(result) if callable(success) else success)
    return result


# ------------------------------------------------------------------------------ cached run data


def run_revision(store: Store, run_id: int) -> tuple[tuple[int, int], ...]:
    """A fingerprint of a run's edited state: every cluster's id and version.

    Each edit (and each undo / redo) bumps the version of the clusters it touches, so the
    fingerprint changes exactly when the plot, gallery or exports could change.
    """
    return tuple((c.id, c.version) for c in store.list_clusters(run_id, include_merged=True))


@st.cache_resource(max_entries=16, show_spinner=False)
def umap_points(_store: Store, store_url: str, run_id: int, revision: tuple) -> pd.DataFrame:
    """UMAP points of a run (storage.umap_points), cached per revision; do not mutate."""
    return _store.umap_points(run_id)


@st.cache_resource(max_entries=16, show_spinner=False)
def image_classes_of(_store: Store, store_url: str, run_id: int, revision: tuple) -> list[ImageClass]:
    """Fused image-level classes of a run's current assignments, cached per revision."""
    return _store.image_classes(run_id)


@st.cache_resource(max_entries=16, show_spinner=False)
def clusters_of(_store: Store, store_url: str, run_id: int, revision: tuple) -> list[ClusterInfo]:
    """The run's live clusters with counts, cached per revision."""
    return _store.list_clusters(run_id)


def _custom_data(part: pd.DataFrame) -> list[list[float]]:
    """[region id, confidence] per point as plain lists: a numpy array would travel as a typed
    array and come back from the browser's selection as a dict instead of a list."""
    return [[int(r), round(float(c), 4)] for r, c in zip(part["region_id"], part["confidence"])]


def umap_figure(points: pd.DataFrame, clusters: Sequence[ClusterInfo], height: int = 560) -> go.Figure:
    """The UMAP scatter: one trace per cluster (its color), normal regions in one gray trace.

    Every point carries [region id, confidence] as custom_data so a box / lasso selection reports
    region ids whatever trace the point is in.
    """
    trace_type = go.Scattergl if len(points) >= WEBGL_MIN_POINTS else go.Scatter
    marker_size = 5 if len(points) >= WEBGL_MIN_POINTS else 8
    figure = go.Figure()
    has_xy = points["x"].notna() & points["y"].notna()
    points = points[has_xy]
    cluster_normal = {c.id: c.is_normal for c in clusters}
    region_normal = points["is_normal"].astype(bool) & ~points["cluster_id"].map(cluster_normal).fillna(False).astype(bool)
    hover = "region %{customdata[0]}<br>confidence %{customdata[1]:.2f}<extra>%{fullData.name}</extra>"
    by_cluster = dict(tuple(points[~region_normal].groupby("cluster_id", sort=False)))
    for cluster in clusters:
        part = by_cluster.get(cluster.id)
        if part is None or part.empty:
            continue
        name = cluster.display_name + (" (normal)" if cluster.is_normal else "")
        figure.add_trace(trace_type(
            x=part["x"].to_numpy(), y=part["y"].to_numpy(), mode="markers", name=f"{name} ({len(part)})",
            customdata=_custom_data(part),
            marker=dict(color=NORMAL_COLOR if cluster.is_normal else cluster.color, size=marker_size,
                        opacity=0.85, line=dict(width=0)),
            hovertemplate=hover,
        ))
    normal = points[region_normal]
    if not normal.empty:
        figure.add_trace(trace_type(
            x=normal["x"].to_numpy(), y=normal["y"].to_numpy(), mode="markers",
            name=f"{NORMAL_TRACE} ({len(normal)})",
            customdata=_custom_data(normal),
            marker=dict(color=NORMAL_COLOR, size=marker_size, symbol="x", opacity=0.9),
            hovertemplate=hover,
        ))
    figure.update_layout(
        template="plotly_white", height=height, margin=dict(l=10, r=10, t=10, b=10),
        dragmode="lasso", uirevision="umap", clickmode="event+select",
        legend=dict(orientation="h", yanchor="top", y=-0.02, x=0, font=dict(size=11)),
        xaxis=dict(showticklabels=False, title=None, zeroline=False),
        yaxis=dict(showticklabels=False, title=None, zeroline=False, scaleanchor=None),
    )
    return figure


@st.cache_resource(max_entries=8, show_spinner=False)
def cached_umap_figure(_store: Store, store_url: str, run_id: int, revision: tuple) -> go.Figure:
    """The UMAP figure of a run, built once per revision (the same object every rerun)."""
    points = umap_points(_store, store_url, run_id, revision)
    clusters = clusters_of(_store, store_url, run_id, revision)
    return umap_figure(points, clusters)


# ------------------------------------------------------------------------------ exports


def regions_csv_bytes(store: Store, run_id: int, region_ids: Iterable[int] | None = None) -> bytes:
    """The regions CSV of storage's export (all regions, or only the given ones), as UTF-8 bytes."""
    frame = regions_frame(store, run_id)
    if region_ids is not None:
        wanted = set(int(i) for i in region_ids)
        frame = frame[frame["region_id"].isin(wanted)]
    return neutralize_frame(frame).to_csv(index=False).encode("utf-8")


def images_csv_bytes(store: Store, run_id: int, region_ids: Iterable[int] | None = None) -> bytes:
    """The images CSV (fused image classes), all images or those holding the given regions."""
    frame = images_frame(store, run_id)
    if region_ids is not None:
        wanted = set(int(i) for i in region_ids)
        regions = regions_frame(store, run_id)
        images = set(regions.loc[regions["region_id"].isin(wanted), "image"])
        frame = frame[frame["image"].isin(images)]
    return neutralize_frame(frame).to_csv(index=False).encode("utf-8")


@st.cache_data(max_entries=16, show_spinner="Preparing the CSV ...")
def cached_csv(_store: Store, store_url: str, kind: str, run_id: int, revision: tuple,
               region_ids: tuple[int, ...] | None) -> bytes:
    """regions_csv_bytes / images_csv_bytes cached per run revision and selection."""
    make = regions_csv_bytes if kind == "regions" else images_csv_bytes
    return make(_store, run_id, None if region_ids is None else list(region_ids))


def crops_zip_bytes(store: Store, run_id: int, include_normal: bool = False) -> bytes:
    """storage's folder-per-class ZIP of the crops, as bytes."""
    with tempfile.TemporaryDirectory(prefix="studio-export-") as folder:
        path = export_crops_zip(store, run_id, Path(folder) / "crops.zip", include_normal=include_normal)
        return path.read_bytes()


def coco_json_bytes(store: Store, run_id: int, include_normal: bool = False) -> bytes:
    """storage's COCO-style JSON of boxes with class names, as UTF-8 bytes."""
    return json.dumps(coco_dict(store, run_id, include_normal=include_normal), ensure_ascii=False, indent=1).encode("utf-8")


# ------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True)
class LevelEvaluation:
    """Clustering quality at one level (images or regions) against ground truth."""

    level: str  # "image" or "region"
    n: int
    metrics: dict[str, float]  # nmi, ari, f1
    confusion: pd.DataFrame  # rows: ground-truth class, columns: predicted class, counts


def _level(level: str, truth: Sequence[str], predicted: Sequence[str]) -> LevelEvaluation | None:
    if not truth:
        return None
    table = pd.crosstab(pd.Series(list(truth), name="ground truth"), pd.Series(list(predicted), name="predicted"))
    table = table.reindex(sorted(table.index), axis=0)
    return LevelEvaluation(level, len(truth), cluster_metrics(list(truth), list(predicted)), table)


def _protocol(store: Store, run_id: int) -> dict[str, tuple[list[str], list]]:
    """The run's current (edited) classes in core's metrics protocol (core.metrics.protocol_levels).

    A region's truth is its ground-truth label when storage holds one, else its image's class.
    """
    images = store.image_classes(run_id)
    run = store.get_run(run_id)
    gt_image = {c.image: c.gt_class or None for c in images}
    gt_labels = {label.region_id: label.class_name for label in store.list_labels(run.project_id, SOURCE_GROUND_TRUTH)}
    regions = regions_frame(store, run_id)
    region_truth = [gt_labels.get(row.region_id) or gt_image.get(row.image) for row in regions.itertuples(index=False)]
    return protocol_levels([c.gt_class or None for c in images], [c.class_name for c in images],
                           region_truth, list(regions["class_name"]) if len(regions) else [])


def evaluate_run(store: Store, run_id: int) -> dict[str, LevelEvaluation]:
    """NMI / ARI / F1 and confusion tables of a run's current (edited) classes, as in metrics.json:
    defective images and their regions. Returns {} when the project has no ground truth."""
    levels = _protocol(store, run_id)
    out: dict[str, LevelEvaluation] = {}
    for level in ("image", "region"):
        evaluation = _level(level, *levels[level])
        if evaluation is not None:
            out[level] = evaluation
    return out


def with_good(store: Store, run_id: int) -> LevelEvaluation | None:
    """Image-level metrics over all test images with ground truth, "good" as one more class
    (normal predicted as the normal class): the paper's protocol."""
    truth, predicted = _protocol(store, run_id)["image_with_good"]
    return _level("image (with good)", [NORMAL_CLASS if t == GOOD else t for t in truth], predicted)


def confusion_figure(table: pd.DataFrame, title: str) -> go.Figure:
    """A confusion matrix heatmap with the counts written in the cells."""
    z = table.to_numpy()
    figure = go.Figure(go.Heatmap(
        z=z, x=[str(c) for c in table.columns], y=[str(i) for i in table.index],
        colorscale="Blues", text=z, texttemplate="%{text}", showscale=False,
        hovertemplate="truth %{y}<br>predicted %{x}<br>%{z}<extra></extra>",
    ))
    figure.update_layout(
        template="plotly_white", title=title, height=max(260, 60 + 36 * len(table.index)),
        margin=dict(l=10, r=10, t=40, b=10), xaxis=dict(title="predicted", side="bottom"),
        yaxis=dict(title="ground truth", autorange="reversed"),
    )
    return figure


# ------------------------------------------------------------------------------ run comparison


@dataclass(frozen=True)
class RunComparison:
    """How run B relates to run A: matched clusters, B's new clusters, regions that changed."""

    matches: pd.DataFrame  # cluster A, cluster B, shared regions, size A, size B
    new_clusters: pd.DataFrame  # clusters of B matched by no cluster of A
    changed: pd.DataFrame  # region id, image, cluster in A, cluster in B
    shared_regions: int


def compare_runs(store: Store, run_a: int, run_b: int) -> RunComparison:
    """Match the clusters of two runs by shared regions and list what changed."""
    clusters_a = {c.id: c for c in store.list_clusters(run_a)}
    clusters_b = {c.id: c for c in store.list_clusters(run_b)}
    matches = store.match_clusters(run_a, run_b)
    match_rows = [
        {
            "cluster in A": clusters_a[m.cluster_a_id].display_name if m.cluster_a_id in clusters_a else f"#{m.cluster_a_id}",
            "cluster in B": clusters_b[m.cluster_b_id].display_name if m.cluster_b_id in clusters_b else f"#{m.cluster_b_id}",
            "shared regions": m.overlap,
            "regions in A": clusters_a[m.cluster_a_id].region_count if m.cluster_a_id in clusters_a else None,
            "regions in B": clusters_b[m.cluster_b_id].region_count if m.cluster_b_id in clusters_b else None,
        }
        for m in matches
    ]
    matched_b = {m.cluster_b_id for m in matches}
    new_rows = [
        {"cluster in B": c.display_name, "regions": c.region_count, "images": c.image_count,
         "normal": c.is_normal}
        for c in clusters_b.values() if c.id not in matched_b and c.region_count > 0
    ]
    changes = store.changed_regions(run_a, run_b)
    changed = pd.DataFrame(
        [{"region": c.region_id, "image": c.image, "cluster in A": c.cluster_a_name, "cluster in B": c.cluster_b_name}
         for c in changes],
        columns=["region", "image", "cluster in A", "cluster in B"],
    )
    shared = sum(m.overlap for m in matches) + len(changes)  # unchanged (matched pair) + changed
    return RunComparison(
        matches=pd.DataFrame(match_rows, columns=["cluster in A", "cluster in B", "shared regions", "regions in A", "regions in B"]),
        new_clusters=pd.DataFrame(new_rows, columns=["cluster in B", "regions", "images", "normal"]),
        changed=changed,
        shared_regions=shared,
    )


def to_bytes(frame: pd.DataFrame) -> bytes:
    """A small table as CSV bytes (neutralized) for a download button."""
    buffer = io.StringIO()
    neutralize_frame(frame).to_csv(buffer, index=False)
    return buffer.getvalue().encode("utf-8")
