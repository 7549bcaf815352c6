"""Discover: settings, Start (a separate job process), live progress with the loss chart, Cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core.config import (AUTO_REPRESENTATION, AUTO_VIT, BINARIZERS, REPRESENTATION_CHOICES, REAL_USE_BACKBONE,
                         SCRATCH_BACKBONES, SCRATCH_EPOCHS, DiscoveryConfig, MGViTConfig, resolve_representation,
                         resolve_vit_backbone)
from core.detection.config import METHODS
from storage import ProjectInfo, RunInfo
from webapp import figures, jobs, messages, navigation, widgets
from webapp.workspace import get_store

store = get_store()
VIEWS = Path(__file__).resolve().parent

# The form's defaults are the engine's (core.config imports without torch); only display texts live here.
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
DEFAULTS = DiscoveryConfig()
DEVICES = ["auto", "cpu", "cuda"]


@st.cache_data(ttl=60, show_spinner=False)
def auto_backbone(weights: str) -> tuple[str, str]:
    """(backbone auto takes here, why): the engine's decision, shown before Start."""
    model, why = resolve_vit_backbone(MGViTConfig(backbone=AUTO_VIT, weights=Path(weights) if weights else None))
    return model.backbone, why


# ------------------------------------------------------------------------------ settings form

REPRESENTATION_LABELS = {AUTO_REPRESENTATION: "auto (hybrid with pretrained weights, else descriptors)",
                         "hybrid": "hybrid (descriptors + ViT)", "descriptors": "descriptors only (fast)",
                         "vit": "ViT only (the paper)"}


def settings_form(project: ProjectInfo, has_maps: bool, n_labels: int) -> dict[str, Any] | None:
    """The run's settings; returns them when Start is pressed."""
    st.markdown("**Essential settings**")
    first, second = st.columns(2)
    with first:
        auto = st.toggle("Estimate the number of classes", value=True, key="d_auto",
                         help="Estimated from the crops' features; turn off to give K yourself.")
        classes = st.number_input("Defect classes (K)", min_value=2, max_value=100, value=5, step=1,
                                  key="d_classes", disabled=auto,
                                  help="Novel defect classes to discover; the 'normal / false detection' "
                                       "class comes on top.")
        epochs = st.number_input("Epochs (0 = the backbone's own)", min_value=0, max_value=500, value=0, step=1,
                                 key="d_epochs",
                                 help=f"0: {SCRATCH_EPOCHS} for the from-scratch ViTs, {DEFAULTS.train.epochs} (the "
                                      "paper's) for DINO backbones. Only runs that train an MGViT use it: "
                                      "'Regions grouped on' auto trains none without pretrained weights.")
    with second:
        backbone = st.selectbox("Backbone", list(BACKBONES), format_func=lambda b: f"{b} — {BACKBONES[b]}",
                                key="d_backbone")
        weights = st.text_input("Weights file (optional)", key="d_weights",
                                help="A local .pth or .safetensors file (timm or official DINO layout).")
        device = st.selectbox("Device", DEVICES, key="d_device", help="auto: a GPU when there is one, else CPU.")
    used = backbone
    weights_file = weights.strip() if weights.strip() and Path(weights.strip()).is_file() else ""  # one that exists
    if backbone == AUTO_VIT:
        used, why = auto_backbone(weights_file)
        st.caption(f":material/smart_toy: auto: {why}")
    # the model the run would start from, for what representation auto takes (the engine's rule)
    model = MGViTConfig(backbone=used, weights=Path(weights_file) if weights_file else None, pretrained=used not in SCRATCH)
    if used in SCRATCH and not weights.strip():  # the representation box sits below: its last value
        asked = st.session_state.get("d_representation", AUTO_REPRESENTATION)
        st.caption(":material/info: " + (SCRATCH_HINT if resolve_representation(asked, model)[0] == "descriptors"
                                         else SCRATCH_VIT_HINT))

    with st.expander(":material/tune: Advanced settings"):
        a, b, c = st.columns(3)
        image_size = a.number_input("Crop size fed to the ViT (px, 0 = backbone's own)", 0, 1024, 0, 8,
                                    key="d_image_size")
        batch_size = b.number_input("Batch size", 2, 1024, DEFAULTS.train.batch_size, 1, key="d_batch")
        lr = c.number_input("Learning rate (0 = default)", 0.0, 10.0, 0.0, format="%.4f", key="d_lr",
                            help=f"Default: {DEFAULTS.train.lr} with SGD (pretrained backbones), {DEFAULTS.train.adamw_lr} with "
                                 "AdamW (from-scratch backbones).")
        a, b, c = st.columns(3)
        tau = a.number_input("Fusion temperature tau", 1.0, 1000.0, DEFAULTS.tau, 10.0, key="d_tau",
                             help="Area-weighted image fusion: 100 for MVTec AD, 50 for MTD.")
        seed = b.number_input("Seed", 0, 2**31 - 1, DEFAULTS.seed, 1, key="d_seed")
        guided = c.toggle("Mask-guided attention", value=DEFAULTS.train.guided, key="d_guided",
                          help="Off: the unguided ablation.")
        a, b, c = st.columns(3)
        detector = a.selectbox("Detector (when maps are made)", list(METHODS), key="d_detector",
                               help=messages.DETECTOR_AUTO_HELP)
        binarizer = b.selectbox("Binarization", list(BINARIZERS), key="d_binarizer",
                                help="MEBin (the method) or Otsu per map (ablation).")
        recompute = c.toggle("Make the maps again", value=not has_maps, disabled=not has_maps, key="d_recompute",
                             help="Otherwise the project's stored maps are used.")
        a, b, c = st.columns(3)
        representation = a.selectbox(
            "Regions grouped on", list(REPRESENTATION_CHOICES), index=0,
            key="d_representation", format_func=lambda r: REPRESENTATION_LABELS[r],
            help="descriptors: mask shape, contrast, texture and HOG of each region, no ViT trained (seconds); "
                 "hybrid: those beside the trained ViT's embedding; vit: the paper's MGViT heads alone; auto: "
                 "hybrid when the ViT starts from pretrained weights, else descriptors (a ViT trained from "
                 "scratch measured no better beside them, and takes minutes).")
        grouped_on, why = resolve_representation(representation, model)
        if representation == AUTO_REPRESENTATION:
            a.caption(f"auto: {why}")
        refine = b.toggle("Redraw masks against the normal references", value=DEFAULTS.regions.refine != "none",
                          key="d_refine",
                          help="A detector's smooth map marks a blob wider than the defect; each region's mask is "
                               "redrawn where the image differs from the best-matching normal reference patch.")
        strongest = c.toggle("Strongest spot where nothing clears the floor", value=DEFAULTS.regions.fallback == "peak",
                             key="d_fallback",
                             help="An image where no component rises above what normal images reach gets its map's "
                                  "strongest spot as a weak region (it joins a group but does not shape the groups); "
                                  "off: the whole image stands in.")
        a, b, c = st.columns(3)
        taught = a.toggle("Teach the ViT the descriptor groups", value=DEFAULTS.prior == "descriptors", key="d_prior",
                          disabled=grouped_on != "hybrid",
                          help="Hybrid only: the MGViT learns the groups the descriptors form (a ViT trained from "
                               "scratch has no features of its own to start from); off: the paper's teacher-student.")
        a, b, c = st.columns(3)
        sample_rate = a.number_input("MEBin sample rate", 1, 32, DEFAULTS.mebin.sample_rate, 1, key="d_sample_rate")
        min_interval = b.number_input("MEBin min. stable length", 1, 64, DEFAULTS.mebin.min_interval_len, 1, key="d_min_interval")
        use_labeled = c.toggle("Use the imported labeled set", value=bool(project.settings.get("labeled_dir")),
                               disabled=not project.settings.get("labeled_dir"), key="d_use_labeled")
        from_labels = st.toggle(f"Learn from the named clusters ({n_labels} labeled regions)", value=False,
                                disabled=n_labels == 0, key="d_from_labels",
                                help="Names given on the Labels page become known classes for this run.")
    start = st.button("Start discovery", type="primary", icon=":material/rocket_launch:", key="d_start")
    if not start:
        return None
    settings: dict[str, Any] = {
        "classes": "auto" if auto else int(classes),
        "backbone": backbone,
        "weights": weights.strip() or None,
        "pretrained": backbone not in SCRATCH and not weights.strip(),
        "device": device,
        "batch_size": int(batch_size),
        "lr": float(lr) or None,
        "tau": float(tau),
        "seed": int(seed),
        "guided": bool(guided),
        "binarizer": binarizer,
        "representation": representation,
        "refine": "references" if refine else "none",
        "fallback": "peak" if strongest else "whole",
        "prior": "descriptors" if taught else "none",
        "recompute_maps": bool(recompute and has_maps),
        "mebin_sample_rate": int(sample_rate),
        "mebin_min_interval_len": int(min_interval),
        "use_labeled_set": bool(use_labeled),
        "labels_from_project": bool(from_labels),
    }
    if epochs:
        settings["epochs"] = int(epochs)
    if image_size:
        settings["image_size"] = int(image_size)
    if detector != "auto":
        settings["detector_method"] = detector
    return settings


# ------------------------------------------------------------------------------ runs


@st.fragment(run_every=1.0)
def live_run(run_id: int) -> None:
    """Progress, loss chart and Cancel of a queued or running run, polled every second."""
    run = store.get_run(run_id)
    if run.status not in jobs.ACTIVE:
        st.rerun()  # the whole page shows the finished run
    heartbeat = widgets.as_utc(run.heartbeat_at or run.created_at)
    if heartbeat is not None and (pd.Timestamp.now(tz="UTC") - pd.Timestamp(heartbeat)).total_seconds() > 20:
        jobs.recover(store)  # a worker that died leaves a failed run, not an eternal spinner
    widgets.progress_panel(run)
    figure = figures.loss_chart(run.loss_history)
    if figure is not None:
        st.plotly_chart(figure, config={"displayModeBar": False}, key=f"live_loss_{run.id}")
    else:
        st.caption("The loss chart appears when training starts.")
    if run.cancel_requested:
        st.caption("Stopping at the next step ...")
    elif st.button("Cancel run", icon=":material/stop_circle:", key=f"cancel_{run.id}"):
        jobs.cancel_job(store, run.id)
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
        log = jobs.read_log_tail(store, run)
        if log.strip():
            with st.expander("Worker log"):
                st.code(log, language=None)


def runs_table(runs: list[RunInfo]) -> None:
    rows = []
    for run in runs:
        image = (run.metrics or {}).get("image") or {}
        rows.append({
            "run": run.id, "status": run.status, "started": widgets.format_time(run.started_at or run.created_at),
            "duration": widgets.format_duration(widgets.run_elapsed(run)),
            "classes": widgets.classes_text(run), "backbone": (run.metrics or {}).get("backbone", {}).get("used") or run.settings.get("backbone", ""),
            "grouped on": (run.metrics or {}).get("representation", {}).get("used") or run.settings.get("representation", ""),
            "epochs": run.settings.get("epochs"),
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

runs = store.list_runs(project.id, kind=jobs.DISCOVER)
active = [r for r in runs if r.status in jobs.ACTIVE]
maps = store.list_maps(project.id)
images = store.list_images(project.id, role="unlabeled")
n_labels = len(store.labeled_set(project.id))

if active:
    with st.container(border=True):
        st.markdown(f"**Run #{active[0].id} in progress** — it keeps running when you leave or reload the page.")
        live_run(active[0].id)
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
        maps_note = (f"{len(maps)} stored anomaly maps will be used." if maps else
                     "No anomaly maps yet: the run makes them first with the built-in detector"
                     + (" from the maps folder." if project.settings.get("maps_dir") else "."))
        st.caption(f"{len(images)} images to inspect. {maps_note}")
        settings = settings_form(project, bool(maps), n_labels)
        if settings is not None:
            done = [r for r in runs if r.status == "done"]
            parent = done[0].id if settings["labels_from_project"] and done else None
            run_id = jobs.start_job(store, project.id, jobs.DISCOVER, settings, parent_run_id=parent)
            messages.flash("success", f"Run #{run_id} started.")
            st.rerun()

if runs:
    st.markdown("#### All runs")
    runs_table(runs)
