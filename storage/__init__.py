"""Storage of a Studio workspace: SQLAlchemy models, migrations, the Store API and exports.

storage imports core's record types, never the other way round; it never imports streamlit.
Entry point: `storage.open_workspace(path_or_url) -> Store` (see storage/api.py).
"""

from storage.api import Store, open_workspace
from storage.records import (
    NORMAL_CLASS,
    AssignedRegion,
    AssignmentInput,
    BinarizationInput,
    ClusterInfo,
    ClusterInput,
    ClusterMatch,
    EditConflict,
    EditInfo,
    ImageClass,
    ImageInfo,
    LabelInfo,
    MapInput,
    NothingToUndo,
    NotFound,
    Page,
    ProjectInfo,
    RegionChange,
    RegionInfo,
    RunInfo,
    StorageError,
)

__all__ = [
    "NORMAL_CLASS",
    "AssignedRegion",
    "AssignmentInput",
    "BinarizationInput",
    "ClusterInfo",
    "ClusterInput",
    "ClusterMatch",
    "EditConflict",
    "EditInfo",
    "ImageClass",
    "ImageInfo",
    "LabelInfo",
    "MapInput",
    "NothingToUndo",
    "NotFound",
    "Page",
    "ProjectInfo",
    "RegionChange",
    "RegionInfo",
    "RunInfo",
    "StorageError",
    "Store",
    "open_workspace",
]
