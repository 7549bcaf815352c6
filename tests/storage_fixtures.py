"""Fixtures of the storage tests: a fresh database per test on SQLite and on a real PostgreSQL.

PostgreSQL comes from $STUDIO_TEST_POSTGRES_URL (set by `source .ci/postgres.sh`), else a
throw-away server is started from the installed binaries (/usr/lib/postgresql/*/bin). Without
one the PostgreSQL cases are skipped with the reason, except under CI=true where they fail.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from core.imageio import write_image
from core.records import ImageRecord, Region
from storage.api import Store, open_workspace
from storage.records import AssignmentInput, ClusterInput

POSTGRES_ENV = "STUDIO_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


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


_SERVER: dict[str, object] = {}


def _admin_url() -> str:
    """Once per test process: the server's URL, or a skip/fail with the reason.

    Kept in a module global rather than a session fixture: the fixtures are imported into
    several test modules, and pytest would otherwise start one server per module.
    """
    if "url" in _SERVER:
        return str(_SERVER["url"])
    if "error" in _SERVER:
        _unavailable(str(_SERVER["error"]))
    url = os.environ.get(POSTGRES_ENV, "").strip()
    if not url:
        server = start_local_postgres()
        if server.error:
            _SERVER["error"] = server.error
            _unavailable(server.error)
        atexit.register(server.stop)
        url = server.url
    try:
        engine = sa.create_engine(url)
        with engine.connect() as connection:
            connection.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as error:  # noqa: BLE001 - any connection failure means no server
        _SERVER["error"] = f"cannot connect to {make_url(url).render_as_string(hide_password=True)}: {error}"
        _unavailable(str(_SERVER["error"]))
    _SERVER["url"] = url
    return url


@pytest.fixture()
def postgres_admin_url() -> str:
    """URL of a database on a live server through which test databases are created."""
    return _admin_url()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once on SQLite and once on PostgreSQL."""
    backend = request.param
    if backend == "sqlite":
        yield f"sqlite:///{(tmp_path / 'studio.sqlite').as_posix()}"
        return
    admin_url = request.getfixturevalue("postgres_admin_url")
    name = f"studio_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture()
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    opened = open_workspace(tmp_path / "workspace", database_url)
    yield opened
    opened.close()


# ---------------------------------------------------------------- data built by the tests


def make_dataset(root: Path, count: int = 6, size: int = 32) -> list[ImageRecord]:
    """Tiny images with known content; odd ones ground truth "scratch", even ones "dent"."""
    records = []
    for i in range(count):
        path = root / "test" / f"img_{i:02d}.png"
        image = np.full((size, size, 3), 10 * i, dtype=np.uint8)
        image[i % size, :, 0] = 255
        write_image(path, image)
        records.append(ImageRecord(path, f"test/img_{i:02d}.png", "unlabeled", "scratch" if i % 2 else "dent"))
    normal = root / "normal" / "ref.png"
    write_image(normal, np.zeros((size, size, 3), dtype=np.uint8))
    records.append(ImageRecord(normal, "normal/ref.png", "normal", None))
    return records


def make_regions(records: list[ImageRecord], per_image: int = 3, size: int = 32) -> list[Region]:
    """per_image regions per unlabeled image, each crop distinct so files can be compared."""
    rng = np.random.default_rng(7)
    regions = []
    for record in records:
        if record.role != "unlabeled":
            continue
        for index in range(per_image):
            side = 8 + 2 * index
            crop = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
            mask = np.zeros((side, side), dtype=np.uint8)
            mask[2:-2, 2:-2] = 255
            x0 = index * 6
            regions.append(
                Region(record.relpath, index, (x0, 1, x0 + side, 1 + side), crop, mask, int((side - 4) ** 2), 0.9 - 0.2 * index)
            )
    return regions


@dataclass
class Scenario:
    project_id: int
    run_id: int
    region_ids: list[int]  # in creation order
    clusters: dict[int, int]  # slot -> cluster id
    slots: dict[int, int]  # region id -> slot written
    records: list[ImageRecord]


def slot_of(position: int) -> int:
    """Slot a region gets by its creation order: 0 (normal) for every third, else 1 or 2."""
    return 0 if position % 3 == 2 else 1 + position % 2


def build_scenario(store: Store, root: Path, images: int = 6, per_image: int = 3) -> Scenario:
    """A project with images, regions and one finished run with 3 clusters (slot 0 normal).

    Embeddings of slot 1 form two well separated groups (by region index parity), so a split
    into 2 has a known answer; UMAP x/y and confidences are functions of the position.
    """
    records = make_dataset(root / "data", images)
    project = store.create_project("demo", root / "data", {"classes": 3})
    store.record_images(project.id, records)
    regions = store.record_regions(project.id, make_regions(records, per_image))
    run = store.start_run(project.id, "discover", {"k": 3})
    store.mark_running(run.id)
    clusters = [ClusterInput(0, "normal", is_normal=True), ClusterInput(1), ClusterInput(2, "dent")]
    assignments = []
    slots = {}
    for position, region in enumerate(regions):
        slot = slot_of(position)
        slots[region.id] = slot
        embedding = np.zeros(8, dtype=np.float32)
        embedding[slot * 2 + (region.index % 2 if slot == 1 else 0)] = 10.0
        embedding += np.float32(0.01 * position)
        assignments.append(
            AssignmentInput(region.id, slot, 0.5 + 0.01 * position, float(position), float(-position), embedding)
        )
    written = store.write_results(run.id, clusters, assignments)
    store.finish_run(run.id, metrics={"image": {"nmi": 0.5}})
    return Scenario(
        project.id, run.id, [r.id for r in regions], {c.slot: c.id for c in written}, slots, records
    )


def square_region(image: str, index: int, area: int, side: int = 8, x0: int = 0) -> Region:
    """A region of a given mask area (area 0: the whole-image placeholder MEBin leaves when it finds nothing)."""
    crop = np.full((side, side, 3), 40 + index, dtype=np.uint8)
    mask = np.zeros((side, side), dtype=np.uint8)
    mask.reshape(-1)[:area] = 255
    return Region(image, index, (x0, 0, x0 + side, side), crop, mask, int(area), 0.5)
