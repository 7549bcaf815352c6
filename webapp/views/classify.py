"""Classify new images: the run's named classes (under your current labels) placed on a folder of new
images as a background job; the result browsable per class with the unknown regions on their own, and
the unknown ones as the next discovery round, with the named classes as its labeled set."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from storage import DONE, FAILED
from webapp import gallery, job_control, messages, navigation, widgets
from webapp.classify_job import CLASSIFY, classification_dir, start_classification
from webapp.workspace import get_store

store = get_store()
project_id = navigation.select_project()
run_id = navigation.select_run(project_id)
assert project_id is not None and run_id is not None
GALLERY_LIMIT = 60

messages.show()
st.title("Classify new images", anchor=False)
st.caption("The selected run's classes, named, merged and corrected as they are now, make a model (kept, never "
           "changed: a later relabel makes a new one). Each region of the new images gets the nearest named "
           "class, or 'unknown' when it is farther from every class than the run's own regions are.")

with st.form("classify_form"):
    folder = st.text_input("Folder of new images", help="Images of the same line and size as the run's; a normal/ "
                                                         "subfolder, when there is one, holds their references.")
    maps = st.text_input("Their anomaly maps (only when this run's maps were imported)", value="")
    submitted = st.form_submit_button("Classify", type="primary")
if submitted:
    if not folder or not Path(folder).expanduser().is_dir():
        st.error(f"{folder or 'the folder'}: not a folder on this machine")
    else:
        start_classification(store, run_id, Path(folder).expanduser(), Path(maps).expanduser() if maps else None)
        st.rerun()

runs = [r for r in store.list_runs(project_id, kind=CLASSIFY) if r.parent_run_id == run_id]
if not runs:
    widgets.empty_state("No classification yet", "Give a folder of new images above.")
    st.stop()
chosen = st.selectbox("Classification", runs, format_func=lambda r: f"#{r.id} {r.settings.get('images')} ({r.status})")


@st.fragment(run_every=2.0)
def watch(run_id_: int) -> None:
    run = store.get_run(run_id_)
    if run.status in job_control.ACTIVE:
        widgets.progress_panel(run)
    elif run.status != DONE:
        st.rerun()


if chosen.status in job_control.ACTIVE:
    watch(chosen.id)
    st.stop()
if chosen.status == FAILED:
    st.error(chosen.message or "the classification failed")
    st.stop()
if chosen.status != DONE:
    st.info(f"Classification #{chosen.id} is {chosen.status}.")
    st.stop()

out = classification_dir(store, chosen)
summary = json.loads((out / "classification.json").read_text(encoding="utf-8"))
images = pd.read_csv(out / "images.csv")
regions = pd.read_csv(out / "regions.csv")
widgets.metric_cards([
    ("Images", f"{summary['images']:,}"),
    ("Regions", f"{summary['regions']:,}"),
    ("Unknown regions", f"{summary['unknown_regions']:,}", "Far from every named class: the next round's material."),
    ("Classes", len(summary["classes"])),
])
st.caption(f"Open set: {summary['open_set']}. Maps: {summary['detector']}.")


def crops_of(name: str) -> list[tuple[Path, Path]]:
    folder = out / "crops" / "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    crops = [p for p in sorted(folder.glob("*.png")) if not p.stem.endswith("_mask")]
    return [(p, p.with_name(p.stem + "_mask.png")) for p in crops]


names = sorted(set(regions["class"])) if len(regions) else []
tabs = st.tabs([f"{n} ({int((regions['class'] == n).sum())})" for n in names] + ["Images"])
for tab, name in zip(tabs, names):
    with tab:
        shown = crops_of(str(name))
        st.image([gallery.thumbnail(str(c), str(m)) for c, m in shown[:GALLERY_LIMIT]], width=96)
        if len(shown) > GALLERY_LIMIT:
            st.caption(f"the first {GALLERY_LIMIT} of {len(shown)}; all in {out / 'crops'}")
with tabs[-1]:
    st.dataframe(images, hide_index=True, width="stretch")

if summary.get("unknown_images_folder"):
    st.subheader("Next round", anchor=False)
    st.caption("A new project of the images holding unknown regions, with this run's named classes as its labeled "
               "set: discovery looks for new classes beside them.")
    if st.button("Discover the unknown ones", icon=":material/rocket_launch:"):
        source = store.get_run(run_id)
        settings = {"labeled_dir": summary["labeled_set"]} if summary.get("labeled_set") else {}
        project = store.create_project(f"unknown of classification #{chosen.id}", out / "unknown", settings)
        job_control.start_job(store, project.id, job_control.DISCOVER, {**source.settings, "classes": "auto"})
        navigation.set_project(project.id)
        st.switch_page("views/discover.py")
