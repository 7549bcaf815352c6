"""The Store: the one object the app, the CLI and the job runner use (no SQL outside storage/).

`open_workspace(path)` returns a `Store`; every method is one unit of work (one session, one
transaction) and returns frozen records from storage.records, never ORM objects. The Store is a
thin front over the modules that hold each part:

- storage.workspace   engine, sessions, paths inside the workspace, PNG writing
- storage.projects    projects and their images
- storage.regions     regions (crops) of the images, versioned per image
- storage.maps        anomaly maps, MEBin binarizations (versioned) and threshold overrides
- storage.runs        run lifecycle and progress
- storage.results     a run's clusters and assignments, and the reads of them
- storage.image_classes  image-level classes: the regions' votes along the edits, fused
- storage.edits       the engineer's cluster edits, each with its apply/revert pair
- storage.history     the edit log: undo and redo
- storage.labels      labels and the labeled set
- storage.comparison  matching the clusters of two runs
"""

from __future__ import annotations

from pathlib import Path

from storage import db
from storage.comparison import ComparisonStore
from storage.edits import EditStore
from storage.history import HistoryStore
from storage.labels import LabelStore
from storage.projects import ProjectStore
from storage.records import display_name, palette_color
from storage.runs import RunStore

#: Environment variable naming the workspace folder when open_workspace is given only a URL.
WORKSPACE_ENV = db.WORKSPACE_ENV


class Store(ProjectStore, RunStore, EditStore, HistoryStore, LabelStore, ComparisonStore):
    """A workspace: one database plus a folder of crop and mask files (see the module list above)."""


def open_workspace(workspace: Path | str, database_url: str | None = None, *, migrate: bool = True) -> Store:
    """Open (creating if needed) a workspace folder and its database, upgraded to the newest schema.

    `workspace` is the folder holding crops, masks and (by default) studio.sqlite; a string
    containing "://" is taken as a database URL, with files under ./workspace. The database is
    `database_url`, else SQLite in the folder. The environment is read by the caller
    (`storage.db.environment`), never here.
    """
    if isinstance(workspace, str) and "://" in workspace:
        database_url = workspace
        workspace = "workspace"
    folder = Path(workspace).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    url = db.resolve_database_url(folder, database_url)
    engine = db.create_studio_engine(url)
    if migrate:
        db.upgrade(engine)
    return Store(folder, engine)


__all__ = ["Store", "open_workspace", "palette_color", "display_name", "WORKSPACE_ENV"]
