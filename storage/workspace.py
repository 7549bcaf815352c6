"""The base of the Store: one workspace folder plus its database engine.

Holds what every part of the Store shares: the session (one unit of work per call), paths
inside the workspace (stored relative so the folder can move), id lookups, timestamps read
back from SQLite, file hashing and the parallel PNG writer for crops and masks.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from core.imageio import write_image
from storage.records import EditConflict, NotFound

#: Rows per INSERT batch when writing many rows (regions, assignments) in one transaction.
INSERT_CHUNK = 2000
#: Ids per `IN (...)` list, well below every backend's bound-parameter limit.
IN_CHUNK = 500

T = TypeVar("T")


def aware(value: datetime | None) -> datetime | None:
    """A datetime with its UTC zone: SQLite hands back naive values for timezone-aware columns."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items (for IN lists and INSERT batches)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_pngs(files: Iterable[tuple[Path, np.ndarray]]) -> None:
    """Write many small PNGs; PNG encoding releases the GIL, so a few threads are faster."""
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        list(pool.map(lambda item: write_image(item[0], item[1]), files))


class Workspace:
    """A workspace: one database plus a folder of crop, mask and map files."""

    def __init__(self, workspace: Path, engine: Engine) -> None:
        self.workspace = Path(workspace)
        self.engine = engine
        self.url = engine.url.render_as_string(hide_password=True)
        self.dialect = engine.dialect.name
        # On SQLite, writers BEGIN IMMEDIATE (see storage.db); elsewhere the option is ignored.
        self._write_engine = engine.execution_options(studio_write=True)

    def __repr__(self) -> str:
        return f"Store({str(self.workspace)!r}, {self.url!r})"

    def close(self) -> None:
        """Dispose of the engine's connections."""
        self.engine.dispose()

    def project_dir(self, project_id: int) -> Path:
        """Folder of one project's files: workspace/projects/<id>."""
        return self.workspace / "projects" / str(project_id)

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        """One unit of work in one transaction; ORM version clashes become EditConflict."""
        session = Session(self._write_engine if write else self.engine, expire_on_commit=False)
        try:
            with session.begin():
                yield session
        except StaleDataError as error:
            raise EditConflict(
                "this cluster was changed by someone else since you loaded it; reload and try again"
            ) from error
        finally:
            session.close()

    def _relative(self, path: Path | str | None) -> str | None:
        """Store paths inside the workspace relative to it (the workspace can move)."""
        if path is None:
            return None
        path = Path(path)
        try:
            return path.resolve().relative_to(self.workspace).as_posix()
        except ValueError:
            return str(path)

    def _absolute(self, path: str | None) -> str | None:
        """The absolute path of a stored (possibly workspace-relative) path."""
        if path is None:
            return None
        candidate = Path(path)
        return str(candidate if candidate.is_absolute() else self.workspace / candidate)

    def _absolute_many(self, paths: Iterable[str | None]) -> list[str | None]:
        """_absolute of many stored paths at once (no Path object per path: 50,000 in milliseconds)."""
        prefix = str(self.workspace).rstrip(os.sep) + os.sep
        return [p if p is None or p.startswith(os.sep) else prefix + p for p in paths]

    @staticmethod
    def _get(session: Session, model: type, key: int, what: str) -> Any:
        """The row of `model` with primary key `key`; NotFound naming `what` when absent."""
        row = session.get(model, key)
        if row is None:
            raise NotFound(f"{what} {key} does not exist")
        return row
