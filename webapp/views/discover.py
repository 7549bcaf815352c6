"""Discover: settings, Start (a separate job process), live progress with the loss chart, Cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core.config import AUTO_VIT, REAL_USE_BACKBONE, SCRATCH_BACKBONES, SettingsError
from core.decisions import Decided, decide
from core.detection.config import METHODS
from core.representation import REPRESENTATIONS, representation
from core.settings import AUTO, SETTING
from storage import ProjectInfo, RunInfo
from webapp import figures, job_control, messages, navigation, widgets
from jobs.maps import stored_separation
from webapp.workspace import get_store

store = get_store()
VIEWS = Path(__file__).resolve().parent

# Defaults, bounds and help come from the settings table (core.settings, torch-free); only display texts live here.
BACKBONES = {
    AUTO_VIT: "DINO ViT-B/16 when its weights are here, else the small ViT from scratch (default)",
    "vit_tiny_scratch": "Small ViT from scratch (what auto takes offline)",
    "vit_micro_scratch": "Tiny ViT from scratch (quick checks)",
    "vit_small_patch16_224.dino": "DINO ViT-S/16 (pretrained weights needed)",
    REAL_USE_BACKBONE: "DINO ViT-B/16 (paper; pretrained weights needed)",
}
SCRATCH = tuple(SCRATCH_BACKBONES)
SCRATCH_VIT_HINT = ("A ViT trained from scratch on a few hundred crops finds rough groups, not clean defect classes: "
                    "expect to merge, split and rename clusters on Explore, then retrain with your names on Labels. "
                    "For classes close to the paper's, choose a DINO backbone and give its weights file.")
SCRATCH_HINT = ("Without pretrained weights the regions are grouped on their descriptors (mask shape, contrast, "
                "texture): expect to merge, split and rename clusters on Explore, then retrain with your names on "
                "Labels. A DINO backbone with its weights file adds the ViT's embedding (hybrid).")
DEVICES = ["auto", "cpu", "cuda"]
REPRESENTATION_LABELS = {AUTO: "auto (hybrid with pretrained weights, else descriptors)",
                         **{name: representation(name).label for name in REPRESENTATIONS}}
POOR_MAPS = ("These maps barely tell your images from the defect-free references (separation AUROC {auroc:.2f}): "
             "the clusters will mostly follow noise, not defect types. Improve detection first on the Detection & "
             "MEBin page: import the maps of your own detector, or make them again with a pretrained backbone.")


def _number(label: str, key: str, widget_key: str, value: Any = None, zero: bool = False, **options: Any) -> Any:
    """A number field with the bounds, default and help of setting `key` (zero: 0 stands for auto / none)."""
    setting = SETTING[key]
    kind = setting.kind
    low = 0 if zero else setting.low
    default = setting.default if value is None else value
    return st.number_input(label, min_value=kind(low), max_value=kind(setting.high),
                           value=kind(0 if zero and default in (None, AUTO) else default),
                           key=widget_key, help=options.pop("help", setting.help.capitalize() + "."), **options)


@st.cache_data(ttl=60, show_spinner=False)
def decide_form(settings: tuple[tuple[str, Any], ...]) -> tuple[Decided | None, str]:
    """(the engine's decisions for these settings, or None and the problem): what the run will do, before Start."""
    try:
        return decide(dict(settings)), ""
    except SettingsError as error:
        return None, str(error)


# ------------------------------------------------------------------------------ settings form


def essential_settings() -> dict[str, Any]:
    first, second = st.columns(2)
    with first:
        auto = st.toggle("Estimate the number of classes", value=True, key="d_auto",
                         help="Estimated from the crops' features; turn off to give K yourself.")
        classes = _number("Defect classes (K)", "classes", "d_classes", value=5, step=1, disabled=auto,
                          help="Novel defect classes to discover; the 'normal / false detection' class comes on top.")
        epochs = _number("Epochs (0 = auto)", "epochs", "d_epochs", zero=True, step=1,
                         help=SETTING["epochs"].help.replace("auto:", "0 = auto:").capitalize() + ".")
    with second:
        backbone = st.selectbox("Backbone", list(BACKBONES), format_func=lambda b: f"{b} — {BACKBONES[b]}",
                                key="d_backbone")
        weights = st.text_input("Weights file (optional)", key="d_weights",
                                help="A local .pth or .safetensors file (timm or official DINO layout).")
        device = st.selectbox("Device", DEVICES, key="d_device", help="auto: a GPU when there is one, else CPU.")
    return {"classes": AUTO if auto else int(classes), "epochs": int(epochs) or None, "backbone": backbone,
            "weights": weights.strip() or None, "device": device,
            "pretrained": backbone not in SCRATCH and backbone != AUTO and not weights.strip()}


def advanced_settings(project: ProjectInfo, has_maps: bool, n_labels: int) -> dict[str, Any]:
    a, b, c = st.columns(3)
    with a:
        image_size = _number("Crop size fed to the ViT (px, 0 = backbone's own)", "image_size", "d_image_size",
                             zero=True, step=8)
    with b:
        batch_size = _number("Batch size", "batch_size", "d_batch", step=1)
    with c:
        lr = _number("Learning rate (0 = default)", "lr", "d_lr", zero=True, format="%.4f")
    a, b, c = st.columns(3)
    with a:
        tau = _number("Fusion temperature tau", "tau", "d_tau", step=10.0)
    with b:
        seed = _number("Seed", "seed", "d_seed", step=1)
    guided = c.toggle("Mask-guided attention", value=SETTING["guided"].default, key="d_guided",
                      help="Off: the unguided ablation.")
    a, b, c = st.columns(3)
    detector = a.selectbox("Detector (when maps are made)", list(METHODS), key="d_detector",
                           help=messages.DETECTOR_AUTO_HELP)
    binarizer = b.selectbox("Binarization", list(SETTING["binarizer"].choices), key="d_binarizer",
                            help=SETTING["binarizer"].help.capitalize() + ".")
    recompute = c.toggle("Make the maps again", value=not has_maps, disabled=not has_maps, key="d_recompute",
                         help="Otherwise the project's stored maps are used.")
    a, b, c = st.columns(3)
    grouped = a.selectbox("Regions grouped on", list(SETTING["representation"].choices), index=0,
                          key="d_representation", format_func=lambda r: REPRESENTATION_LABELS[r],
                          help=SETTING["representation"].help.capitalize() + ".")
    refine = b.toggle("Redraw masks against the normal references", value=SETTING["refine"].default != "none",
                      key="d_refine", help="A detector's smooth map marks a blob wider than the defect; each region's "
                                           "mask is redrawn where the image differs from the best-matching normal "
                                           "reference patch.")
    strongest = c.toggle("Strongest spot where nothing clears the floor", value=SETTING["fallback"].default == "peak",
                         key="d_fallback",
                         help="An image where no component rises above what normal images reach gets its map's "
                              "strongest spot as a weak region (it joins a group but does not shape the groups); "
                              "off: the whole image stands in.")
    a, b, c = st.columns(3)
    with a:
        sample_rate = _number("MEBin sample rate", "mebin_sample_rate", "d_sample_rate", step=1)
    with b:
        min_interval = _number("MEBin min. stable length", "mebin_min_interval_len", "d_min_interval", step=1)
    use_labeled = c.toggle("Use the imported labeled set", value=bool(project.settings.get("labeled_dir")),
                           disabled=not project.settings.get("labeled_dir"), key="d_use_labeled")
    from_labels = st.toggle(f"Learn from the named clusters ({n_labels} labeled regions)", value=False,
                            disabled=n_labels == 0, key="d_from_labels",
                            help="Names given on the Labels page become known classes for this run.")
    return {"image_size": int(image_size) or None, "batch_size": int(batch_size), "lr": float(lr) or None,
            "tau": float(tau), "seed": int(seed), "guided": bool(guided), "binarizer": binarizer,
            "representation": grouped, "refine": "references" if refine else "none",
            "fallback": "peak" if strongest else "whole", "recompute_maps": bool(recompute and has_maps),
            "mebin_sample_rate": int(sample_rate), "mebin_min_interval_len": int(min_interval),
            "use_labeled_set": bool(use_labeled), "labels_from_project": bool(from_labels),
            **({} if detector == AUTO else {"detector_method": detector})}


def show_decisions(settings: dict[str, Any], backbone_note: Any, grouped_note: Any) -> Decided | None:
    """What the run will do with these settings, decided by the engine once, in the form's words."""
    decided, problem = decide_form(tuple(sorted(settings.items())))
    if decided is None and settings.get("weights") and "weight file" in problem:  # say so, decide without it
        backbone_note.caption(f":material/error: The weights file {settings['weights']} is not there.")
        decided, problem = decide_form(tuple(sorted({**settings, "weights": None}.items())))
        return None if decided is None else _captions(decided, settings, backbone_note, grouped_note, usable=False)
    if decided is None:
        st.error(problem, icon=":material/error:")
        return None
    return _captions(decided, settings, backbone_note, grouped_note)


def _captions(decided: Decided, settings: dict[str, Any], backbone_note: Any, grouped_note: Any,
              usable: bool = True) -> Decided | None:
    backbone, space = decided.decisions["backbone"], decided.decisions["representation"]
    if backbone.automatic and usable:
        backbone_note.caption(f":material/smart_toy: auto: {backbone.why}")
    if backbone.used in SCRATCH and not settings.get("weights"):
        backbone_note.caption(":material/info: " + (SCRATCH_HINT if space.used == "descriptors" else SCRATCH_VIT_HINT))
    if space.automatic:
        grouped_note.caption(f"auto: {space.why}")
    return decided if usable else None


def settings_form(project: ProjectInfo, has_maps: bool, n_labels: int) -> dict[str, Any] | None:
    """The run's settings; returns them when Start is pressed and the engine can use them."""
    st.markdown("**Essential settings**")
    settings = essential_settings()
    backbone_note = st.container()
    with st.expander(":material/tune: Advanced settings"):
        settings |= advanced_settings(project, has_maps, n_labels)
        grouped_note = st.container()
        prior_slot = st.container()
    decided = show_decisions(settings, backbone_note, grouped_note)
    grouped_on = decided.config.space if decided is not None else None
    with prior_slot:
        taught = st.toggle("Teach the ViT the descriptor groups", value=SETTING["prior"].default == "descriptors",
                           key="d_prior", disabled=grouped_on is None or not grouped_on.can_be_taught,
                           help="Hybrid only: the MGViT learns the groups the descriptors form (a ViT trained from "
                                "scratch has no features of its own to start from); off: the paper's teacher-student.")
    settings["prior"] = "descriptors" if taught else "none"
    start = st.button("Start discovery", type="primary", icon=":material/rocket_launch:", key="d_start",
                      disabled=decided is None)
    if not start or decided is None:
        return None
    return {key: value for key, value in settings.items() if value is not None}


def separation_note(project_id: int) -> None:
    """How well the project's maps separate its images from the references: plainly, before a run starts."""
    separation = stored_separation(store, project_id)
    if not separation or separation.get("auroc") is None:
        return
    if separation.get("low"):
        st.warning(POOR_MAPS.format(auroc=float(separation["auroc"])), icon=":material/warning:")
    else:
        st.caption(f":material/check_circle: The maps tell your images from the defect-free references "
                   f"(separation AUROC {float(separation['auroc']):.2f}).")


# ------------------------------------------------------------------------------ runs


@st.fragment(run_every=1.0)
def live_run(run_id: int, shown_status: str) -> None:
    """Progress, loss chart and Cancel of a queued or running run, polled every second."""
    run = store.get_run(run_id)
    if run.status != shown_status:
        st.rerun()  # the whole page follows: the finished run, or "running" in the runs table too
    heartbeat = widgets.as_utc(run.heartbeat_at or run.created_at)
    if heartbeat is not None and (pd.Timestamp.now(tz="UTC") - pd.Timestamp(heartbeat)).total_seconds() > 20:
        job_control.fail_abandoned(store)  # a worker that died leaves a failed run, not an eternal spinner
    widgets.progress_panel(run)
    st.caption(job_control.place(store, run))  # "running on gpu-2, cuda:0" or "queued, 3rd in line"
    figure = figures.loss_chart(run.loss_history)
    if figure is not None:
        st.plotly_chart(figure, config={"displayModeBar": False}, key=f"live_loss_{run.id}")
    else:
        st.caption("The loss chart appears when training starts.")
    if run.cancel_requested:
        st.caption("Stopping at the next step ...")
    elif st.button("Cancel run", icon=":material/stop_circle:", key=f"cancel_{run.id}"):
        job_control.cancel_job(store, run.id)
        st.rerun(scope="fragment")


def metrics_line(metrics: dict[str, Any]) -> None:
    image = metrics.get("image") or {}
    region = metrics.get("region") or {}
    if image.get("nmi") is None:
        return

    def fmt(value: Any) -> str:
        return "–" if value is None else f"{value:.3f}"

    widgets.metric_cards([
        ("Image NMI", fmt(image.get("nmi")), f"over {image.get('n')} defective images"),
        ("Image ARI", fmt(image.get("ari"))),
        ("Image F1", fmt(image.get("f1"))),
        ("Region NMI", fmt(region.get("nmi")), f"over {region.get('n')} regions"),
    ])


def finished_run(run: RunInfo) -> None:
    """The newest run's outcome: status, message, metrics, loss chart, next step."""
    widgets.run_summary(run)
    if run.status == "done":
        widgets.class_estimate_note(run)
        metrics_line(run.metrics or {})
        figure = figures.loss_chart(run.loss_history)
        if figure is not None:
            st.plotly_chart(figure, config={"displayModeBar": False}, key=f"loss_{run.id}")
        if (VIEWS / "explore.py").is_file() and st.button("Explore the clusters", type="primary",
                                                            icon=":material/scatter_plot:", key="go_explore"):
            navigation.set_run(run.id)
            st.switch_page("views/explore.py")
    elif run.status == "failed":
        log = job_control.read_log_tail(store, run)
        if log.strip():
            with st.expander("Worker log"):
                st.code(log, language=None)


def epochs_text(run: RunInfo) -> str:
    """The epochs a run trained (what it recorded, or its loss history's finished epochs), else what it asked."""
    done = ((run.metrics or {}).get("training") or {}).get("epochs_done")
    if done is None and run.loss_history:
        done = sum(1 for point in run.loss_history if point.get("epoch_done"))
    if done is not None:
        return str(done) if done else "–"  # 0: the representation trained no MGViT
    asked = run.settings.get("epochs")
    return str(asked) if asked not in (None, "") else ("–" if run.status not in job_control.ACTIVE else AUTO)


def runs_table(runs: list[RunInfo]) -> None:
    rows = []
    for run in runs:
        image = (run.metrics or {}).get("image") or {}
        rows.append({
            "run": run.id, "status": run.status, "started": widgets.format_time(run.started_at or run.created_at),
            "duration": widgets.format_duration(widgets.run_elapsed(run)),
            "classes": widgets.classes_text(run), "backbone": (run.metrics or {}).get("backbone", {}).get("used") or run.settings.get("backbone", ""),
            "grouped on": (run.metrics or {}).get("representation", {}).get("used") or run.settings.get("representation", ""),
            "epochs": epochs_text(run),
            # A cancelled or failed run has no metrics: a dash, not "None".
            "image NMI": "–" if image.get("nmi") is None else f"{float(image['nmi']):.3f}",
            "retrained": "yes" if run.parent_run_id or run.settings.get("labels_from_project") else "",
            "message": (run.message or "")[:160],
        })
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"run": st.column_config.NumberColumn("run", format="#%d", width="small"),
                                "message": st.column_config.TextColumn("message", width="large")})


# ------------------------------------------------------------------------------ page

st.title("Discover", anchor=False)
project_id = navigation.select_project()
project = store.get_project(project_id)
messages.show()

runs = store.list_runs(project.id, kind=job_control.DISCOVER)
active = [r for r in runs if r.status in job_control.ACTIVE]
counts = store.project_counts(project.id)  # counted in the database: listing 25,000 images took most of a rerun
n_maps, n_images = int(counts["maps"]), int(counts["roles"].get("unlabeled", 0))
n_labels = len(store.labeled_set(project.id))

if active:
    with st.container(border=True):
        st.markdown(f"**Run #{active[0].id} in progress** — it keeps running when you leave or reload the page.")
        live_run(active[0].id, active[0].status)
else:
    if runs:
        with st.container(border=True):
            st.markdown(f"**Latest run #{runs[0].id}**")
            finished_run(runs[0])
            done = [r for r in runs if r.status == "done"]
            if runs[0].status != "done" and done:
                st.caption(f"The results of run #{done[0].id} are still there: pick it on Explore.")
    with st.container(border=True):
        st.markdown("#### New discovery run")
        separation_note(project.id)
        maps_note = (f"{n_maps:,} stored anomaly maps will be used." if n_maps else
                     "No anomaly maps yet: the run makes them first with the built-in detector"
                     + (" from the maps folder." if project.settings.get("maps_dir") else "."))
        st.caption(f"{n_images:,} images to inspect. {maps_note}")
        settings = settings_form(project, bool(n_maps), n_labels)
        if settings is not None:
            done = [r for r in runs if r.status == "done"]
            parent = done[0].id if settings["labels_from_project"] and done else None
            run_id = job_control.start_job(store, project.id, job_control.DISCOVER, settings, parent_run_id=parent)
            messages.flash("success", f"Run #{run_id} started.")
            st.rerun()

if runs:
    st.markdown("#### All runs")
    runs_table(runs)
