"""A run's data as the pages show it, cached by the run's *revision* (the versions of its clusters,
bumped by every edit), so a rerun that did not change the run reuses the points, clusters and
figure instead of re-querying 50,000 regions; what no edit changes (the points' positions, images
and files) is read once per run."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from storage import ClusterInfo, ImageClass, Store
from webapp.figures import umap_figure


def run_revision(store: Store, run_id: int) -> tuple[tuple[int, int], ...]:
    """A fingerprint of a run's edited state: every cluster's id and version.

    Each edit (and each undo / redo) bumps the version of the clusters it touches, so the
    fingerprint changes exactly when the plot, gallery or exports could change.
    """
    return store.cluster_versions(run_id)


@st.cache_resource(max_entries=4, show_spinner=False)
def umap_geometry(_store: Store, store_url: str, run_id: int) -> pd.DataFrame:
    """What no edit changes of a run's points (storage.umap_geometry), read once per run; do not mutate."""
    return _store.umap_geometry(run_id)


@st.cache_resource(max_entries=16, show_spinner=False)
def umap_points(_store: Store, store_url: str, run_id: int, revision: tuple) -> pd.DataFrame:
    """UMAP points of a run (storage.umap_points), cached per revision; do not mutate."""
    return _store.umap_points(run_id, umap_geometry(_store, store_url, run_id))


@st.cache_resource(max_entries=16, show_spinner=False)
def image_classes_of(_store: Store, store_url: str, run_id: int, revision: tuple) -> list[ImageClass]:
    """Fused image-level classes of a run's current assignments, cached per revision."""
    return _store.image_classes(run_id)


@st.cache_resource(max_entries=64, show_spinner=False)
def image_class_of(_store: Store, store_url: str, run_id: int, revision: tuple, image: str) -> ImageClass | None:
    """The fused class of one image of a run (the image view of a large run fuses only it), per revision."""
    found = _store.image_classes(run_id, images=[image])
    return found[0] if found else None


@st.cache_resource(max_entries=16, show_spinner=False)
def clusters_of(_store: Store, store_url: str, run_id: int, revision: tuple) -> list[ClusterInfo]:
    """The run's live clusters with counts, cached per revision."""
    return _store.list_clusters(run_id)


@st.cache_resource(max_entries=8, show_spinner=False)
def cached_umap_figure(_store: Store, store_url: str, run_id: int, revision: tuple,
                       selected: tuple[int, ...] = (), colour: str = "cluster") -> go.Figure:
    """The UMAP figure of a run with its selection highlighted, built once per revision, selection
    and colouring (the same object on every rerun that changes none of them)."""
    points = umap_points(_store, store_url, run_id, revision)
    clusters = clusters_of(_store, store_url, run_id, revision)
    return umap_figure(points, clusters, selected, colour=colour)
