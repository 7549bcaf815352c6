"""The app's shared state: the cached Store, the current project and run, and project intake.

Intake (checking a data set folder, unpacking an uploaded ZIP safely, making the demo set) lives
here because several pages and the tests use it; it calls core and storage and holds no
algorithm. Everything that touches `st.*` is a small function at the bottom.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import streamlit as st

from core.dataset import DatasetError, load_dataset
from core.imageio import is_image_file
from core.records import GOOD, Manifest
from storage import DONE, ProjectInfo, RunInfo, Store, open_workspace
from webapp import widgets

WORKSPACE_ENV = "STUDIO_WORKSPACE"  # folder of the SQLite file, crops and demo data
DATABASE_ENV = "STUDIO_DATABASE_URL"  # any SQLAlchemy URL instead of the SQLite file
DEMO_SIZE_ENV = "STUDIO_DEMO_SIZE"  # "tiny" (tests), "small" or "full" (default)

#: Largest uploaded ZIP and largest unpacked content accepted, in bytes.
MAX_ZIP_BYTES = 1024 * 1024 * 1024
MAX_UNPACKED_BYTES = 4 * MAX_ZIP_BYTES
#: Highest compression ratio of one ZIP entry before it is taken for a ZIP bomb.
MAX_COMPRESSION_RATIO = 200

#: Demo data set sizes (core.demo.DemoConfig fields) selected by STUDIO_DEMO_SIZE.
DEMO_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(image_size=64, n_train_good=6, n_test_good=2, n_per_class=3,
                 defect_types=("scratch", "hole", "stain")),
    "small": dict(image_size=128, n_train_good=16, n_test_good=6, n_per_class=8),
    "full": {},
}
DEMO_PROJECT_NAME = "Demo: machined flanges"


# ------------------------------------------------------------------------------ the store


def workspace_path() -> Path:
    """The workspace folder: $STUDIO_WORKSPACE or ./workspace (created on first use)."""
    return Path(os.environ.get(WORKSPACE_ENV) or "workspace").expanduser().resolve()


def database_url() -> str | None:
    """$STUDIO_DATABASE_URL, or None for the SQLite file in the workspace."""
    return os.environ.get(DATABASE_ENV) or None


@st.cache_resource(show_spinner="Opening the workspace ...")
def _open_store(workspace: str, url: str | None) -> Store:
    store = open_workspace(Path(workspace), url)
    # Runs whose worker died while the app was down would otherwise show "running" forever.
    from webapp.jobs import recover

    recover(store)
    return store


def get_store() -> Store:
    """The workspace's Store, opened once per server process (st.cache_resource)."""
    return _open_store(str(workspace_path()), database_url())


# ------------------------------------------------------------------------------ data set intake


@dataclass
class DataSummary:
    """What a data set folder holds and what it lacks, for the engineer before creating a project."""

    root: Path
    layout: str  # "mvtec" or "folder"
    n_images: int  # usable images, all roles
    n_normal: int  # defect-free references (train/good, normal/)
    n_unlabeled: int  # images to discover in
    sizes: dict[str, int]  # "W x H" -> image count
    gt_classes: dict[str, int]  # ground-truth class -> image count (MVTec layout only)
    n_gt_masks: int  # images with a ground-truth mask
    problems: list[str] = field(default_factory=list)  # unreadable files, bad maps, by name
    missing: list[str] = field(default_factory=list)  # what is absent and what that means
    maps_dir: Path | None = None
    n_maps: int = 0  # maps matched to images
    labeled_dir: Path | None = None
    labeled_classes: dict[str, int] = field(default_factory=dict)  # class -> crop count
    manifest: Manifest | None = None

    @property
    def detector_mode(self) -> str:
        """How anomaly maps will be made: imported, PatchCore on the references, or zero-shot."""
        if self.n_maps:
            return "imported maps"
        return "built-in detector (PatchCore)" if self.n_normal else "built-in detector (zero-shot)"


def labeled_set_classes(folder: Path) -> dict[str, int]:
    """A labeled set is a folder per class of crops; returns class -> number of crops.

    Raises DatasetError naming the folder when it is missing or holds no class folder with images.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: labeled set folder does not exist")
    classes = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        crops = [p for p in class_dir.iterdir() if is_image_file(p)]
        if crops:
            classes[class_dir.name] = len(crops)
    if not classes:
        raise DatasetError(f"{folder}: no class folders with crop images (expected <class>/<crop>.png)")
    return classes


def summarize_dataset(root: Path | str, maps_dir: Path | str | None = None,
                      labeled_dir: Path | str | None = None) -> DataSummary:
    """Read a data set folder (and the optional maps and labeled set) into a DataSummary.

    Raises DatasetError for a folder that cannot be used at all; problems with single files,
    maps or the labeled set are listed in the summary instead.
    """
    manifest = load_dataset(Path(root))
    sizes = Counter(f"{r.size[1]} x {r.size[0]}" for r in manifest.images if r.size)
    gt = Counter(r.gt_class for r in manifest.unlabeled if r.gt_class is not None)
    summary = DataSummary(
        root=manifest.root,
        layout=manifest.layout,
        n_images=len(manifest.images),
        n_normal=len(manifest.normal),
        n_unlabeled=len(manifest.unlabeled),
        sizes=dict(sizes.most_common()),
        gt_classes=dict(sorted(gt.items())),
        n_gt_masks=sum(1 for r in manifest.unlabeled if r.gt_mask_path is not None),
        problems=[str(p) for p in manifest.problems],
        manifest=manifest,
    )
    if maps_dir:
        summary.maps_dir = Path(maps_dir).expanduser().resolve()
        from core.detection.importer import import_maps  # imported lazily: loads the map readers

        imported = import_maps(manifest.unlabeled, summary.maps_dir, strict=False)
        summary.n_maps = len(imported.maps)
        summary.problems += [str(p) for p in imported.problems]
    if labeled_dir:
        summary.labeled_dir = Path(labeled_dir).expanduser().resolve()
        try:
            summary.labeled_classes = labeled_set_classes(summary.labeled_dir)
        except DatasetError as error:
            summary.problems.append(str(error))
    summary.missing = _missing_notes(summary)
    return summary


def _missing_notes(summary: DataSummary) -> list[str]:
    notes = []
    if not summary.n_maps:
        if summary.n_normal:
            notes.append("No anomaly maps: the built-in detector (PatchCore) learns from the "
                          f"{summary.n_normal} normal images.")
        else:
            notes.append("No anomaly maps and no normal images: the built-in detector runs in "
                         "zero-shot mode (each image is compared with the others).")
    elif summary.maps_dir and summary.n_maps < summary.n_unlabeled:
        notes.append(f"Maps were found for {summary.n_maps} of {summary.n_unlabeled} images; "
                     "the others are listed under problems.")
    if not summary.gt_classes:
        notes.append("No ground-truth classes: discovery works, but no quality metrics (NMI, ARI, F1).")
    elif not summary.n_gt_masks:
        notes.append("No ground-truth masks: pixel-level detector scores cannot be computed.")
    if summary.gt_classes and set(summary.gt_classes) <= {GOOD}:
        notes.append("Only 'good' images in test/: there is nothing defective to discover.")
    if not summary.labeled_classes:
        notes.append("No labeled set: discovery starts unsupervised; name clusters later to "
                     "teach the next run.")
    if len(summary.sizes) > 1:
        notes.append(f"Images come in {len(summary.sizes)} different sizes; crops are resized for "
                     "training, so that is fine.")
    return notes


def create_project(store: Store, name: str, summary: DataSummary) -> ProjectInfo:
    """Create a project for a checked data set and record its images (one call per step)."""
    name = name.strip()
    if not name:
        raise ValueError("Give the project a name.")
    if summary.manifest is None:
        raise ValueError("Check the data set folder first.")
    settings: dict[str, Any] = {
        "layout": summary.layout,
        "maps_dir": str(summary.maps_dir) if summary.maps_dir and summary.n_maps else None,
        "labeled_dir": str(summary.labeled_dir) if summary.labeled_classes else None,
        "labeled_classes": summary.labeled_classes,
        "n_normal": summary.n_normal,
        "n_unlabeled": summary.n_unlabeled,
        "has_ground_truth": bool(summary.gt_classes),
        "problems": summary.problems[:200],
    }
    project = store.create_project(name, str(summary.root), settings)
    store.record_images(project.id, summary.manifest.images)
    return project


# ------------------------------------------------------------------------------ ZIP uploads


@dataclass
class ZipExtraction:
    """Result of unpacking an uploaded ZIP: the data set root and every entry refused, by name."""

    folder: Path  # where the entries were written
    root: Path  # the data set root inside it (a single top folder is stepped into)
    extracted: int
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (entry name, reason)


class UploadError(ValueError):
    """An upload that cannot be used at all (not a ZIP, too large, nothing usable inside)."""


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why an entry may not be written, or None when it is safe."""
    name = info.filename
    if "\x00" in name:
        return "file name holds a NUL character"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return "absolute path (would be written outside the upload folder)"
    if any(part == ".." for part in PurePosixPath(posix).parts):
        return "path escapes the upload folder ('..')"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link (not extracted)"
    if info.flag_bits & 0x1:
        return "encrypted entry (password-protected ZIPs are not supported)"
    if info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO and info.file_size > 10_000_000:
        return f"suspicious compression ratio ({info.file_size // max(info.compress_size, 1)}:1)"
    return None


def _skipped(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return any(p == "__MACOSX" or p.startswith("._") or p == ".DS_Store" for p in parts)


def extract_zip(source: IO[bytes] | Path | str, destination: Path | str, *,
                max_unpacked: int = MAX_UNPACKED_BYTES) -> ZipExtraction:
    """Unpack an uploaded ZIP into a new folder, refusing unsafe entries (zip-slip) by name.

    Absolute paths, '..' components, links and encrypted entries are reported, never written;
    every written path is checked to stay inside the destination. Raises UploadError when the
    file is not a ZIP or would unpack to more than max_unpacked bytes.
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=False)
    base = destination.resolve()
    result = ZipExtraction(folder=base, root=base, extracted=0)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise UploadError(f"not a readable ZIP file ({error})") from error
    with archive:
        infos = archive.infolist()
        total = sum(i.file_size for i in infos if not i.is_dir())
        if total > max_unpacked:
            raise UploadError(f"the ZIP unpacks to {total / 1e9:.1f} GB, more than the "
                              f"{max_unpacked / 1e9:.1f} GB allowed")
        for info in infos:
            if info.is_dir() or _skipped(info.filename):
                continue
            problem = _entry_problem(info)
            target = (base / info.filename.replace("\\", "/")).resolve()
            if problem is None and base not in target.parents:
                problem = "path escapes the upload folder"
            if problem:
                result.rejected.append((info.filename, problem))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
            except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as error:
                target.unlink(missing_ok=True)
                result.rejected.append((info.filename, f"could not be read ({error})"))
                continue
            result.extracted += 1
    if result.extracted == 0:
        raise UploadError("the ZIP holds no usable file" + (
            f" ({len(result.rejected)} refused: {result.rejected[0][0]}: {result.rejected[0][1]})"
            if result.rejected else ""))
    children = [p for p in base.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        result.root = children[0]
    return result


def new_upload_folder(store: Store) -> Path:
    """A fresh folder under workspace/uploads for one uploaded data set."""
    return Path(store.workspace) / "uploads" / uuid.uuid4().hex[:12]


# ------------------------------------------------------------------------------ demo project


def demo_settings() -> dict[str, Any]:
    """DemoConfig overrides for $STUDIO_DEMO_SIZE ("tiny", "small" or "full")."""
    size = (os.environ.get(DEMO_SIZE_ENV) or "full").strip().lower()
    if size not in DEMO_SIZES:
        raise ValueError(f"{DEMO_SIZE_ENV}={size!r}: expected one of {sorted(DEMO_SIZES)}")
    return DEMO_SIZES[size]


def create_demo_project(store: Store, name: str = DEMO_PROJECT_NAME) -> ProjectInfo:
    """Generate the synthetic demo data set into the workspace and make a project of it."""
    from core.demo import DemoConfig, generate_demo

    overrides = demo_settings()
    size = (os.environ.get(DEMO_SIZE_ENV) or "full").strip().lower()
    root = Path(store.workspace) / "demo" / size
    if not (root / "README.txt").is_file():
        generate_demo(root, DemoConfig(**overrides), overwrite=True)
    summary = summarize_dataset(root)
    return create_project(store, name, summary)


# ------------------------------------------------------------------------------ selection (st.*)


def current_project_id() -> int | None:
    """The project chosen in this browser session, if any."""
    return st.session_state.get("project_id")


def set_project(project_id: int | None) -> None:
    """Make a project current (and forget the run of the previous one)."""
    if st.session_state.get("project_id") != project_id:
        st.session_state["run_id"] = None
    st.session_state["project_id"] = project_id


def set_run(run_id: int | None) -> None:
    st.session_state["run_id"] = run_id


def _project_label(project: ProjectInfo) -> str:
    return f"{project.name}  (#{project.id})"


def select_project(required: bool = True) -> int | None:
    """Sidebar project picker; returns the current project id.

    With required=True and no project at all, shows a friendly pointer to the Projects page and
    stops the page.
    """
    store = get_store()
    projects = store.list_projects()
    if not projects:
        if required:
            _stop_with_link("There is no project yet. Create one (or the one-click demo) on the Projects page.",
                            "views/home.py", "Go to Projects", ":material/folder_open:")
        return None
    by_id = {p.id: p for p in projects}
    return _sidebar_picker("Project", by_id, current_project_id(), projects[-1].id, "sidebar_project",
                           lambda pid: _project_label(by_id[pid]), set_project)


def _stop_with_link(message: str, page: str, label: str, icon: str) -> None:
    """Say why this page cannot show anything yet, link to the page that fixes it, stop."""
    st.info(message)
    widgets.page_link(page, label, icon)
    st.stop()


def _sidebar_picker(label: str, by_id: dict[int, Any], current: int | None, fallback: int, key: str,
                    format_func: Any, select: Any) -> int:
    """A sidebar selectbox mirroring a session-state id (which other pages may set); returns the id."""
    if current not in by_id:
        current = fallback
    select(current)
    if st.session_state.get(key) != current:
        st.session_state[key] = current
    st.sidebar.selectbox(label, list(by_id), format_func=format_func, key=key,
                         on_change=lambda: select(st.session_state[key]))
    return current


def run_label(run: RunInfo) -> str:
    """Short human label of a run for pickers."""
    when = run.created_at.strftime("%Y-%m-%d %H:%M") if run.created_at else ""
    classes = run.settings.get("classes", "auto")
    retrain = " · retrained" if run.parent_run_id else ""
    return f"Run #{run.id} · {when} · classes {classes}{retrain}"


def finished_runs(store: Store, project_id: int) -> list[RunInfo]:
    """Discovery runs of a project that finished with results, newest first."""
    return store.list_runs(project_id, kind="discover", status=DONE)


def select_run(project_id: int, required: bool = True) -> int | None:
    """Sidebar picker of the project's finished discovery runs; returns the current run id.

    With required=True and no finished run, points to the Discover page and stops the page.
    """
    store = get_store()
    runs = finished_runs(store, project_id)
    if not runs:
        if required:
            _stop_with_link("This project has no finished discovery run yet. Start one on the Discover page.",
                            "views/discover.py", "Go to Discover", ":material/rocket_launch:")
        return None
    by_id = {r.id: r for r in runs}
    return _sidebar_picker("Run", by_id, st.session_state.get("run_id"), runs[0].id, "sidebar_run",
                           lambda rid: run_label(by_id[rid]), set_run)
