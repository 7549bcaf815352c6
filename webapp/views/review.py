"""Detection & MEBin: make or import anomaly maps, then review MEBin's masks and crops per image.

Per image: the image with its crop boxes, the map as a heat overlay, the MEBin mask, and MEBin's
evidence (components per threshold, the stable interval, the chosen threshold). An engineer can
override one image's threshold; the image is re-cropped and stored.
"""

from __future__ import annotations

from collections import Counter

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.regions import mebin
from core.config import MEBinConfig, RegionConfig
from core.imageio import ImageReadError, read_gray, read_image
from core.detection.maps import to_uint8
from core.regions.crops import recut_image
from storage import BinarizationInput, NotFound, ProjectInfo
from webapp import intake, job_control, messages, navigation, widgets
from webapp.mebin_figures import distribution_charts, draw_boxes, enlarge, evidence_chart, heat_overlay, mask_view
from jobs.maps import latest_maps
from webapp.workspace import get_store

store = get_store()


# ------------------------------------------------------------------------------ image helpers


def uint8_map(record: dict[str, Any]) -> np.ndarray:
    """A stored raw map brought to 0..255 with the set's global range (as core.detection.maps.normalize_global)."""
    return _uint8_map(record["path"], float(record["stats"].get("global_min", 0.0)),
                      float(record["stats"].get("global_max", 1.0)))


@st.cache_data(max_entries=64, show_spinner=False)
def _uint8_map(path: str, low: float, high: float) -> np.ndarray:
    return to_uint8(np.load(path, allow_pickle=False), low, high)


@st.cache_data(max_entries=64, show_spinner=False)
def load_image(path: str) -> np.ndarray:
    return read_image(path)


# ------------------------------------------------------------------------------ override


def stored_mebin_config(settings: dict[str, Any]) -> MEBinConfig:
    """The MEBin settings a stored binarization was made with (defaults for keys it lacks)."""
    defaults = MEBinConfig()
    return MEBinConfig(sample_rate=int(settings.get("sample_rate", defaults.sample_rate)),
                       min_interval_len=int(settings.get("min_interval_len", defaults.min_interval_len)),
                       erode=bool(settings.get("erode", defaults.erode)),
                       kernel_size=int(settings.get("kernel_size", defaults.kernel_size)))


def mask_at_threshold(map_u8: np.ndarray, threshold: int, settings: dict[str, Any]) -> tuple[np.ndarray, int]:
    """MEBin's final mask at a given threshold with the stored MEBin settings, and its component count."""
    config = stored_mebin_config(settings)
    return mebin.mask_at_threshold(map_u8, threshold, erode=config.erode, kernel_size=config.kernel_size)


def recut(record: dict[str, Any], image_path: str, map_u8: np.ndarray, threshold: int) -> tuple[np.ndarray, int, list]:
    """(MEBin's mask, its component count, the crops) of one image at a threshold, cut as the run cut it."""
    settings = record.get("settings") or {}
    search_range = (int(settings.get("s_min", 0)), int(settings.get("s_max", 255)))
    return recut_image(record["image"], read_image(image_path), map_u8, threshold, search_range,
                       stored_mebin_config(settings), RegionConfig(), floor=float(settings.get("noise_floor", 0.0)))


def apply_threshold(project: ProjectInfo, record: dict[str, Any], image_path: str, map_u8: np.ndarray,
                    threshold: int, *, reset: bool = False) -> int:
    """Record a threshold for one image with its re-cut regions as the image's new version, used by
    the next discovery run (finished runs and their exports keep theirs); returns the region count."""
    settings = dict(record.get("settings") or {})
    original = int(settings.get("mebin_threshold", record["threshold"]))
    mask, count, regions = recut(record, image_path, map_u8, threshold)
    settings["mebin_threshold"] = original
    store.record_threshold_override(project.id, BinarizationInput(
        relpath=record["image"], threshold=int(threshold), num_anomalies=count,
        counts=list(record.get("counts") or []), mask=mask, settings=settings), regions, reset=reset)
    return sum(1 for r in regions if not r.weak and r.area > 0)


def pending_overrides_note(project: ProjectInfo) -> None:
    """Which overrides wait for the next discovery run (a finished run never changes)."""
    pending = store.pending_overrides(project.id)
    if not pending:
        return
    names = ", ".join(widgets.escape_markdown(b["image"]) for b in pending[:5]) + (" ..." if len(pending) > 5 else "")
    st.info(f"{len(pending)} threshold override(s) wait for the next discovery run ({names}). Finished runs and "
            "their exports keep the regions they had; start a run on Discover to use the new crops.",
            icon=":material/schedule:")


# ------------------------------------------------------------------------------ maps section


def maps_form(project: ProjectInfo, has_normal: bool) -> None:
    """Choose where the maps come from and start the detection job."""
    maps_dir = project.settings.get("maps_dir") or ""
    options = ["Built-in detector", "Import from a folder"]
    source = st.radio("Source of the anomaly maps", options, index=1 if maps_dir else 0, horizontal=True,
                      key="maps_source")
    settings: dict[str, Any] = {}
    if source == options[1]:
        folder = st.text_input("Maps folder", value=maps_dir, key="maps_folder",
                               help="Maps (.npy, .tif, .png) named like the images, any size.")
        settings.update(map_source="import", maps_dir=folder.strip())
        problem = intake.check_maps_folder(folder) if folder.strip() else None
        if problem:
            st.error(problem, icon=":material/folder_off:")
        ready = bool(folder.strip()) and problem is None
    else:
        from core.detection.config import AUTO_BACKBONE, METHODS, OFFLINE_BACKBONE, PAPER_BACKBONE

        left, middle, right = st.columns(3)
        method = left.selectbox("Method", list(METHODS), index=0, key="maps_method",
                                help=messages.DETECTOR_AUTO_HELP)
        backbone = middle.selectbox("Backbone", [AUTO_BACKBONE, OFFLINE_BACKBONE, PAPER_BACKBONE, "resnet18"], key="maps_backbone",
                                    help=f"auto: {PAPER_BACKBONE} when its weights are cached (or a weights "
                                         f"file is given), else '{OFFLINE_BACKBONE}', which needs no download; "
                                         "timm names need their weights in the cache or a weights file.")
        device = right.selectbox("Device", ["auto", "cpu", "cuda"], key="maps_device")
        weights = st.text_input("Backbone weights file (optional)", key="maps_weights")
        settings.update(map_source="builtin", detector_method=method, detector_backbone=backbone,
                        device=device, detector_weights=weights.strip() or None)
        ready = True
        if method in ("patchcore", "learned") and not has_normal:
            st.caption(f"No normal references in this project: {method} falls back to zero-shot.")
    overrides = store.threshold_overrides(project.id)
    if overrides:  # the new maps get MEBin's own thresholds: say so instead of dropping them silently
        shown = ", ".join(f"{widgets.literal(image)} at {t}" for image, t in list(overrides.items())[:5])
        st.warning(f"New maps get MEBin's own thresholds: the {len(overrides)} threshold(s) you set by hand "
                   f"({shown}{' ...' if len(overrides) > 5 else ''}) are replaced. Finished runs keep theirs.",
                   icon=":material/warning:")
    if st.button("Make maps and run MEBin", type="primary", disabled=not ready, key="maps_start",
                 icon=":material/play_arrow:"):
        run_id = job_control.start_job(store, project.id, job_control.DETECT, settings)
        messages.flash("success", f"Detection started (run #{run_id})."
                       + (f" The {len(overrides)} threshold(s) set by hand are replaced by MEBin's." if overrides else ""))
        st.rerun()


@st.fragment(run_every=1.0)
def job_monitor(run_id: int) -> None:
    """Live progress of a detection job; reruns the page when it ends."""
    run = store.get_run(run_id)
    if run.status in job_control.ACTIVE:
        heartbeat = widgets.as_utc(run.heartbeat_at or run.created_at)
        if heartbeat is not None and (pd.Timestamp.now(tz="UTC") - pd.Timestamp(heartbeat)).total_seconds() > 20:
            job_control.fail_abandoned(store)
        widgets.progress_panel(run)
        st.caption(job_control.place(store, run))  # "running on gpu-2, cuda:0" or "queued, 3rd in line"
        if st.button("Cancel", icon=":material/stop_circle:", key=f"cancel_{run.id}"):
            job_control.cancel_job(store, run.id)
            st.rerun(scope="fragment")
    else:
        st.rerun()


# ------------------------------------------------------------------------------ per image


def image_panel(project: ProjectInfo, record: dict[str, Any], map_record: dict[str, Any], image_path: str) -> None:
    try:
        image = load_image(image_path)
        map_u8 = uint8_map(map_record)
    except (ImageReadError, OSError, ValueError) as error:
        st.error(f"{widgets.literal(record['image'])}: {widgets.literal(error)}")
        return
    if record.get("mask_path") and Path(record["mask_path"]).is_file():
        mask = read_gray(record["mask_path"])
    else:
        mask = mask_at_threshold(map_u8, int(record["threshold"]), record.get("settings") or {})[0]
    regions = store.image_regions(project.id, record["image"])
    boxes = [r.box for r in regions]
    columns = st.columns(3)
    columns[0].image(draw_boxes(image, boxes), caption=f"image with {len(boxes)} crop box(es)", width="stretch")
    columns[1].image(heat_overlay(image, map_u8), caption="anomaly map (heat overlay)", width="stretch")
    columns[2].image(mask_view(image, mask), caption="MEBin mask", width="stretch")

    settings = record.get("settings") or {}
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(evidence_chart(record), width="stretch", config={"displayModeBar": False},
                        key=f"evidence_{record['image']}")
    with right:
        source = settings.get("source", "mebin")
        widgets.metric_cards([
            ("Threshold", record["threshold"], "on the map's own 0..255 scale"),
            ("Anomalies", record["num_anomalies"]),
        ])
        if source == "override":
            st.caption(f"Threshold set by hand (MEBin chose {settings.get('mebin_threshold')}).")
        elif settings.get("interval"):
            start, end = settings["interval"]
            st.caption(f"MEBin found {record['num_anomalies']} component(s) stable over {end - start + 1} "
                       "thresholds and chose the lowest threshold of that run.")
        else:
            st.caption("No stable interval: MEBin found no anomaly in this map.")
        override_form(project, record, image_path, map_u8)
    if regions:
        st.markdown("**Crops of this image**")
        thumbs = st.columns(6)
        for index, region in enumerate(regions[:12]):
            if region.crop_path and Path(region.crop_path).is_file():
                thumbs[index % len(thumbs)].image(enlarge(read_image(region.crop_path), 160)[0],
                                                  caption=f"#{region.index} · score {region.score:.2f}",
                                                  width="stretch")


def override_form(project: ProjectInfo, record: dict[str, Any], image_path: str, map_u8: np.ndarray) -> None:
    settings = record.get("settings") or {}
    key = f"override_{record['image']}"
    threshold = st.slider("Threshold for this image", 0, 255, int(min(record["threshold"], 255)), key=key,
                          help="Pixels of the map above this value (after erosion) form the mask.")
    _, count, crops = recut(record, image_path, map_u8, int(threshold))
    ordinary = [c for c in crops if not c.weak and c.area > 0]
    st.caption(f"At {threshold}: {count} component(s) in MEBin's mask, {len(ordinary)} crop(s) (components "
               "joined, and those too small or too faint beside the strongest dropped, as a run cuts them)"
               + ("" if ordinary else "; nothing found: the whole image stands in") + ".")
    buttons = st.container(horizontal=True)
    if buttons.button("Apply and re-crop", key=f"{key}_apply", disabled=threshold == record["threshold"],
                   icon=":material/crop:"):
        n = apply_threshold(project, record, image_path, map_u8, int(threshold))
        messages.flash("success", f"{widgets.escape_markdown(record['image'])}: threshold {threshold}, {n} crop(s)" + ("" if n else " (nothing found: the whole image stands in)") + ", "
                                  "recorded for the next discovery run; finished runs and their exports are unchanged.")
        st.rerun()
    if settings.get("source") == "override" and buttons.button("Back to MEBin", key=f"{key}_reset",
                                                            icon=":material/undo:"):
        original = int(settings.get("mebin_threshold", record["threshold"]))
        apply_threshold(project, record, image_path, map_u8, original, reset=True)
        st.session_state.pop(key, None)
        messages.flash("success", f"{widgets.escape_markdown(record['image'])}: back to MEBin's threshold {original}.")
        st.rerun()


# ------------------------------------------------------------------------------ page

st.title("Detection & MEBin", anchor=False)
project_id = navigation.select_project()
project = store.get_project(project_id)
messages.show()
pending_overrides_note(project)

has_normal = bool(store.project_counts(project.id)["roles"].get("normal"))  # counted, not 25,000 images listed
active = job_control.active_runs(store, project.id, kind=job_control.DETECT)
binarizations = store.list_binarizations(project.id)
maps = latest_maps(store, project.id)

if active:
    with st.container(border=True):
        st.markdown("**Making anomaly maps**")
        job_monitor(active[0].id)
else:
    last = job_control.latest_run(store, project.id, job_control.DETECT)
    if last is not None and last.status == "failed":
        st.error(f"The last detection (run #{last.id}) failed: {widgets.literal(last.message)}", icon=":material/error:")
    with st.expander(":material/tune: Make anomaly maps" + (" again" if maps else ""), expanded=not maps):
        maps_form(project, has_normal)

if not binarizations or not maps:
    widgets.empty_state(
        "No anomaly maps yet",
        "Anomaly maps say where each image looks defective. Import the maps of your own detector or run the "
        "built-in one above; MEBin then turns every map into a mask and anomaly-centred crops, shown here.",
        ":material/insights:")
    st.stop()

# Counted as a discovery run sees them: an image's ordinary crops (MEBin's component count may
# differ: components are joined, faint and tiny ones dropped, and the cut may go below its threshold).
regions = store.list_regions(project.id)
crops = Counter(r.image for r in regions if not r.weak and r.area > 0)
for b in binarizations:
    b["crops"] = crops.get(b["image"], 0)
with_anomaly = [b for b in binarizations if b["crops"] > 0]
found_by_mebin = [b for b in binarizations if b["num_anomalies"] > 0]
overrides = sum(1 for b in binarizations if (b.get("settings") or {}).get("source") == "override")
sources = sorted({m["source"] for m in maps.values()})
widgets.metric_cards([
    ("Maps", len(maps), "source: " + ", ".join(sources)),
    ("With anomalies", f"{len(with_anomaly)} / {len(binarizations)}", "Images with at least one crop (the others "
     "get a placeholder: the map's strongest spot or the whole image)"),
    ("Regions", len(regions)),
    ("Median threshold", int(np.median([b["threshold"] for b in found_by_mebin])) if found_by_mebin else "–",
     "of MEBin's thresholds where it found a component"),
    ("Overrides", overrides, "thresholds set by hand on this page"),
])
# What the built-in detector ran and how well its maps separate (stored with the detection run).
finished = next((r for r in store.list_runs(project.id, kind=job_control.DETECT) if r.status == "done"), None)
summary = ((finished.metrics or {}).get("detection") if finished is not None else None) or {}
if summary.get("choice"):
    st.caption(f"Detector: {summary['choice']}"
               + (f"; backbone {summary['backbone']}" if summary.get("method") != "template" else ""))
separation = summary.get("separation") or {}
if separation.get("summary"):
    st.caption(separation["summary"].capitalize())
if separation.get("warning"):
    st.warning(separation["warning"].capitalize(), icon=":material/warning:")
threshold_figure, count_figure = distribution_charts(binarizations)
left, right = st.columns(2)
left.plotly_chart(threshold_figure, width="stretch", config={"displayModeBar": False}, key="thresholds_hist")
right.plotly_chart(count_figure, width="stretch", config={"displayModeBar": False}, key="counts_bar")

st.subheader("Per image", anchor=False)
filter_col, order_col, pick_col = st.columns([1, 1, 2])
only = filter_col.selectbox("Show", ["all images", "with anomalies", "without anomalies", "overridden"],
                            key="review_filter")
order = order_col.selectbox("Order", ["by name", "most anomalies first", "lowest threshold first"],
                            key="review_order")
records = list(binarizations)
if only == "with anomalies":
    records = [b for b in records if b["crops"] > 0]
elif only == "without anomalies":
    records = [b for b in records if b["crops"] == 0]
elif only == "overridden":
    records = [b for b in records if (b.get("settings") or {}).get("source") == "override"]
if order == "most anomalies first":
    records.sort(key=lambda b: (-b["crops"], b["image"]))
elif order == "lowest threshold first":
    records.sort(key=lambda b: (b["threshold"], b["image"]))
else:
    records.sort(key=lambda b: b["image"])
# The image just worked on stays shown even when it no longer matches the filter (an override
# may leave it without anomalies): the page never jumps to another image under its message.
kept = st.session_state.get("review_image")
all_records = {b["image"]: b for b in binarizations}
if kept in all_records and all(b["image"] != kept for b in records):
    records.insert(0, all_records[kept])
    st.caption(f"{widgets.escape_markdown(kept)} no longer matches “{only}”; it stays shown until you pick another image.")
if not records:
    widgets.empty_state("No image matches this filter", "Choose another filter above.", ":material/filter_alt_off:")
    st.stop()
by_image = {b["image"]: b for b in records}
chosen = pick_col.selectbox(
    "Image", list(by_image), key="review_image",
    format_func=lambda k: f"{k}  ·  {by_image[k]['crops']} crop{'' if by_image[k]['crops'] == 1 else 's'}",
)
record = by_image[chosen]
try:
    info = store.get_image(project.id, chosen)
except NotFound:
    info = None
map_record = maps.get(chosen)
if info is None or map_record is None:
    st.warning(f"{widgets.literal(chosen)}: the image or its map is no longer recorded; make the maps again.")
    st.stop()
image_path = str(Path(project.data_root) / info.relpath)
image_panel(project, record, map_record, image_path)
