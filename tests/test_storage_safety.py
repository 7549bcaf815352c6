"""Storage safety: a run killed mid-write, stale-run recovery, concurrent edits, migrations."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from storage import db
from storage import models as m
from storage.api import Store, open_workspace
from storage.records import EditConflict

from builders import build_scenario

REPO = Path(__file__).resolve().parents[1]


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still runs; a zombie (killed, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):  # no /proc (macOS) or an unreadable line: kill(0) said it exists
        return True


CHILD = r"""
import sys, time
from pathlib import Path
import storage.api as api
import storage.workspace as workspace_module
from storage.records import AssignmentInput, ClusterInput

workspace, url, run_id, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
workspace_module.INSERT_CHUNK = 5  # several INSERT batches inside the one transaction
store = api.open_workspace(workspace, url, migrate=False)
store.mark_running(run_id)
store.update_progress(run_id, 0.9, "write results")
regions = [r.id for r in store.list_regions(store.get_run(run_id).project_id)]

def assignments():
    for n, region_id in enumerate(regions):
        if n == 12:  # 12 rows are written, uncommitted: now wait to be killed
            marker.write_text("partial")
            time.sleep(300)
        yield AssignmentInput(region_id, n % 2, 0.5)

store.write_results(run_id, [ClusterInput(0), ClusterInput(1)], assignments())
"""


def _assignment_rows(store: Store, run_id: int) -> int:
    with store.engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(m.Assignment).where(m.Assignment.run_id == run_id)).scalar_one()


def test_killed_run_is_failed_and_leaves_no_half_written_result(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path, images=6, per_image=3)  # 18 regions
    run = store.start_run(scenario.project_id, "discover")
    marker = tmp_path / "partial.txt"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store.workspace), store.engine.url.render_as_string(hide_password=False), str(run.id), str(marker)],
        cwd=REPO,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else "child died"
            assert time.monotonic() < deadline, "the child never reached the middle of its write"
            time.sleep(0.05)
        # Mid-transaction: the other process's rows are not visible to anyone else.
        assert store.get_run(run.id).status == "running"
        assert _assignment_rows(store, run.id) == 0 and store.list_clusters(run.id) == []
        assert store.recover_stale_runs(process_alive=pid_alive) == []  # its process is alive: not stale
    finally:
        child.kill()
        child.wait(timeout=30)
    recovered = store.recover_stale_runs(process_alive=pid_alive)
    assert recovered == [run.id]
    failed = store.get_run(run.id)
    assert failed.status == "failed" and f"pid {failed.pid}" in failed.message and "write results" in failed.message
    assert failed.finished_at is not None
    assert _assignment_rows(store, run.id) == 0 and store.list_clusters(run.id) == []
    assert store.recover_stale_runs(process_alive=pid_alive) == []  # idempotent
    # The earlier finished run is untouched and the database stays writable.
    assert store.get_run(scenario.run_id).status == "done"
    assert store.rename_cluster(scenario.clusters[1], "after the crash").name == "after the crash"


def test_recover_stale_runs_by_heartbeat_and_cancel(store: Store, tmp_path: Path) -> None:
    project = store.create_project("p", tmp_path)
    alive = store.start_run(project.id, "discover", status="running")  # this test process: alive
    queued = store.start_run(project.id, "discover")  # never launched: left alone
    remote = store.mark_running(store.start_run(project.id, "discover").id, pid=1)
    fresh_remote = store.mark_running(store.start_run(project.id, "discover").id, pid=1)
    cancelled = store.start_run(project.id, "discover", status="running")
    store.cancel_run(cancelled.id)
    with store.engine.begin() as connection:
        old = m.utcnow().replace(year=2000)
        connection.execute(sa.update(m.Run).where(m.Run.id == remote.id).values(host="other-host", heartbeat_at=old))
        connection.execute(sa.update(m.Run).where(m.Run.id == fresh_remote.id).values(host="other-host"))
        connection.execute(sa.update(m.Run).where(m.Run.id == cancelled.id).values(pid=2**22 + 12345))  # no such pid
    assert sorted(store.recover_stale_runs(stale_after_s=60, process_alive=pid_alive)) == sorted([remote.id, cancelled.id])
    assert store.get_run(remote.id).status == "failed" and "no progress report" in store.get_run(remote.id).message
    assert store.get_run(cancelled.id).status == "cancelled"
    for run in (alive, queued, fresh_remote):
        assert store.get_run(run.id).status == store.get_run(run.id).status != "failed"


# ---------------------------------------------------------------- concurrent edits


def test_two_tabs_editing_the_same_cluster_conflict(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path)
    other = open_workspace(store.workspace, store.engine.url.render_as_string(hide_password=False), migrate=False)
    try:
        cluster_id = scenario.clusters[1]
        seen_by_a = store.get_cluster(cluster_id)
        seen_by_b = other.get_cluster(cluster_id)
        other.rename_cluster(cluster_id, "B's name", expected_version=seen_by_b.version)
        with pytest.raises(EditConflict, match="changed by someone else"):
            store.rename_cluster(cluster_id, "A's name", expected_version=seen_by_a.version)
        with pytest.raises(EditConflict):
            store.move_regions(scenario.run_id, scenario.region_ids[:1], cluster_id, expected_version=seen_by_a.version)
        with pytest.raises(EditConflict):
            store.merge_clusters(cluster_id, [scenario.clusters[2]], expected_versions={cluster_id: seen_by_a.version})
        with pytest.raises(EditConflict):
            store.split_cluster(cluster_id, 2, expected_version=seen_by_a.version)
        assert store.get_cluster(cluster_id).name == "B's name"  # B's edit was not lost
        assert len(store.edit_history(scenario.run_id)) == 1
        # After reloading, A's edit goes through.
        assert store.rename_cluster(cluster_id, "A's name", expected_version=store.get_cluster(cluster_id).version).name == "A's name"
    finally:
        other.close()


def test_simultaneous_edits_exactly_one_wins(store: Store, tmp_path: Path) -> None:
    scenario = build_scenario(store, tmp_path)
    url = store.engine.url.render_as_string(hide_password=False)
    cluster_id = scenario.clusters[2]
    version = store.get_cluster(cluster_id).version
    tabs = [open_workspace(store.workspace, url, migrate=False) for _ in range(4)]
    barrier = threading.Barrier(len(tabs))
    outcomes: list[str] = []

    def edit(tab: Store, index: int) -> None:
        barrier.wait()
        try:
            tab.rename_cluster(cluster_id, f"tab {index}", expected_version=version)
            outcomes.append(f"ok {index}")
        except EditConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=edit, args=(tab, i)) for i, tab in enumerate(tabs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for tab in tabs:
        tab.close()
    winners = [o for o in outcomes if o.startswith("ok")]
    assert len(outcomes) == len(tabs) and len(winners) == 1
    assert store.get_cluster(cluster_id).name == f"tab {winners[0].split()[1]}"
    assert store.get_cluster(cluster_id).version == version + 1


def test_interleaved_write_is_detected_or_serialized(store: Store, tmp_path: Path) -> None:
    """PostgreSQL: a stale ORM write fails with EditConflict (version column). SQLite: writers
    are serialized (BEGIN IMMEDIATE), so the second waits and then sees the new version."""
    scenario = build_scenario(store, tmp_path)
    cluster_id = scenario.clusters[1]
    other = open_workspace(store.workspace, store.engine.url.render_as_string(hide_password=False), migrate=False)
    try:
        if store.dialect == "sqlite":
            result: list[str] = []
            with store._session(write=True) as session:
                cluster = session.get(m.Cluster, cluster_id)

                def second() -> None:
                    try:
                        other.rename_cluster(cluster_id, "second", expected_version=1)
                        result.append("ok")
                    except EditConflict:
                        result.append("conflict")

                thread = threading.Thread(target=second)
                thread.start()
                time.sleep(0.5)
                assert result == []  # waiting for the write lock
                cluster.name = "first"
                cluster.version += 1
            thread.join(timeout=60)
            assert result == ["conflict"] and store.get_cluster(cluster_id).name == "first"
        else:
            with pytest.raises(EditConflict):
                with store._session(write=True) as session:
                    cluster = session.get(m.Cluster, cluster_id)
                    other.rename_cluster(cluster_id, "second")  # commits in between
                    cluster.name = "first"
                    cluster.version += 1
            assert store.get_cluster(cluster_id).name == "second"
    finally:
        other.close()


# ---------------------------------------------------------------- migrations


def test_migrations_create_exactly_the_models(database_url: str) -> None:
    engine = db.create_studio_engine(database_url)
    assert db.current_revision(engine) is None
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision() == "0007"
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, m.Base.metadata) == []
    # And back down to nothing and up again.
    command.downgrade(db.alembic_config(engine), "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    db.upgrade(engine)
    assert "assignments" in sa.inspect(engine).get_table_names()
    engine.dispose()


# The tables as the first migration (0001) created them, for writing data the old way.
OLD = sa.MetaData()
OLD_PROJECTS = sa.Table("projects", OLD, sa.Column("id", sa.Integer), sa.Column("name", sa.String), sa.Column("data_root", sa.Text),
                        sa.Column("settings", sa.JSON), sa.Column("created_at", sa.DateTime(timezone=True)))  # fmt: skip
OLD_IMAGES = sa.Table("images", OLD, sa.Column("id", sa.Integer), sa.Column("project_id", sa.Integer), sa.Column("relpath", sa.Text),
                      sa.Column("role", sa.String))  # fmt: skip
OLD_REGIONS = sa.Table("regions", OLD, *(sa.Column(c, sa.Integer) for c in ("id", "project_id", "image_id", "index", "x0", "y0", "x1", "y1", "area")),
                       sa.Column("score", sa.Float))  # fmt: skip
OLD_RUNS = sa.Table("runs", OLD, sa.Column("id", sa.Integer), sa.Column("project_id", sa.Integer), sa.Column("kind", sa.String),
                    sa.Column("settings", sa.JSON), sa.Column("status", sa.String), sa.Column("progress", sa.Float),
                    sa.Column("created_at", sa.DateTime(timezone=True)), sa.Column("timings", sa.JSON), sa.Column("metrics", sa.JSON),
                    sa.Column("loss_history", sa.JSON), sa.Column("cancel_requested", sa.Boolean))  # fmt: skip
OLD_CLUSTERS = sa.Table("clusters", OLD, sa.Column("id", sa.Integer), sa.Column("run_id", sa.Integer), sa.Column("slot", sa.Integer),
                        sa.Column("name", sa.Text), sa.Column("color", sa.String), sa.Column("is_normal", sa.Boolean),
                        sa.Column("version", sa.Integer))  # fmt: skip
OLD_ASSIGNMENTS = sa.Table("assignments", OLD, *(sa.Column(c, sa.Integer) for c in ("id", "run_id", "region_id", "cluster_id")),
                           sa.Column("confidence", sa.Float), sa.Column("is_normal", sa.Boolean))  # fmt: skip


def test_upgrade_from_first_schema_keeps_data(database_url: str, tmp_path: Path) -> None:
    engine = db.create_studio_engine(database_url)
    db.upgrade(engine, "0001")
    assert "ix_assignments_cluster_confidence" not in {i["name"] for i in sa.inspect(engine).get_indexes("assignments")}
    now = m.utcnow()
    with engine.begin() as connection:
        connection.execute(OLD_PROJECTS.insert(), [{"id": 1, "name": "ancien «projet»", "data_root": "/data", "settings": {"k": 3}, "created_at": now}])
        connection.execute(OLD_IMAGES.insert(), [{"id": i, "project_id": 1, "relpath": f"img{i}.png", "role": "unlabeled"} for i in (1, 2)])
        connection.execute(OLD_REGIONS.insert(), [
            {"id": r, "project_id": 1, "image_id": 1 + r % 2, "index": r // 2, "x0": 0, "y0": 0, "x1": 4, "y1": 4, "area": 9, "score": 0.5}
            for r in range(1, 7)
        ])  # fmt: skip
        connection.execute(OLD_RUNS.insert(), [{"id": 1, "project_id": 1, "kind": "discover", "settings": {}, "status": "done", "progress": 1.0,
                                                "created_at": now, "timings": {}, "metrics": {"nmi": 0.7}, "loss_history": [], "cancel_requested": False}])  # fmt: skip
        connection.execute(OLD_CLUSTERS.insert(), [
            {"id": 1, "run_id": 1, "slot": 0, "name": None, "color": "#111111", "is_normal": True, "version": 1},
            {"id": 2, "run_id": 1, "slot": 1, "name": "rayure", "color": "#222222", "is_normal": False, "version": 3},
        ])  # fmt: skip
        connection.execute(OLD_ASSIGNMENTS.insert(), [
            {"id": r, "run_id": 1, "region_id": r, "cluster_id": 1 + r % 2, "confidence": r / 10, "is_normal": False} for r in range(1, 7)
        ])  # fmt: skip
    engine.dispose()
    upgraded = open_workspace(tmp_path / "ws", database_url)  # migrates 0001 -> head
    try:
        assert db.current_revision(upgraded.engine) == db.head_revision()
        assert "ix_assignments_cluster_confidence" in {i["name"] for i in sa.inspect(upgraded.engine).get_indexes("assignments")}
        assert [(p.name, p.settings) for p in upgraded.list_projects()] == [("ancien «projet»", {"k": 3})]
        assert upgraded.get_run(1).metrics == {"nmi": 0.7}
        clusters = upgraded.list_clusters(1)
        assert [(c.name, c.version, c.region_count) for c in clusters] == [(None, 1, 3), ("rayure", 3, 3)]
        page = upgraded.cluster_regions(2, limit=10, order="-confidence")
        assert [i.confidence for i in page.items] == [0.5, 0.3, 0.1]
        assert upgraded.rename_cluster(2, "scratch", expected_version=3).version == 4
        upgraded.undo(1)
        assert upgraded.get_cluster(2).name == "rayure"
    finally:
        upgraded.close()
