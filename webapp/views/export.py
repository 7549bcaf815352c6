"""Export: the run's regions and images as CSV (all, or the Explore selection), the crops as a
folder-per-class ZIP and the boxes as COCO JSON, all built by storage's export functions."""

from __future__ import annotations

import io

import pandas as pd
import streamlit as st

from storage.records import STATE_MARKED_NORMAL, STATE_NO_ANOMALY, STATE_NORMAL
from webapp import downloads, navigation, run_data, selection
from webapp.workspace import get_store
from webapp.widgets import metric_cards

store = get_store()
project_id = navigation.select_project()
run_id = navigation.select_run(project_id)
assert project_id is not None and run_id is not None

st.title("Export", anchor=False)
st.caption("Class names are written exactly as typed; cells a spreadsheet would run as a formula are "
           "prefixed with an apostrophe. Normal regions get the class 'normal' (the state column tells "
           "yours from the model's); an image where no anomaly was found is one row of class 'no anomaly "
           "found': the map's strongest spot, or the whole image.")

revision = run_data.run_revision(store, run_id)
points = run_data.umap_points(store, store.url, run_id, revision)
known = set(points["region_id"].tolist())
selected = [i for i in selection.selected_ids() if i in known]

scopes = ["Everything", f"The Explore selection ({len(selected):,} region{'' if len(selected) == 1 else 's'})"]
scope_index = st.radio("What to export", [0, 1], format_func=lambda i: scopes[i], horizontal=True,
                       key="export_scope", help="Select regions on the Explore page (box, lasso, a cluster or an image) to export only those.")
only_selection = scope_index == 1
if only_selection and not selected:
    st.info("Nothing is selected on the Explore page; exporting everything instead.")
    only_selection = False
region_ids = tuple(sorted(selected)) if only_selection else None
suffix = f"run{run_id}" + ("_selection" if only_selection else "")

regions_csv = downloads.cached_csv(store, store.url, "regions", run_id, revision, region_ids)
images_csv = downloads.cached_csv(store, store.url, "images", run_id, revision, region_ids)
regions = pd.read_csv(io.BytesIO(regions_csv))
images = pd.read_csv(io.BytesIO(images_csv))


def state_count(state: str) -> int:
    """Rows of the regions CSV in one state (defect, normal, marked normal, no anomaly found)."""
    return int((regions["state"] == state).sum()) if len(regions) else 0


metric_cards([
    ("Regions", f"{len(regions):,}"),
    ("Images", f"{len(images):,}"),
    ("Classes", f"{regions['class_name'].nunique() if len(regions) else 0}"),
    ("Marked normal", f"{state_count(STATE_MARKED_NORMAL):,}", "Regions you marked normal (class 'normal')."),
    ("Model: normal", f"{state_count(STATE_NORMAL):,}", "Predicted normal: regions in the model's normal cluster (class 'normal')."),
    ("No anomaly", f"{state_count(STATE_NO_ANOMALY):,}",
     f"Images where nothing rose above what normal images reach: one row each (the map's strongest spot, or the "
     f"whole image), class and state '{STATE_NO_ANOMALY}'."),
])

st.subheader("Tables", anchor=False)
cols = st.columns(2, gap="medium")
with cols[0]:
    with st.container(border=True):
        st.markdown("**Regions CSV**")
        st.caption("One row per region: image, box, cluster, class, confidence, anomaly score, run.")
        st.download_button("Download regions CSV", regions_csv, file_name=f"regions_{suffix}.csv", mime="text/csv",
                           icon=":material/table_view:", type="primary", key="export_regions", on_click="ignore")
with cols[1]:
    with st.container(border=True):
        st.markdown("**Images CSV**")
        st.caption("One row per image: fused image-level class, confidence, number of regions.")
        st.download_button("Download images CSV", images_csv, file_name=f"images_{suffix}.csv", mime="text/csv",
                           icon=":material/image:", key="export_images", on_click="ignore")

st.subheader("Data sets", anchor=False)
include_normal = st.checkbox("Include regions marked normal (as class 'normal')", value=False, key="export_normal")
cols = st.columns(2, gap="medium")
with cols[0]:
    with st.container(border=True):
        st.markdown("**Crops, one folder per class (ZIP)**")
        st.caption("A labeled data set for a classifier; classes.csv maps folders to exact class names. "
                   "Always the whole run.")
        st.download_button("Download crops ZIP", lambda: downloads.crops_zip_bytes(store, run_id, include_normal),
                           file_name=f"crops_run{run_id}.zip", mime="application/zip", icon=":material/folder_zip:",
                           key="export_zip", on_click="ignore")
with cols[1]:
    with st.container(border=True):
        st.markdown("**Boxes with class names (COCO JSON)**")
        st.caption("COCO-style detection annotations (bbox x, y, w, h) for every region. Always the whole run.")
        st.download_button("Download COCO JSON", lambda: downloads.coco_json_bytes(store, run_id, include_normal),
                           file_name=f"coco_run{run_id}.json", mime="application/json", icon=":material/data_object:",
                           key="export_coco", on_click="ignore")

st.subheader("Preview of the regions CSV", anchor=False)
st.dataframe(regions.head(500), hide_index=True, width="stretch", height=300)
if len(regions) > 500:
    st.caption(f"First 500 of {len(regions):,} rows.")
