"""Evaluate: when the data set has ground truth, how well the clusters match it.

NMI, ARI and Hungarian-matched F1 at image and region level, over the defective images as in
metrics.json, for the run's current (edited) classes, with confusion matrices; and the metrics
each finished run recorded when it ended, side by side. Ground truth is the image classes
(MVTec layout) and, where the data set has COCO annotations, the region-level truth the run
matched (a region on no annotation is "normal"), with how many annotated defects got a region.
"""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from storage import SOURCE_GROUND_TRUTH
from webapp import evaluation, figures, navigation, run_data
from webapp.workspace import get_store
from webapp.widgets import empty_state, metric_cards

store = get_store()
project_id = navigation.select_project()
run_id = navigation.select_run(project_id)
assert project_id is not None and run_id is not None

st.title("Evaluate", anchor=False)

region_truth = bool(store.list_labels(project_id, SOURCE_GROUND_TRUTH))
has_truth = region_truth or bool(store.project_counts(project_id)["gt_classes"])  # counted, not listed
if not has_truth:
    empty_state("No ground truth in this project",
                "Metrics need ground-truth classes: the MVTec layout's test/<class>/ folders, or COCO "
                "annotations (annotations.json at the data set's root). A plain folder of images has none, "
                "which is the normal case in production.",
                icon=":material/rule:")
    st.stop()

revision = run_data.run_revision(store, run_id)


@st.cache_resource(max_entries=8, show_spinner="Computing metrics ...")
def evaluated(_store, url: str, run: int, rev: tuple) -> tuple[dict[str, evaluation.LevelEvaluation], evaluation.LevelEvaluation | None]:
    return evaluation.evaluate_run(_store, run), evaluation.with_good(_store, run)


levels, with_good = evaluated(store, store.url, run_id, revision)


def number(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


st.caption(f"Run #{run_id} as it is now, with your names, merges and corrections. Computed over the "
           "defective images (ground truth not 'good') and their regions.")
if region_truth:
    st.caption("Region level: each region takes the class of the annotated defect it overlaps most (COCO "
               "annotations); a region on no annotation is a false detection, class 'normal'.")
coverage = (store.get_run(run_id).metrics or {}).get("region_coverage")
if isinstance(coverage, dict) and coverage.get("annotations"):
    st.subheader("Annotated defects found", anchor=False)
    metric_cards([
        ("Recall", f"{coverage['recall']:.1%}", "Share of the annotated defects some region covers."),
        ("Precision", f"{coverage['precision']:.1%}" if coverage.get("precision") is not None else "–",
         "Share of the regions that lie on an annotated defect."),
        ("Regions", f"{coverage['regions']:,}", f"{coverage['covered']:,} of {coverage['annotations']:,} defects covered."),
    ])
if not levels:
    empty_state("Nothing to evaluate", "No defective image with ground truth has a region in this run.")
for name in ("image", "region"):
    level = levels.get(name)
    if level is None:
        continue
    st.subheader(f"{name.capitalize()} level · {level.n:,} {name}s", anchor=False)
    metric_cards([
        ("NMI", number(level.metrics["nmi"]), "Normalized mutual information (0..1)."),
        ("ARI", number(level.metrics["ari"]), "Adjusted Rand index (-1..1, 0 = chance)."),
        ("F1", number(level.metrics["f1"]), "Hungarian-matched accuracy (micro F1)."),
    ])
    st.plotly_chart(figures.confusion_figure(level.confusion, f"{name.capitalize()} confusion matrix"),
                    width="stretch", key=f"evaluate_confusion_{name}")

if with_good is not None:
    with st.expander("All test images with 'good' as one more class (the paper's protocol)"):
        metric_cards([(k.upper(), number(v)) for k, v in with_good.metrics.items()])
        st.plotly_chart(figures.confusion_figure(with_good.confusion, "Image confusion matrix, with good"),
                        width="stretch", key="evaluate_confusion_good")

st.subheader("Per run, as recorded when each run finished", anchor=False)
rows = []
for run in navigation.finished_runs(store, project_id):
    metrics = run.metrics or {}
    row = {"run": navigation.run_label(run)}
    for level_name in ("image", "region"):
        values = metrics.get(level_name) or {}
        for key in ("nmi", "ari", "f1"):
            value = values.get(key)
            row[f"{level_name} {key.upper()}"] = None if value is None else float(value)
    normal = metrics.get("normal_images")
    row["normal images kept normal"] = normal.get("share_predicted_normal") if isinstance(normal, dict) else normal
    rows.append(row)
table = pd.DataFrame(rows)
if table.drop(columns=["run"]).isna().all().all():
    st.caption("The finished runs recorded no metrics.")
else:
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in table.columns if c != "run"})
