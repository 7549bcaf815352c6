"""Database engine for a workspace: URL choice, SQLite pragmas, Alembic migrations."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

#: Environment variable naming the workspace folder (SQLite file, crops, demo data); default ./workspace.
WORKSPACE_ENV = "STUDIO_WORKSPACE"
#: Environment variable naming any SQLAlchemy URL to use instead of the workspace's SQLite file.
DATABASE_URL_ENV = "STUDIO_DATABASE_URL"
#: File name of the default SQLite database inside a workspace folder.
SQLITE_FILE = "studio.sqlite"
#: Milliseconds a SQLite writer waits for another writer's lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def environment(environ: Mapping[str, str] | None = None) -> tuple[Path, str | None]:
    """(workspace folder, database URL or None) from $STUDIO_WORKSPACE and $STUDIO_DATABASE_URL.

    The one place the Studio reads them: a process entry (the app's get_store, the worker's main)
    calls it and passes the values down; storage itself never reads the environment.
    """
    environ = os.environ if environ is None else environ
    workspace = Path(environ.get(WORKSPACE_ENV, "").strip() or "workspace").expanduser().resolve()
    return workspace, environ.get(DATABASE_URL_ENV, "").strip() or None


def resolve_database_url(workspace: Path, database_url: str | None = None) -> str:
    """The URL to use: the given one, else the SQLite file in the workspace."""
    if database_url:
        return database_url
    return f"sqlite:///{(Path(workspace) / SQLITE_FILE).resolve().as_posix()}"


def _normalize_url(url: str) -> str:
    # Plain postgresql:// means psycopg2 to SQLAlchemy; psycopg (3) is what we install.
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def create_studio_engine(url: str) -> Engine:
    """An engine with the Studio's connection settings (SQLite: WAL, foreign keys, busy timeout)."""
    url = _normalize_url(url)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Take transaction control from the sqlite3 module so BEGIN IMMEDIATE can be issued.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if ":memory:" not in url and "mode=memory" not in url:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        # Writers take the write lock up front: a deferred transaction that reads and then
        # writes can fail with "database is locked" without waiting for the busy timeout.
        if connection.get_execution_options().get("studio_write"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")

    return engine


def alembic_config(engine: Engine | None = None, url: str | None = None):  # type: ignore[no-untyped-def]
    """An Alembic Config pointing at storage/migrations, usable without an alembic.ini."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", _normalize_url(url).replace("%", "%%"))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database schema to `revision` with Alembic, keeping existing data."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest revision shipped in storage/migrations."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head
