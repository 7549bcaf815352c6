"""Shared fixtures of the test suite and the `quick` marker of the local loop.

Fixtures (found by name, no import needed):
- `postgres_admin_url`: a live PostgreSQL server, once per test session: $STUDIO_TEST_POSTGRES_URL
  (set by `source .ci/postgres.sh`), else a throw-away server started from the installed binaries
  (/usr/lib/postgresql/*/bin). Without one the PostgreSQL cases are skipped with the reason,
  except under CI=true where they fail.
- `database_url`: an empty database per test, once on SQLite and once on PostgreSQL.
- `store`: a Store opened on that database.
- `workspace`, `filled`: an empty / a filled workspace the app's pages open; `browser`: Chromium.
- `postgres_url`: an empty database on the PostgreSQL server only (the job queue's distributed tests).

Data the tests build (tiny sets, regions, finished runs) lives in builders.py. `bash dev.sh test
-m quick` runs the modules of QUICK_MODULES below and does not even import the others; none of
them imports torch, timm or streamlit. The detection tests import torch inside their tests (the
`cpu` fixture); the MGViT, training and app modules still need torch or streamlit at import.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from storage.api import Store

POSTGRES_ENV = "STUDIO_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]

#: Modules of fast unit tests (tiny arrays, SQLite; no torch, no discovery run, no app, no
#: browser): `-m quick` selects their tests except those marked slow, browser or postgres.
QUICK_MODULES = frozenset({
    "test_clustering",
    "test_coco",
    "test_config",
    "test_dataset",
    "test_demo",
    "test_descriptors",
    "test_detection_import",
    "test_estimate",
    "test_fusion",
    "test_grouping",
    "test_house",
    "test_layering",
    "test_maps",
    "test_matching",
    "test_mebin",
    "test_metrics",
    "test_predict",
    "test_refine",
    "test_regions",
    "test_stages",
    "test_storage",
    "test_storage_export",
    "test_storage_fusion",
    "test_storage_records",
    "test_storage_states",
})


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under `-m quick` the other test modules hold no selected test: they are not even imported."""
    if config.getoption("markexpr", "") != "quick" or collection_path.suffix != ".py":
        return None
    if collection_path.name.startswith("test_") and collection_path.stem not in QUICK_MODULES:
        return True
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of QUICK_MODULES `quick` (before `-m` selects)."""
    for item in items:
        if item.path.stem not in QUICK_MODULES:
            continue
        if any(item.get_closest_marker(name) for name in ("slow", "browser", "postgres")):
            continue
        item.add_marker(pytest.mark.quick)


@pytest.fixture()
def cpu():  # type: ignore[no-untyped-def]
    """torch's CPU device; torch is imported by the tests that ask for it, not at collection."""
    import torch

    return torch.device("cpu")


# ---------------------------------------------------------------- PostgreSQL


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"PostgreSQL is required in CI but unavailable: {reason}")
    pytest.skip(f"no PostgreSQL server: {reason} (run `source .ci/postgres.sh` or install postgresql)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalServer:
    url: str
    bindir: Path | None = None
    datadir: Path | None = None
    error: str | None = None

    def stop(self) -> None:
        if self.bindir is None or self.datadir is None:
            return
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.datadir / "data"), "-m", "immediate", "stop"]),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.datadir, ignore_errors=True)


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def start_local_postgres() -> LocalServer:
    """Start a server from the installed binaries on a free port; error says why not."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: float(p.parent.parent.name))
    if not candidates:
        return LocalServer("", error="no PostgreSQL binaries under /usr/lib/postgresql")
    bindir = candidates[-1].parent
    datadir = Path(tempfile.mkdtemp(prefix="studio-pg-test."))
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
    port = _free_port()
    init = subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(datadir / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        capture_output=True,
        text=True,
    )
    if init.returncode != 0:
        return LocalServer("", error=f"initdb failed: {init.stderr.strip()[-300:]}")
    options = f"-h 127.0.0.1 -p {port} -k {datadir} -c fsync=off -c synchronous_commit=off -c max_connections=200"
    start = subprocess.run(
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(datadir / "data"), "-l", str(datadir / "server.log"), "-w", "-t", "60", "-o", options, "start"]),
        capture_output=True,
        text=True,
    )
    if start.returncode != 0:
        return LocalServer("", error=f"pg_ctl start failed: {start.stderr.strip()[-300:]}")
    return LocalServer(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", bindir, datadir)


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """URL of a database on a live server through which test databases are created (one per session)."""
    url = os.environ.get(POSTGRES_ENV, "").strip()
    server = None
    if not url:
        server = start_local_postgres()
        if server.error:
            _unavailable(server.error)
        url = server.url
    try:
        engine = sa.create_engine(url)
        with engine.connect() as connection:
            connection.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as error:  # noqa: BLE001 - any connection failure means no server
        if server is not None:
            server.stop()
        _unavailable(f"cannot connect to {make_url(url).render_as_string(hide_password=True)}: {error}")
    yield url
    if server is not None:
        server.stop()


@contextmanager
def fresh_postgres_database(admin_url: str, prefix: str = "studio_t") -> Iterator[str]:
    """A new empty database on the server of admin_url, dropped (its connections too) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once on SQLite and once on PostgreSQL."""
    backend = request.param
    if backend == "sqlite":
        yield f"sqlite:///{(tmp_path / 'studio.sqlite').as_posix()}"
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_admin_url")) as url:
        yield url


@pytest.fixture()
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """An empty database on the suite's PostgreSQL server only (tests of processes sharing it)."""
    with fresh_postgres_database(postgres_admin_url, "studio_jobs") as url:
        yield url


@pytest.fixture()
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    """A workspace opened on the test's database (SQLite or PostgreSQL)."""
    from storage.api import open_workspace

    opened = open_workspace(tmp_path / "workspace", database_url)
    yield opened
    opened.close()


# ------------------------------------------------------------------------------ the app's pages


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """An empty workspace the app opens through STUDIO_WORKSPACE (tiny demo size)."""
    from storage import open_workspace
    from webapp import intake
    from webapp import workspace as workspace_module

    folder = tmp_path / "workspace"
    monkeypatch.setenv(workspace_module.WORKSPACE_ENV, str(folder))
    monkeypatch.delenv(workspace_module.DATABASE_URL_ENV, raising=False)
    monkeypatch.setenv(intake.DEMO_SIZE_ENV, "tiny")
    opened = open_workspace(folder)
    yield opened
    opened.close()


@pytest.fixture()
def filled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A synthetic workspace (builders.fill_store) the app opens through STUDIO_WORKSPACE, fresh caches."""
    import streamlit as st

    from builders import fill_store

    result = fill_store(tmp_path)
    monkeypatch.setenv("STUDIO_WORKSPACE", str(result.store.workspace))
    monkeypatch.delenv("STUDIO_DATABASE_URL", raising=False)
    st.cache_resource.clear()
    st.cache_data.clear()
    yield result
    st.cache_resource.clear()
    result.store.close()


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    """Debian's Chromium driven by Playwright (test_browser.CHROMIUM and its arguments), once per module."""
    from playwright.sync_api import sync_playwright

    from test_browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()
