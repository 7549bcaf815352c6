"""Labels & runs: named clusters become the labeled set, a new run learns from it, names carry
over to the new run's clusters, and two runs can be compared cluster by cluster.

The retraining run started here is followed here too: its live progress, and when it ends, its
outcome (K chosen, how sure) or its failure in words, with the worker log."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.config import SettingsError
from core.settings import SETTING
from storage import DONE, SOURCE_ENGINEER, SOURCE_IMPORTED, RunInfo
from webapp import downloads, evaluation, job_control, messages, navigation
from webapp.workspace import get_store
from webapp.widgets import (
    class_estimate_note,
    empty_state,
    literal,
    metric_cards,
    page_link,
    progress_panel,
    run_summary,
)

store = get_store()
project_id = navigation.select_project()
run_id = navigation.select_run(project_id)
assert project_id is not None and run_id is not None
run = store.get_run(run_id)

st.title("Labels & runs", anchor=False)
st.caption("Name clusters on the Explore page, turn the names into labels here, and start a run that "
           "learns them while it keeps discovering what is still unnamed.")
messages.show()

clusters = [c for c in store.list_clusters(run_id) if c.region_count > 0]  # empty clusters are not counted
named = [c for c in clusters if c.name and not c.is_normal]
labels = store.list_labels(project_id)
engineer = [lab for lab in labels if lab.source == SOURCE_ENGINEER]
imported = [lab for lab in labels if lab.source == SOURCE_IMPORTED]
labeled_set = store.labeled_set(project_id)
metric_cards([
    ("Named clusters", f"{len(named)} / {len(clusters)}", "In the run chosen in the sidebar (clusters holding regions)."),
    ("Labeled regions", f"{len(labeled_set):,}", "Engineer labels win over imported ones."),
    ("Classes in the labeled set", f"{len(set(labeled_set.values()))}"),
    ("Finished runs", f"{len(navigation.finished_runs(store, project_id))}"),
])

def latest_retrain(project: int) -> RunInfo | None:
    """The newest run started to learn from the labeled set (from this page), any status."""
    for candidate in store.list_runs(project, kind=job_control.DISCOVER):
        if candidate.parent_run_id or candidate.settings.get("labels_from_project"):
            return candidate
    return None


@st.fragment(run_every=1.0)
def follow_run(active_id: int) -> None:
    """Live state of the retraining run; the whole page reruns when it ends (to show its outcome)."""
    current = store.get_run(active_id)
    if current.status not in job_control.ACTIVE:
        st.rerun()
    progress_panel(current)
    st.caption(job_control.place(store, current))  # "queued, 2nd in line on the gpu queue" or "running on gpu-2, cuda:0"
    page_link("views/discover.py", "See its loss chart on the Discover page", ":material/rocket_launch:")


def retrain_outcome(last: RunInfo) -> None:
    """How the last retraining run ended: K and how sure, or the failure and what to do, with its log."""
    st.markdown(f"**Last retraining run #{last.id}**")
    run_summary(last)
    if last.status == DONE:
        class_estimate_note(last)
        if last.id != run_id and st.button(f"Show run #{last.id} on every page", key="labels_open_retrain",
                                           icon=":material/visibility:"):
            navigation.set_run(last.id)
            st.rerun()
    elif last.status == "failed":
        st.caption("Nothing of the earlier runs was changed. Adjust the settings below (for example a fixed "
                   "number of new classes) and start the run again.")
        log = job_control.read_log_tail(store, last)
        if log.strip():
            with st.expander("Worker log"):
                st.code(log, language=None)


# ------------------------------------------------------------------------------ labeled set
st.subheader("1 · Named clusters become the labeled set", anchor=False)
left, right = st.columns([3, 2], gap="medium")
with left:
    if not named:
        empty_state("No named cluster in this run yet",
                    "Give clusters names on the Explore page (Clusters tab); named clusters become classes.",
                    icon=":material/sell:")
    else:
        st.dataframe(
            pd.DataFrame([{"class name": c.display_name, "regions": c.region_count, "images": c.image_count,
                           "mean confidence": c.mean_confidence} for c in named]),
            hide_index=True, width="stretch",
            column_config={"mean confidence": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="%.2f")},
        )
        if st.button(f"Add the {len(named)} named clusters to the labeled set", icon=":material/new_label:",
                     type="primary", key="labels_promote",
                     help="Each region of a named cluster gets its cluster's name as its label; regions you "
                          "marked normal (or of a cluster you marked normal) are labeled 'normal', so the next run "
                          "learns them as normal. Left out: the model's own normal cluster, unnamed clusters and "
                          "images where no anomaly was found. Undo on the Explore page reverts it."):
            messages.perform(lambda: store.promote_to_labels(run_id),
                             lambda n: f"{n} regions are now labeled: with their cluster's name, or 'normal' where "
                                       "you marked them normal.")
            st.rerun()
with right:
    if labeled_set:
        counts = pd.Series(list(labeled_set.values()), name="class").value_counts().rename_axis("class").reset_index(name="regions")
        st.markdown("**Labeled set of the project**")
        st.dataframe(counts, hide_index=True, width="stretch")
        st.caption(f"{len(engineer):,} engineer labels, {len(imported):,} imported.")
    else:
        empty_state("The labeled set is empty",
                    "Promote named clusters (left) or create the project with a labeled set of crops.",
                    icon=":material/label_off:")

# ------------------------------------------------------------------------------ retrain
st.subheader("2 · Start a run that learns from the labeled set", anchor=False)
active = job_control.active_runs(store, project_id, job_control.DISCOVER)
retrain = latest_retrain(project_id)
if active:
    with st.container(border=True):
        st.markdown(f"**Discovery run #{active[0].id} is in progress** — this page follows it.")
        follow_run(active[0].id)
elif retrain is not None:
    with st.container(border=True):
        retrain_outcome(retrain)
with st.form("labels_retrain", border=True):
    settings = dict(run.settings)
    cols = st.columns(3)
    classes_text = cols[0].text_input(
        "New classes to discover", value=str(settings.get("classes", "auto")),
        help="How many clusters beyond the labeled classes, or 'auto' to estimate.")
    epochs = cols[1].number_input("Epochs", min_value=int(SETTING["epochs"].low), max_value=int(SETTING["epochs"].high),
                                  value=int(settings.get("epochs") or 10))
    seed = cols[2].number_input("Seed", min_value=0, max_value=2**31 - 1, value=int(settings.get("seed") or 0))
    st.caption(f"Starts from the settings of run #{run.id}; the new run's clusters get the names of the "
               "clusters they share most regions with, so no naming work is lost.")
    submitted = st.form_submit_button("Start the new run", icon=":material/model_training:", type="primary",
                                      disabled=not labeled_set or bool(active))
    if not labeled_set:
        st.caption("Add named clusters to the labeled set first.")
if submitted:
    try:  # the bounds of the settings table (core.settings): refused here, not by the run 14 s later
        classes = SETTING["classes"].parse(classes_text)
    except SettingsError as error:
        messages.flash("error", f"'New classes to discover': {literal(error)}.")
    else:
        settings.update(classes=classes, epochs=int(epochs), seed=int(seed),
                        labels_from_project=True, parent_run_id=run_id)
        new_id = job_control.start_job(store, project_id, job_control.DISCOVER, settings, parent_run_id=run_id)
        messages.flash("success", f"Run #{new_id} started; it learns {len(labeled_set):,} labeled regions. "
                            "This page follows it below.")
    st.rerun()

# ------------------------------------------------------------------------------ carry names
finished = [r for r in store.list_runs(project_id, kind="discover") if r.status == DONE]
by_id = {r.id: r for r in finished}


def run_text(rid: int) -> str:
    return navigation.run_label(by_id[rid])


st.subheader("3 · Compare two runs", anchor=False)
if len(finished) < 2:
    empty_state("Only one finished run",
                "Start a run that learns from the labeled set (above); then compare it with this one here.",
                icon=":material/compare_arrows:")
    st.stop()

ids = [r.id for r in finished]  # newest first
default_b = run_id
default_a = run.parent_run_id if run.parent_run_id in by_id else next((i for i in ids if i != run_id), ids[-1])
pick = st.columns(2)
run_a = pick[0].selectbox("Run A (before)", ids, index=ids.index(default_a), format_func=run_text, key="compare_a")
run_b = pick[1].selectbox("Run B (after)", ids, index=ids.index(default_b), format_func=run_text, key="compare_b")
if run_a == run_b:
    st.info("Choose two different runs to compare.")
    st.stop()

comparison = evaluation.compare_runs(store, run_a, run_b)
metric_cards([
    ("Regions in both runs", f"{comparison.shared_regions:,}"),
    ("Changed cluster", f"{len(comparison.changed):,}",
     "Regions whose cluster in B is not the match of their cluster in A."),
    ("Matched clusters", f"{len(comparison.matches)}"),
    ("New clusters in B", f"{len(comparison.new_clusters)}", "Clusters of B that match no cluster of A."),
])
tab_match, tab_new, tab_changed = st.tabs(["Matched clusters", "New clusters", "Changed regions"])
with tab_match:
    st.dataframe(comparison.matches, hide_index=True, width="stretch")
    if st.button("Give B's unnamed clusters the names of their matches in A", icon=":material/drive_file_rename_outline:",
                 key="labels_carry"):
        messages.perform(lambda: store.carry_over_names(run_a, run_b),
                   lambda matches: f"Names carried over along {len(matches)} matched clusters "
                                   f"(undo on the Explore page of run #{run_b}).")
        st.rerun()
with tab_new:
    if comparison.new_clusters.empty:
        st.caption("Every cluster of B matches a cluster of A.")
    else:
        st.dataframe(comparison.new_clusters, hide_index=True, width="stretch")
with tab_changed:
    if comparison.changed.empty:
        st.caption("No region changed cluster.")
    else:
        st.dataframe(comparison.changed, hide_index=True, width="stretch", height=320)
        st.download_button("Download changed regions (CSV)", downloads.to_bytes(comparison.changed),
                           file_name=f"changed_regions_run{run_a}_vs_run{run_b}.csv", mime="text/csv",
                           icon=":material/download:")
