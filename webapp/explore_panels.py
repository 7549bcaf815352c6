"""The Explore page's tabs beside the plot: the selection (a paged gallery of crops with the actions
on them), the clusters, one image with its boxes, and the edit history.

Built for runs of 50,000 regions and more: only one gallery page of thumbnails is drawn (each
cached), the image picker lists the selection's images rather than every image, and the image
class is fused for the one image shown.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from storage.records import STATE_NO_ANOMALY
from webapp import explore_forms, run_data, selection
from webapp.explore_context import IMAGE_KEY, ExploreContext, plural, quoted, short
from webapp.gallery import THUMB_SIZE, draw_boxes, load_image, thumbnail, thumbnail_uri
from webapp.widgets import literal

#: Thumbnails per gallery page (columns x rows): three rows keep the actions on the first screen.
GALLERY_COLUMNS, GALLERY_ROWS = 4, 3
PAGE_SIZE = GALLERY_COLUMNS * GALLERY_ROWS
#: At most this many images in the image view's picker (the selection's first, then the run's).
IMAGE_CHOICES = 500


@st.fragment
def panels(ctx: ExploreContext, selected: list[int]) -> None:
    """The tabs beside the plot, as one fragment: paging the gallery, opening a region or picking an
    image reruns only them (the plot's 50,000 points are not sent again); edits and new selections
    rerun the whole page."""
    tab_selection, tab_clusters, tab_image, tab_history = st.tabs(
        [f"Selection ({len(selected):,})", "Clusters", "Image view", "History"])
    with tab_selection:
        selection_tab(ctx, selected)
    with tab_clusters:
        clusters_tab(ctx)
    with tab_image:
        image_tab(ctx, selected)
    with tab_history:
        history_tab(ctx)


def open_region(ctx: ExploreContext, region_id: int) -> None:
    """Show one region with its image (a thumbnail's label was clicked)."""
    st.session_state[selection.FOCUS_KEY] = int(region_id)
    st.session_state[IMAGE_KEY] = str(ctx.indexed.loc[region_id, "image"])


def focused_region_panel(ctx: ExploreContext) -> None:
    """The region opened from the gallery: its crop large, its image with every box, its cluster."""
    focus = st.session_state.get(selection.FOCUS_KEY)
    if focus not in ctx.known_ids:
        return
    point = ctx.indexed.loc[focus]
    image_rel = str(point["image"])
    with st.container(border=True, key="explore_focus"):
        st.markdown(f"**Region #{int(focus)}** · {quoted(short(str(point['cluster_name']), 60))} · "
                    f"confidence {float(point['confidence']):.2f}"
                    + (" · no anomaly found in this image" if point["state"] == STATE_NO_ANOMALY else ""))
        crop_col, image_col = st.columns([1, 2])
        crop, mask = ctx.files_of(int(focus))
        crop_col.image(thumbnail(crop, mask, 256), caption="crop with its mask outline", width="stretch")
        picture = load_image(str(Path(ctx.project.data_root) / image_rel))
        if picture is None:
            image_col.warning(f"The image file {literal(image_rel)} cannot be read.")
        else:
            boxes = ctx.store.image_assignments(ctx.run_id, image_rel)
            colors = ["#ff2d2d" if a.region.id == focus else "#9aa3ad" for a in boxes]
            labels = [f"#{a.region.id}" for a in boxes]
            image_col.image(draw_boxes(picture, [a.region.box for a in boxes], colors, labels),
                            caption=f"{literal(image_rel)} · region #{int(focus)} in red", width="stretch")
        st.button("Close", key="explore_focus_close", icon=":material/close:",
                  on_click=lambda: st.session_state.pop(selection.FOCUS_KEY, None))


def _set_page(page: int) -> None:
    st.session_state[selection.PAGE_KEY] = page


def gallery(ctx: ExploreContext, shown_ids: list[int]) -> None:
    """A page of thumbnails; each label opens its region, the cluster name sits under it."""
    pages = max(1, math.ceil(len(shown_ids) / PAGE_SIZE))
    page = min(int(st.session_state.get(selection.PAGE_KEY, 0)), pages - 1)
    if pages > 1:
        nav = st.container(horizontal=True, vertical_alignment="center")
        nav.button("Previous", icon=":material/chevron_left:", disabled=page == 0, key="gallery_prev",
                   on_click=_set_page, args=(page - 1,))
        nav.caption(f"Page {page + 1} of {pages:,}")
        nav.button("Next", icon=":material/chevron_right:", disabled=page >= pages - 1, key="gallery_next",
                   on_click=_set_page, args=(page + 1,))
    on_page = shown_ids[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
    with st.container(key="explore_gallery"):
        for row_start in range(0, len(on_page), GALLERY_COLUMNS):
            cells = st.columns(GALLERY_COLUMNS, gap="small")
            for cell, region_id in zip(cells, on_page[row_start : row_start + GALLERY_COLUMNS]):
                point = ctx.indexed.loc[region_id]
                crop, mask = ctx.files_of(int(region_id))
                cell.image(thumbnail(crop, mask, THUMB_SIZE), width="stretch")
                name = str(point["cluster_name"])
                cell.button(f"#{int(region_id)} · {float(point['confidence']):.2f}", key=f"open_{region_id}",
                            type="tertiary", help=f"Open region #{int(region_id)} in its image ({literal(name)})",
                            on_click=open_region, args=(ctx, int(region_id)))
                cell.caption(STATE_NO_ANOMALY if point["state"] == STATE_NO_ANOMALY else literal(short(name, 14)))


def selection_tab(ctx: ExploreContext, selected: list[int]) -> None:
    """The opened region, then the selection's crops with the actions on them (or the most doubtful regions)."""
    focused_region_panel(ctx)
    if not selected:
        st.subheader("Most doubtful regions", anchor=False)
        st.caption("Lowest confidence first. Select points on the plot (or a cluster) to see their crops here, "
                   "with the actions on them.")
        gallery(ctx, ctx.points.nsmallest(PAGE_SIZE, "confidence")["region_id"].tolist())
        return
    chosen = ctx.indexed.loc[selected]
    counts = chosen["cluster_name"].value_counts()
    st.subheader(f"Selection · {plural(len(selected), 'region')}", anchor=False)
    st.caption(f"From {plural(chosen['image'].nunique(), 'image')} · in "
               + ", ".join(f"{literal(short(str(n), 24))} ({c})" for n, c in counts.head(4).items())
               + (" ..." if len(counts) > 4 else ""))
    gallery(ctx, selected)
    explore_forms.selection_actions(ctx, selected)


def clusters_tab(ctx: ExploreContext) -> None:
    """The clusters with a sample crop each, a picker that selects one, and the cluster forms."""
    best = ctx.points.sort_values("confidence", ascending=False).drop_duplicates("cluster_id").set_index("cluster_id")
    rows = []
    for c in sorted(ctx.populated, key=lambda c: -c.region_count):
        sample = None
        if c.id in best.index:
            sample = thumbnail_uri(best.loc[c.id, "crop_path"], best.loc[c.id, "mask_path"], 64)
        rows.append({"sample": sample, "cluster": c.display_name, "regions": c.region_count,
                     "confidence": c.mean_confidence,
                     "state": "normal" if c.is_normal else ("named" if c.name else "unnamed")})
    st.dataframe(
        pd.DataFrame(rows), hide_index=True, width="stretch", row_height=56, key="explore_cluster_table",
        column_config={
            "sample": st.column_config.ImageColumn("sample", width=64, help="The most confident crop"),
            "cluster": st.column_config.TextColumn("cluster", width="medium"),
            "regions": st.column_config.NumberColumn("regions", width=64),
            "confidence": st.column_config.ProgressColumn("confidence", min_value=0.0, max_value=1.0, format="%.2f",
                                                          width=90, help="Mean confidence of its regions"),
            "state": st.column_config.TextColumn("state", width=72, help="normal, named or unnamed"),
        },
    )
    empty = len(ctx.clusters) - len(ctx.populated)
    if empty:
        st.caption(f"{empty} empty cluster{'s' if empty > 1 else ''} not listed (still available "
                   "as move and merge targets).")
    pick = st.columns([3, 1], vertical_alignment="bottom")
    show_id = pick[0].selectbox("Cluster to show in the gallery", ctx.cluster_ids, format_func=ctx.cluster_label,
                                key="explore_show_cluster")
    if pick[1].button("Select", key="explore_select_cluster", width="stretch",
                      help="Select its regions: their crops and the actions on them show in the Selection tab."):
        ids = ctx.points.loc[ctx.points["cluster_id"] == show_id, "region_id"].tolist()
        selection.set_selection(ids, f"cluster {ctx.name_of(show_id)}")
        st.rerun()
    explore_forms.cluster_forms(ctx)


def image_choices(ctx: ExploreContext, selected: list[int]) -> tuple[list[str], str, int]:
    """The image view's picker: (images listed, the one shown, how many images the run has). A large
    run lists the selection's images and then the run's first ones, at most IMAGE_CHOICES."""
    all_images = ctx.points["image"]
    chosen = list(dict.fromkeys(ctx.indexed.loc[selected[:IMAGE_CHOICES], "image"])) if selected else []
    current = st.session_state.get(IMAGE_KEY)
    if current not in set(all_images):
        current = chosen[0] if chosen else None
    head = list(dict.fromkeys(all_images.head(4 * IMAGE_CHOICES)))[:IMAGE_CHOICES]
    images = sorted(set(chosen) | set(head) | ({current} if current else set()))
    return images, current or images[0], int(all_images.nunique())


def image_tab(ctx: ExploreContext, selected: list[int]) -> None:
    """One image with its boxes in their clusters' colors, its fused class and its regions."""
    images, default_image, total = image_choices(ctx, selected)
    image_rel = st.selectbox("Image", images, index=images.index(default_image), key="explore_image_pick",
                             help=None if total <= len(images) else
                             f"{len(images):,} of the run's {total:,} images: the selection's first. Select regions "
                             "(or open one) to list their images.")
    st.session_state[IMAGE_KEY] = image_rel
    picture = load_image(str(Path(ctx.project.data_root) / image_rel))
    boxes = ctx.store.image_assignments(ctx.run_id, image_rel)
    by_id = ctx.by_cluster_id
    if picture is None:
        st.warning(f"The image file {literal(image_rel)} cannot be read from {literal(ctx.project.data_root)}.")
    else:
        colors = [by_id[a.cluster_id].color if a.cluster_id in by_id else "#888888" for a in boxes]
        labels = [f"{ctx.name_of(a.cluster_id)} {a.confidence:.2f}" for a in boxes]
        normal = [a.is_normal or (a.cluster_id in by_id and by_id[a.cluster_id].is_normal) for a in boxes]
        st.image(draw_boxes(picture, [a.region.box for a in boxes], colors, labels, normal),
                 caption=f"{literal(image_rel)} · {plural(len(boxes), 'region')}", width="stretch")
    fused = run_data.image_class_of(ctx.store, ctx.store.url, ctx.run_id, ctx.revision, image_rel)
    members = ctx.points[ctx.points["image"] == image_rel].sort_values("region_id")
    if fused is not None:
        st.metric("Image class (area-weighted fusion)", literal(fused.class_name), border=True,
                  help="Regions vote with weights growing with their area; normal regions vote 'normal'.")
        st.caption(f"Confidence {fused.confidence:.2f} · {plural(fused.region_count, 'region')}"
                   + (f" · ground truth: {literal(fused.gt_class)}" if fused.gt_class else ""))
    st.dataframe(members[["region_id", "cluster_name", "confidence", "state"]].rename(
        columns={"region_id": "region", "cluster_name": "cluster"}), hide_index=True, width="stretch")
    if st.button("Select this image's regions", key="explore_select_image", width="stretch"):
        selection.set_selection(members["region_id"].tolist(), f"image {image_rel}")
        st.rerun()


def history_tab(ctx: ExploreContext) -> None:
    history = ctx.store.edit_history(ctx.run_id)
    if not history:
        st.caption("No edits yet in this run.")
        return
    st.dataframe(
        pd.DataFrame([{"#": e.id, "edit": e.kind.replace("_", " "), "state": e.state,
                       "when": e.created_at.strftime("%Y-%m-%d %H:%M:%S") if e.created_at else "",
                       "by": e.author or ""} for e in reversed(history)]),
        hide_index=True, width="stretch",
    )
