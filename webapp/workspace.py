"""Where the app keeps its data: the workspace folder and database from the environment, and the
Store opened once per server process (st.cache_resource)."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from storage import Store, open_workspace

WORKSPACE_ENV = "STUDIO_WORKSPACE"  # folder of the SQLite file, crops and demo data
DATABASE_ENV = "STUDIO_DATABASE_URL"  # any SQLAlchemy URL instead of the SQLite file


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
