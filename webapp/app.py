"""Defect Discovery Studio: `streamlit run webapp/app.py`.

Registers the pages of webapp/views/ with st.navigation (one file per page; no legacy pages/
folder), opens the workspace once per server process and runs the chosen page.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from webapp.navigation import restore_from_url
from webapp.page_icon import page_icon
from webapp.workspace import get_store

VIEWS = Path(__file__).resolve().parent / "views"

#: Pages in navigation order: (file, title, icon, section). W2's pages are added when present.
PAGES = [
    ("home.py", "Projects", ":material/folder_open:", "Data"),
    ("review.py", "Detection & MEBin", ":material/insights:", "Data"),
    ("discover.py", "Discover", ":material/rocket_launch:", "Discovery"),
    ("explore.py", "Explore", ":material/scatter_plot:", "Discovery"),
    ("labels.py", "Labels & runs", ":material/sell:", "Discovery"),
    ("classify.py", "Classify new images", ":material/category:", "Results"),
    ("evaluate.py", "Evaluate", ":material/analytics:", "Results"),
    ("export.py", "Export", ":material/download:", "Results"),
]


def build_navigation() -> dict[str, list[st.Page]]:
    """st.Page objects grouped by section, for the pages whose file exists."""
    sections: dict[str, list[st.Page]] = {}
    for filename, title, icon, section in PAGES:
        if (VIEWS / filename).is_file():
            page = st.Page(f"views/{filename}", title=title, icon=icon, default=filename == "home.py")
            sections.setdefault(section, []).append(page)
    return sections


def main() -> None:
    st.set_page_config(page_title="Defect Discovery Studio", page_icon=page_icon(), layout="wide")  # local: works offline
    navigation = st.navigation(build_navigation())
    get_store()  # opens the workspace (and marks runs whose worker died as failed) once
    restore_from_url()  # a reload or a shared link shows the project and run of its URL
    navigation.run()


main()
