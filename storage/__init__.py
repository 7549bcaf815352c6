"""Storage of a Studio workspace: SQLAlchemy models, migrations, the Store API and exports.

storage imports core's record types, never the other way round; it never imports streamlit.
"""

from storage.api import Store, open_workspace
from storage.records import *  # noqa: F401,F403

__all__ = ["Store", "open_workspace"]
