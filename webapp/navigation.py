"""Which project and run a browser session shows: sidebar pickers kept in the page's URL.

The project and the run live in st.session_state (pages set them) and in st.query_params
(`?project=3&run=12`), and the page is the URL path, so a reload (F5) or a shared link shows the
same project, run and page instead of whatever is newest. On a session's first run the URL wins;
after that every picker writes the current choice back into the URL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

from storage import DONE, ProjectInfo, RunInfo, Store
from webapp import widgets
from webapp.workspace import get_store

#: URL query parameters of the current project and run.
PROJECT_PARAM, RUN_PARAM = "project", "run"
#: Session-state keys of the current project and run ids.
PROJECT_KEY, RUN_KEY = "project_id", "run_id"
#: Set once the session has read the project and run from its URL.
RESTORED_KEY = "_navigation_restored_from_url"
#: An id the URL asked for that does not exist (shown once in the sidebar).
MISSING_KEY = "_navigation_missing_from_url"


def _int_param(name: str) -> int | None:
    value = st.query_params.get(name)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def restore_from_url() -> None:
    """On a session's first run, take the project and run from the URL (a reload or a shared link)."""
    if st.session_state.get(RESTORED_KEY):
        return
    st.session_state[RESTORED_KEY] = True
    project, run = _int_param(PROJECT_PARAM), _int_param(RUN_PARAM)
    if project is not None:
        st.session_state[PROJECT_KEY] = project
        st.session_state[RUN_KEY] = run


def _write_url() -> None:
    """Put the current project and run into the URL (removing what is not chosen)."""
    for param, key in ((PROJECT_PARAM, PROJECT_KEY), (RUN_PARAM, RUN_KEY)):
        value = st.session_state.get(key)
        if value is None:
            if param in st.query_params:
                del st.query_params[param]
        elif st.query_params.get(param) != str(value):
            st.query_params[param] = str(value)


def current_project_id() -> int | None:
    """The project chosen in this browser session (or its URL), if any."""
    restore_from_url()
    return st.session_state.get(PROJECT_KEY)


def current_run_id() -> int | None:
    """The run chosen in this browser session (or its URL), if any."""
    restore_from_url()
    return st.session_state.get(RUN_KEY)


def set_project(project_id: int | None) -> None:
    """Make a project current (and forget the run of the previous one); kept in the URL."""
    restore_from_url()
    if st.session_state.get(PROJECT_KEY) != project_id:
        st.session_state[RUN_KEY] = None
    st.session_state[PROJECT_KEY] = project_id
    _write_url()


def set_run(run_id: int | None) -> None:
    """Make a run current; kept in the URL."""
    restore_from_url()
    st.session_state[RUN_KEY] = run_id
    _write_url()


def project_label(project: ProjectInfo) -> str:
    """'name  (#id)' for pickers: two projects may share a name, never an id."""
    return f"{project.name}  (#{project.id})"


def select_project(required: bool = True) -> int | None:
    """Sidebar project picker; returns the current project id.

    With required=True and no project at all, shows a friendly pointer to the Projects page and
    stops the page.
    """
    projects = get_store().list_projects()
    if not projects:
        return _nothing_to_pick(required, "There is no project yet. Create one (or the one-click demo) on the "
                                "Projects page.", "views/home.py", "Go to Projects", ":material/folder_open:")
    return _sidebar_picker("Project", "project", projects, current_project_id(), projects[-1].id, "sidebar_project",
                           project_label, set_project)


def _nothing_to_pick(required: bool, message: str, page: str, label: str, icon: str) -> None:
    """No item to pick: when the page requires one, say why, link to the page that fixes it, stop."""
    if required:
        st.info(message)
        widgets.page_link(page, label, icon)
        st.stop()
    return None


def _sidebar_picker(label: str, what: str, items: Sequence[Any], current: int | None, fallback: int, key: str,
                    describe: Callable[[Any], str], select: Callable[[int], None]) -> int:
    """A sidebar selectbox over items (with an .id) mirroring a session-state id (which other pages may set).

    Returns the id. An id that no longer exists (an old link, a deleted project) is said once, then
    the fallback shows.
    """
    by_id = {item.id: item for item in items}
    if current is not None and current not in by_id:
        st.sidebar.warning(f"{what.capitalize()} #{current} (asked for by the link or the last page) is not available "
                           f"here; showing #{fallback} instead.",
                           icon=":material/link_off:")
    if current not in by_id:
        current = fallback
    select(current)
    # The widget's key names the current id: a page switch (or another page's choice) then always
    # draws a fresh box showing the current entry, never a value the browser kept from an earlier
    # visit to this page, and choosing any other entry is a change that switches to it.
    ids = list(by_id)
    widget_key = f"{key}_{current}"
    st.sidebar.selectbox(label, ids, index=ids.index(current), format_func=lambda item_id: describe(by_id[item_id]),
                         key=widget_key, on_change=lambda: select(st.session_state[widget_key]))
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
    runs = finished_runs(get_store(), project_id)
    if not runs:
        return _nothing_to_pick(required, "This project has no finished discovery run yet. Start one on the "
                                "Discover page.", "views/discover.py", "Go to Discover", ":material/rocket_launch:")
    return _sidebar_picker("Run", "finished run", runs, current_run_id(), runs[0].id, "sidebar_run", run_label,
                           set_run)
