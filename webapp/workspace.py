"""Where the app keeps its data: the workspace folder and database from the environment, and the
Store opened once per server process (st.cache_resource)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from storage import DATABASE_URL_ENV, WORKSPACE_ENV, Store, environment, open_workspace

__all__ = ["DATABASE_URL_ENV", "WORKSPACE_ENV", "database_url", "get_store", "workspace_path"]


def workspace_path() -> Path:
    """The workspace folder: $STUDIO_WORKSPACE or ./workspace (created on first use)."""
    return environment()[0]


def database_url() -> str | None:
    """$STUDIO_DATABASE_URL, or None for the SQLite file in the workspace."""
    return environment()[1]


@st.cache_resource(show_spinner="Opening the workspace ...")
def _open_store(workspace: str, url: str | None) -> Store:
    store = open_workspace(Path(workspace), url)
    # Runs whose worker died while the app was down would otherwise show "running" forever.
    from webapp.job_control import fail_abandoned

    fail_abandoned(store)
    return store


def get_store() -> Store:
    """The workspace's Store, opened once per server process (st.cache_resource)."""
    workspace, url = environment()  # the app's one read of the environment, on every script run
    return _open_store(str(workspace), url)
