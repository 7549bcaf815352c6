"""Projects: the workspace overview, the one-click demo, new projects from a folder or a ZIP."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import streamlit as st

from core.dataset import DatasetError
from core.evaluation.coco import find_annotations
from storage import ProjectInfo
from webapp import intake, messages, navigation, uploads, widgets
from webapp.intake import DataSummary
from webapp.workspace import database_url, get_store

store = get_store()


# ------------------------------------------------------------------------------ pieces


def summary_preview(summary: DataSummary) -> None:
    """Counts, sizes, ground truth and what is missing, before a project is created."""
    widgets.metric_cards([
        ("To inspect", summary.n_unlabeled, "Images to discover defect classes in"),
        ("Normal", summary.n_normal, "Defect-free reference images for the detector"),
        ("Layout", "MVTec AD" if summary.layout == "mvtec" else "plain folder"),
        ("Maps", summary.n_maps if summary.maps_dir else "none",
         "Maps matched to images in the maps folder" if summary.maps_dir else "The built-in detector will make them"),
    ])
    left, right = st.columns(2)
    with left:
        st.markdown("**Image sizes** (width x height)")
        sizes = pd.DataFrame({"size": list(summary.sizes), "images": list(summary.sizes.values())})
        st.dataframe(sizes.head(20), hide_index=True, width="stretch")
    with right:
        if summary.gt_classes:
            st.markdown("**Ground-truth classes** (used for metrics only)")
            classes = pd.DataFrame({"class": list(summary.gt_classes), "images": list(summary.gt_classes.values())})
            st.dataframe(classes, hide_index=True, width="stretch")
        if summary.labeled_classes:
            st.markdown("**Labeled set** (taught to the model as known classes)")
            labeled = pd.DataFrame({"class": list(summary.labeled_classes),
                                    "crops": list(summary.labeled_classes.values())})
            st.dataframe(labeled, hide_index=True, width="stretch")
    st.markdown(f"**Anomaly maps:** {summary.detector_mode}")
    if summary.missing:
        st.markdown("**Good to know**")
        widgets.bullet_notes(summary.missing)
    widgets.problems_list(summary.problems, "Files that could not be used")


def create_from_summary(key: str) -> None:
    """Name field and Create button under a checked data set."""
    summary: DataSummary | None = st.session_state.get(f"{key}_summary")
    if summary is None:
        return
    st.divider()
    st.subheader("Preview", anchor=False)
    st.caption(f"Data set folder: {widgets.literal(str(summary.root))}")
    summary_preview(summary)
    default = summary.root.name if summary.root.name else "project"
    name = st.text_input("Project name", value=default, key=f"{key}_name", max_chars=120)
    if st.button("Create project", type="primary", key=f"{key}_create", icon=":material/add:"):
        try:
            project = intake.create_project(store, name, summary)
        except (ValueError, DatasetError) as error:
            st.error(str(error))
            return
        navigation.set_project(project.id)
        st.session_state.pop(f"{key}_summary", None)
        messages.flash("success", f"Project “{widgets.literal(project.name)}” (#{project.id}) created "
                                  f"with {summary.n_images} images.")
        st.rerun()


def folder_form() -> None:
    st.caption("A folder on this server: the MVTec AD layout (train/good, test/<class>, ground_truth) "
               "or a plain folder of images with an optional normal/ subfolder.")
    root = st.text_input("Data set folder", key="folder_root", placeholder="/data/line3/2024-06")
    left, right = st.columns(2)
    maps_dir = left.text_input("Anomaly maps folder (optional)", key="folder_maps",
                               help="Maps from your own detector (.npy, .tif, .png), laid out like the images "
                                    "or with the same file names.")
    labeled_dir = right.text_input("Labeled set folder (optional)", key="folder_labeled",
                                   help="Known defect classes: one subfolder of crop images per class.")
    if st.button("Check folder", key="folder_check", icon=":material/fact_check:"):
        if not root.strip():
            st.error("Enter the data set folder first.")
            return
        try:
            with st.spinner("Reading the data set ..."):
                st.session_state["folder_summary"] = intake.summarize_dataset(
                    root.strip(), maps_dir.strip() or None, labeled_dir.strip() or None)
        except (DatasetError, OSError, ValueError) as error:
            st.session_state.pop("folder_summary", None)
            st.error(str(error), icon=":material/error:")
    create_from_summary("folder")


def zip_form() -> None:
    limit_mb = uploads.MAX_ZIP_BYTES // (1024 * 1024)
    st.caption(f"A ZIP of a data set folder (same layouts as above), at most {limit_mb} MB. Entries with "
               "absolute paths, '..' or links are refused and listed.")
    uploaded = st.file_uploader("Data set ZIP", type=["zip"], key="zip_file")
    if st.button("Unpack and check", key="zip_check", icon=":material/unarchive:"):
        st.session_state.pop("zip_summary", None)
        st.session_state.pop("zip_rejected", None)
        if uploaded is None:
            st.error("Choose a ZIP file first.")
        elif uploaded.size > uploads.MAX_ZIP_BYTES:
            st.error(f"{widgets.literal(uploaded.name)}: {widgets.format_bytes(uploaded.size)} is more than the "
                     f"{limit_mb} MB allowed.")
        else:
            folder = uploads.new_upload_folder(store)
            try:
                with st.spinner("Unpacking ..."):
                    extraction = uploads.extract_zip(uploaded, folder)
                    st.session_state["zip_rejected"] = extraction.rejected
                    st.session_state["zip_summary"] = intake.summarize_dataset(extraction.root)
            except (uploads.UploadError, DatasetError, OSError) as error:
                uploads.discard_upload(folder)  # nothing of a refused upload stays in the workspace
                st.error(f"{widgets.literal(uploaded.name)}: {widgets.literal(error)}", icon=":material/error:")
    rejected = st.session_state.get("zip_rejected") or []
    if rejected:
        st.warning(f"{len(rejected)} entr{'y was' if len(rejected) == 1 else 'ies were'} refused:",
                   icon=":material/gpp_maybe:")
        st.dataframe(pd.DataFrame(rejected, columns=["entry", "reason"]), hide_index=True, width="stretch")
    create_from_summary("zip")


def demo_card(primary: bool, key: str) -> None:
    """The one-click demo; when a demo project exists, offers to open it instead of a silent copy."""
    with st.container(border=True):
        st.markdown(":material/auto_awesome: **Demo project**")
        st.caption("A synthetic inspection set of machined flanges with five defect types (scratch, hole, "
                   "stain, crack, chipped edge), normal references and ground truth, generated into the "
                   "workspace in a few seconds. The quickest way to see the whole flow.")
        existing = intake.existing_demo_projects(store)
        if existing:
            demo = existing[-1]
            st.caption(f"The workspace already has the demo project “{widgets.literal(demo.name)}” "
                       f"(#{demo.id}). Open it to keep its runs and names, or make a second, separate copy.")
        buttons = st.container(horizontal=True)
        if existing and buttons.button(f"Open demo project #{existing[-1].id}", key=f"{key}_open",
                                       type="primary" if primary else "secondary", icon=":material/folder_open:"):
            navigation.set_project(existing[-1].id)
            messages.flash("info", f"Opened the demo project (#{existing[-1].id}).")
            st.rerun()
        label = "Create another demo project" if existing else "Create the demo project"
        if buttons.button(label, type="secondary" if existing or not primary else "primary",
                          key=key, icon=":material/play_arrow:"):
            with st.spinner("Generating the demo data set ..."):
                try:
                    project = intake.create_demo_project(store)
                except (ValueError, DatasetError, OSError) as error:
                    st.error(f"The demo could not be created: {error}")
                    return
            navigation.set_project(project.id)
            messages.flash("success", f"Demo project created (#{project.id}). Next: make the anomaly maps on "
                                      "'Detection & MEBin', or go straight to 'Discover'.")
            st.rerun()


def project_overview(project: ProjectInfo) -> None:
    """What the current project holds and what it lacks."""
    counts = store.project_counts(project.id)
    roles, sizes, maps, regions = counts["roles"], Counter(counts["sizes"]), counts["maps"], counts["regions"]
    runs = store.list_runs(project.id)
    done = [r for r in runs if r.kind == "discover" and r.status == "done"]
    st.subheader(widgets.literal(project.name), anchor=False)
    size_text = (sizes.most_common(1)[0][0] + " px" + (f" (and {len(sizes) - 1} other sizes)" if len(sizes) > 1 else "")
                 if sizes else "size unknown")
    st.caption(f"Data set: {widgets.literal(project.data_root)} · images {size_text} · "
               f"created {widgets.format_time(project.created_at)}")
    widgets.metric_cards([
        ("To inspect", roles.get("unlabeled", 0), "Images to discover defect classes in"),
        ("Normal", roles.get("normal", 0), "Defect-free reference images for the detector"),
        ("Maps", maps, "Anomaly maps recorded"),
        ("Regions", regions, "Anomaly-centred crops cut by MEBin"),
        ("Runs done", len(done), "Finished discovery runs"),
    ])
    gt = counts["gt_classes"]
    notes = []
    if not maps:
        notes.append("No anomaly maps yet: make them on 'Detection & MEBin' (or let Discover make them).")
    if not roles.get("normal"):
        notes.append("No normal reference images: the built-in detector runs in zero-shot mode.")
    if not gt and find_annotations(project.data_root) is None:
        notes.append("No ground truth: discovery works, quality metrics are not available.")
    if project.settings.get("labeled_dir"):
        classes = project.settings.get("labeled_classes") or {}
        notes.append(f"Labeled set with {len(classes)} classes: {project.settings['labeled_dir']}")
    if notes:
        widgets.bullet_notes(notes)
    widgets.problems_list(project.settings.get("problems") or [], "Files that could not be used")
    actions = st.container(horizontal=True)
    if actions.button("Discover", icon=":material/rocket_launch:", key="go_discover", type="primary"):
        st.switch_page("views/discover.py")
    if actions.button("Review maps", icon=":material/insights:", key="go_review"):
        st.switch_page("views/review.py")
    if actions.button("Delete project", icon=":material/delete:", key="ask_delete", type="tertiary"):
        st.session_state["confirm_delete"] = project.id
        st.rerun()


@st.dialog("Delete project")
def confirm_delete(project: ProjectInfo) -> None:
    """Name the project by name and id before deleting it (two projects may share a name)."""
    st.markdown(f"Delete the project **#{project.id}** “{widgets.literal(project.name)}” with its runs, "
                "clusters and labels? The data set folder itself is not touched.")
    st.caption(f"Data set: {widgets.literal(project.data_root)}")
    left, right = st.columns(2)
    if left.button(f"Delete project #{project.id}", type="primary", key="delete_yes"):
        store.delete_project(project.id)
        st.session_state.pop("confirm_delete", None)
        navigation.set_project(None)
        messages.flash("success", f"Project #{project.id} “{widgets.literal(project.name)}” deleted.")
        st.rerun()
    if right.button("Keep it", key="delete_no"):
        st.session_state.pop("confirm_delete", None)
        st.rerun()


def projects_table(projects: list[ProjectInfo]) -> None:
    """Every project with its last discovery (what the engineer looks for) and its last job."""
    rows = []
    for project in projects:
        runs = store.list_runs(project.id)
        discoveries = [r for r in runs if r.kind == "discover"]
        last = discoveries[0] if discoveries else None
        rows.append({
            "id": project.id, "project": project.name,
            "images": project.settings.get("n_unlabeled"), "normal": project.settings.get("n_normal"),
            "discoveries done": sum(1 for r in discoveries if r.status == "done"),
            "last discovery": f"#{last.id} {last.status}" if last else "–",
            "last job": f"#{runs[0].id} {runs[0].kind} {runs[0].status}" if runs else "–",
            "created": widgets.format_time(project.created_at), "data set": project.data_root,
        })
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"id": st.column_config.NumberColumn("id", format="#%d", width="small")})


# ------------------------------------------------------------------------------ page

st.title("Projects", anchor=False)
messages.show()

projects = store.list_projects()
if not projects:
    st.markdown("#### Welcome to Defect Discovery Studio")
    st.write("Turn a folder of inspection images into named defect classes: anomaly maps are binarized "
             "into anomaly-centred crops, a mask-guided ViT learns them, and you name, merge and correct "
             "the clusters it finds, then export a labeled CSV.")
    demo_card(primary=True, key="demo_create_welcome")
else:
    project_id = navigation.select_project(required=False)
    by_id = {p.id: p for p in projects}
    if st.session_state.get("confirm_delete") in by_id:
        confirm_delete(by_id[st.session_state["confirm_delete"]])
    if project_id in by_id:
        with st.container(border=True):
            project_overview(by_id[project_id])
    if len(projects) > 1:
        st.markdown("#### All projects")
        projects_table(projects)

st.markdown("#### New project")
folder_tab, zip_tab, demo_tab = st.tabs([":material/folder: Server folder", ":material/upload_file: Upload ZIP",
                                          ":material/auto_awesome: Demo"])
with folder_tab:
    folder_form()
with zip_tab:
    zip_form()
with demo_tab:
    demo_card(primary=False, key="demo_create")
st.caption(f"Workspace: {widgets.literal(str(store.workspace))} · database: "
           f"{'SQLite in the workspace' if not database_url() else 'external (STUDIO_DATABASE_URL)'}")
