"""The storage API used by the app, the CLI and the job runner (no SQL outside storage/).

`open_workspace(path)` returns a `Store`; every method is one unit of work (one session, one
transaction) and returns frozen records from storage.records, never ORM objects. Engineer
edits (rename, recolor, merge, split, move, mark normal, promote, carry names) are logged in
the edit log and can be undone and redone per run.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from core.imageio import write_image
from core.records import ImageRecord, Region
from storage import db
from storage import models as m
from storage.records import (
    CANCELLED,
    DONE,
    FAILED,
    NORMAL_CLASS,
    QUEUED,
    RUN_STATUSES,
    RUNNING,
    SOURCE_ENGINEER,
    SOURCE_GROUND_TRUTH,
    SOURCE_IMPORTED,
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

#: Environment variable naming the workspace folder when open_workspace is given only a URL.
WORKSPACE_ENV = "STUDIO_WORKSPACE"
#: Cluster colors by slot (D3 category10 then its light variants): distinct on a scatter plot.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip
#: Rows per INSERT batch when writing a run's assignments.
INSERT_CHUNK = 2000
LABEL_SOURCES = (SOURCE_ENGINEER, SOURCE_IMPORTED, SOURCE_GROUND_TRUTH)


def open_workspace(
    workspace: Path | str, database_url: str | None = None, *, migrate: bool = True
) -> "Store":
    """Open (creating if needed) a workspace folder and its database, upgraded to the newest schema.

    `workspace` is the folder holding crops, masks and (by default) studio.sqlite; a string
    containing "://" is taken as a database URL, with files under $STUDIO_WORKSPACE or ./workspace.
    The database is `database_url`, else $STUDIO_DATABASE_URL, else SQLite in the folder.
    """
    if isinstance(workspace, str) and "://" in workspace:
        database_url = workspace
        workspace = os.environ.get(WORKSPACE_ENV, "workspace")
    folder = Path(workspace).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    url = db.resolve_database_url(folder, database_url)
    engine = db.create_studio_engine(url)
    if migrate:
        db.upgrade(engine)
    return Store(folder, engine)


def palette_color(slot: int) -> str:
    """The default color of a cluster slot."""
    return PALETTE[slot % len(PALETTE)]


def display_name(name: str | None, slot: int) -> str:
    """A cluster's name, or "cluster <slot>" while it has none."""
    return name if name else f"cluster {slot}"


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone-aware columns; they were stored as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: it is gone for our purpose
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Store:
    """A workspace: one database plus a folder of crop and mask files."""

    def __init__(self, workspace: Path, engine: Engine) -> None:
        self.workspace = Path(workspace)
        self.engine = engine
        self.url = engine.url.render_as_string(hide_password=True)
        self.dialect = engine.dialect.name
        # On SQLite, writers BEGIN IMMEDIATE (see storage.db); elsewhere the option is ignored.
        self._write_engine = engine.execution_options(studio_write=True)

    def __repr__(self) -> str:
        return f"Store({str(self.workspace)!r}, {self.url!r})"

    # ------------------------------------------------------------ lifecycle
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
        if path is None:
            return None
        candidate = Path(path)
        return str(candidate if candidate.is_absolute() else self.workspace / candidate)

    # ------------------------------------------------------------ record conversion
    @staticmethod
    def _project_info(row: m.Project) -> ProjectInfo:
        return ProjectInfo(row.id, row.name, row.data_root, dict(row.settings or {}), _aware(row.created_at))  # type: ignore[arg-type]

    @staticmethod
    def _image_info(row: m.Image) -> ImageInfo:
        return ImageInfo(
            row.id, row.project_id, row.relpath, row.content_hash, row.file_size, row.width, row.height,
            row.role, row.gt_class,
        )  # fmt: skip

    def _region_info(self, row: m.Region, relpath: str) -> RegionInfo:
        return RegionInfo(
            id=row.id,
            image_id=row.image_id,
            image=relpath,
            index=row.index,
            box=(row.x0, row.y0, row.x1, row.y1),
            area=row.area,
            score=row.score,
            crop_path=self._absolute(row.crop_path),
            mask_path=self._absolute(row.mask_path),
        )

    @staticmethod
    def _run_info(row: m.Run) -> RunInfo:
        return RunInfo(
            id=row.id,
            project_id=row.project_id,
            kind=row.kind,
            settings=dict(row.settings or {}),
            status=row.status,
            progress=row.progress,
            stage=row.stage,
            message=row.message,
            created_at=_aware(row.created_at),  # type: ignore[arg-type]
            started_at=_aware(row.started_at),
            finished_at=_aware(row.finished_at),
            heartbeat_at=_aware(row.heartbeat_at),
            timings=dict(row.timings or {}),
            metrics=dict(row.metrics or {}),
            checkpoint_path=row.checkpoint_path,
            loss_history=list(row.loss_history or []),
            pid=row.pid,
            host=row.host,
            cancel_requested=bool(row.cancel_requested),
            parent_run_id=row.parent_run_id,
        )

    @staticmethod
    def _edit_info(row: m.Edit) -> EditInfo:
        return EditInfo(row.id, row.run_id, row.kind, dict(row.payload), row.state, row.author, _aware(row.created_at))  # type: ignore[arg-type]

    # ------------------------------------------------------------ lookups inside a session
    @staticmethod
    def _get(session: Session, model: type, key: int, what: str) -> Any:
        row = session.get(model, key)
        if row is None:
            raise NotFound(f"{what} {key} does not exist")
        return row

    # ------------------------------------------------------------ projects and images
    def create_project(self, name: str, data_root: Path | str, settings: dict[str, Any] | None = None) -> ProjectInfo:
        """Create a project for a data set folder; the name is stored exactly as given."""
        if not isinstance(name, str) or not name.strip():
            raise StorageError("a project needs a non-empty name")
        with self._session(write=True) as session:
            row = m.Project(name=name, data_root=str(data_root), settings=dict(settings or {}))
            session.add(row)
            session.flush()
            info = self._project_info(row)
        self.project_dir(info.id).mkdir(parents=True, exist_ok=True)
        return info

    def list_projects(self) -> list[ProjectInfo]:
        """All projects, oldest first."""
        with self._session() as session:
            return [self._project_info(r) for r in session.scalars(select(m.Project).order_by(m.Project.id))]

    def get_project(self, project_id: int) -> ProjectInfo:
        """One project; NotFound if absent."""
        with self._session() as session:
            return self._project_info(self._get(session, m.Project, project_id, "project"))

    def update_project_settings(self, project_id: int, settings: dict[str, Any]) -> ProjectInfo:
        """Replace a project's settings dict."""
        with self._session(write=True) as session:
            row = self._get(session, m.Project, project_id, "project")
            row.settings = dict(settings)
            session.flush()
            return self._project_info(row)

    def delete_project(self, project_id: int) -> None:
        """Delete a project with everything it holds (files of the workspace are kept)."""
        with self._session(write=True) as session:
            self._get(session, m.Project, project_id, "project")
            # Clusters point at each other and at runs; delete bottom-up so every backend agrees.
            run_ids = select(m.Run.id).where(m.Run.project_id == project_id)
            session.execute(delete(m.Assignment).where(m.Assignment.run_id.in_(run_ids)))
            session.execute(update(m.Cluster).where(m.Cluster.run_id.in_(run_ids)).values(merged_into_id=None))
            session.execute(delete(m.Cluster).where(m.Cluster.run_id.in_(run_ids)))
            session.execute(delete(m.Project).where(m.Project.id == project_id))

    def record_images(
        self, project_id: int, images: Sequence[ImageRecord], *, compute_hash: bool = True
    ) -> list[ImageInfo]:
        """Insert or update images by relpath (content hash = sha256 of the file, size, width, height)."""
        from core.imageio import image_size

        with self._session(write=True) as session:
            self._get(session, m.Project, project_id, "project")
            existing = {
                r.relpath: r for r in session.scalars(select(m.Image).where(m.Image.project_id == project_id))
            }
            out: list[m.Image] = []
            for record in images:
                row = existing.get(record.relpath)
                if row is None:
                    row = m.Image(project_id=project_id, relpath=record.relpath, role=record.role)
                    session.add(row)
                    existing[record.relpath] = row
                row.role = record.role
                row.gt_class = record.gt_class
                row.gt_mask_path = str(record.gt_mask_path) if record.gt_mask_path else None
                path = Path(record.path)
                if path.is_file():
                    row.file_size = path.stat().st_size
                    if compute_hash:
                        row.content_hash = _file_sha256(path)
                        try:
                            row.height, row.width = image_size(path)
                        except ValueError:
                            row.height = row.width = None
                out.append(row)
            session.flush()
            return [self._image_info(r) for r in out]

    def list_images(self, project_id: int, role: str | None = None) -> list[ImageInfo]:
        """Images of a project ordered by relpath, optionally only one role."""
        with self._session() as session:
            query = select(m.Image).where(m.Image.project_id == project_id)
            if role is not None:
                query = query.where(m.Image.role == role)
            return [self._image_info(r) for r in session.scalars(query.order_by(m.Image.relpath))]

    def get_image(self, project_id: int, relpath: str) -> ImageInfo:
        """One image by relpath; NotFound if absent."""
        with self._session() as session:
            row = self._image_row(session, project_id, relpath)
            return self._image_info(row)

    @staticmethod
    def _image_row(session: Session, project_id: int, relpath: str) -> m.Image:
        row = session.scalar(select(m.Image).where(m.Image.project_id == project_id, m.Image.relpath == relpath))
        if row is None:
            raise NotFound(f"image {relpath!r} is not recorded in project {project_id}")
        return row

    def _image_ids(self, session: Session, project_id: int, relpaths: Iterable[str]) -> dict[str, int]:
        wanted = set(relpaths)
        ids = dict(
            session.execute(select(m.Image.relpath, m.Image.id).where(m.Image.project_id == project_id)).all()
        )
        missing = sorted(wanted - ids.keys())
        if missing:
            raise NotFound(f"image {missing[0]!r} is not recorded in project {project_id} (record images first)")
        return ids

    # ------------------------------------------------------------ pipeline stage results
    def record_maps(self, project_id: int, maps: Sequence[MapInput]) -> int:
        """Record anomaly map files (one per image and source; re-recording replaces). Returns count."""
        with self._session(write=True) as session:
            ids = self._image_ids(session, project_id, (x.relpath for x in maps))
            for item in maps:
                image_id = ids[item.relpath]
                row = session.scalar(
                    select(m.AnomalyMap).where(m.AnomalyMap.image_id == image_id, m.AnomalyMap.source == item.source)
                )
                if row is None:
                    row = m.AnomalyMap(image_id=image_id, source=item.source)
                    session.add(row)
                row.path = self._relative(item.path) or ""
                row.stats = {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in item.stats.items()}
            return len(maps)

    def list_maps(self, project_id: int) -> list[dict[str, Any]]:
        """Map records: image, source, path (absolute), stats."""
        with self._session() as session:
            rows = session.execute(
                select(m.Image.relpath, m.AnomalyMap)
                .join(m.AnomalyMap, m.AnomalyMap.image_id == m.Image.id)
                .where(m.Image.project_id == project_id)
                .order_by(m.Image.relpath, m.AnomalyMap.source)
            ).all()
            return [
                {"id": r.id, "image": relpath, "source": r.source, "path": self._absolute(r.path), "stats": dict(r.stats)}
                for relpath, r in rows
            ]

    def record_binarizations(self, project_id: int, results: Sequence[BinarizationInput]) -> int:
        """Record MEBin results (threshold, count, counts per threshold, mask PNG). Returns count."""
        masks_dir = self.project_dir(project_id) / "masks" / "binarized"
        with self._session(write=True) as session:
            ids = self._image_ids(session, project_id, (x.relpath for x in results))
            image_ids = [ids[x.relpath] for x in results]
            session.execute(delete(m.Binarization).where(m.Binarization.image_id.in_(image_ids)))
            for item, image_id in zip(results, image_ids):
                map_id = session.scalar(
                    select(m.AnomalyMap.id).where(m.AnomalyMap.image_id == image_id).order_by(m.AnomalyMap.id.desc())
                )
                mask_path = None
                if item.mask is not None:
                    target = masks_dir / f"{image_id}.png"
                    write_image(target, np.asarray(item.mask, dtype=np.uint8))
                    mask_path = self._relative(target)
                session.add(
                    m.Binarization(
                        image_id=image_id,
                        map_id=map_id,
                        threshold=int(item.threshold),
                        num_anomalies=int(item.num_anomalies),
                        counts=[int(c) for c in item.counts],
                        mask_path=mask_path,
                        settings=dict(item.settings),
                    )
                )
            return len(results)

    def list_binarizations(self, project_id: int) -> list[dict[str, Any]]:
        """Binarization records: image, threshold, num_anomalies, counts, mask_path, settings."""
        with self._session() as session:
            rows = session.execute(
                select(m.Image.relpath, m.Binarization)
                .join(m.Binarization, m.Binarization.image_id == m.Image.id)
                .where(m.Image.project_id == project_id)
                .order_by(m.Image.relpath)
            ).all()
            return [
                {
                    "id": b.id,
                    "image": relpath,
                    "threshold": b.threshold,
                    "num_anomalies": b.num_anomalies,
                    "counts": list(b.counts),
                    "mask_path": self._absolute(b.mask_path),
                    "settings": dict(b.settings),
                }
                for relpath, b in rows
            ]

    def record_regions(self, project_id: int, regions: Sequence[Region], *, replace: bool = True) -> list[RegionInfo]:
        """Store regions and their crop/mask PNGs under projects/<id>/crops and masks.

        With replace=True the images' previous regions (and their assignments and labels) are
        removed first, so re-extraction does not leave stale crops; returned in input order.
        """
        crops_dir = self.project_dir(project_id) / "crops"
        masks_dir = self.project_dir(project_id) / "masks"
        regions = list(regions)
        with self._session(write=True) as session:
            self._get(session, m.Project, project_id, "project")
            ids = self._image_ids(session, project_id, (r.image for r in regions))
            if replace and regions:
                image_ids = sorted({ids[r.image] for r in regions})
                for start in range(0, len(image_ids), 500):
                    chunk = image_ids[start : start + 500]
                    session.execute(delete(m.Region).where(m.Region.image_id.in_(chunk)))
            rows = [
                {
                    "project_id": project_id,
                    "image_id": ids[r.image],
                    "index": int(r.index),
                    "x0": int(r.box[0]),
                    "y0": int(r.box[1]),
                    "x1": int(r.box[2]),
                    "y1": int(r.box[3]),
                    "area": int(r.area),
                    "score": float(r.score),
                }
                for r in regions
            ]
            new_ids: list[int] = []
            for start in range(0, len(rows), INSERT_CHUNK):
                result = session.execute(
                    insert(m.Region).returning(m.Region.id, sort_by_parameter_order=True), rows[start : start + INSERT_CHUNK]
                )
                new_ids.extend(result.scalars().all())
            crops_dir.mkdir(parents=True, exist_ok=True)
            masks_dir.mkdir(parents=True, exist_ok=True)

            def write_files(pair: tuple[Region, int]) -> None:
                region, region_id = pair
                write_image(crops_dir / f"{region_id}.png", region.image_crop)
                write_image(masks_dir / f"{region_id}.png", region.mask_crop)

            # PNG encoding releases the GIL: a few threads write thousands of small crops faster.
            with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
                list(pool.map(write_files, zip(regions, new_ids)))
            crops_rel, masks_rel = self._relative(crops_dir), self._relative(masks_dir)
            paths = [
                {"id": region_id, "crop_path": f"{crops_rel}/{region_id}.png", "mask_path": f"{masks_rel}/{region_id}.png"}
                for region_id in new_ids
            ]
            if paths:
                session.execute(update(m.Region), paths)
            by_id: dict[int, m.Region] = {}
            for start in range(0, len(new_ids), 500):
                by_id.update((r.id, r) for r in session.scalars(select(m.Region).where(m.Region.id.in_(new_ids[start : start + 500]))))
            return [self._region_info(by_id[i], r.image) for i, r in zip(new_ids, regions)]

    def list_regions(self, project_id: int) -> list[RegionInfo]:
        """All regions of a project ordered by image relpath and index."""
        with self._session() as session:
            rows = session.execute(
                select(m.Region, m.Image.relpath)
                .join(m.Image, m.Image.id == m.Region.image_id)
                .where(m.Region.project_id == project_id)
                .order_by(m.Image.relpath, m.Region.index)
            ).all()
            return [self._region_info(r, relpath) for r, relpath in rows]

    def get_region(self, region_id: int) -> RegionInfo:
        """One region; NotFound if absent."""
        with self._session() as session:
            row = self._get(session, m.Region, region_id, "region")
            relpath = session.scalar(select(m.Image.relpath).where(m.Image.id == row.image_id))
            return self._region_info(row, relpath)

    def region_ids_by_key(self, project_id: int) -> dict[str, int]:
        """Map Region.key ("<relpath>#<index>") -> region id."""
        with self._session() as session:
            rows = session.execute(
                select(m.Image.relpath, m.Region.index, m.Region.id)
                .join(m.Image, m.Image.id == m.Region.image_id)
                .where(m.Region.project_id == project_id)
            ).all()
            return {f"{relpath}#{index}": region_id for relpath, index, region_id in rows}

    # ------------------------------------------------------------ runs
    def start_run(
        self,
        project_id: int,
        kind: str,
        settings: dict[str, Any] | None = None,
        *,
        status: str = QUEUED,
        parent_run_id: int | None = None,
    ) -> RunInfo:
        """Create a run (queued, or running when the caller is the worker itself)."""
        if status not in (QUEUED, RUNNING):
            raise StorageError(f"a new run starts queued or running, not {status!r}")
        with self._session(write=True) as session:
            self._get(session, m.Project, project_id, "project")
            now = m.utcnow()
            row = m.Run(
                project_id=project_id,
                kind=kind,
                settings=dict(settings or {}),
                status=status,
                progress=0.0,
                parent_run_id=parent_run_id,
                heartbeat_at=now,
            )
            if status == RUNNING:
                row.started_at = now
                row.pid = os.getpid()
                row.host = socket.gethostname()
            session.add(row)
            session.flush()
            return self._run_info(row)

    def mark_running(self, run_id: int, pid: int | None = None) -> RunInfo:
        """The worker took the run: status running, its pid and host, started_at."""
        with self._session(write=True) as session:
            row = self._get(session, m.Run, run_id, "run")
            if row.status not in (QUEUED, RUNNING):
                raise StorageError(f"run {run_id} is {row.status}; it cannot start again")
            now = m.utcnow()
            row.status = RUNNING
            row.pid = os.getpid() if pid is None else int(pid)
            row.host = socket.gethostname()
            row.started_at = row.started_at or now
            row.heartbeat_at = now
            session.flush()
            return self._run_info(row)

    def update_progress(
        self,
        run_id: int,
        progress: float,
        stage: str | None = None,
        message: str | None = None,
        *,
        timings: dict[str, Any] | None = None,
        loss_history: list[Any] | None = None,
    ) -> bool:
        """Report progress (0..1) and a heartbeat; returns True when cancellation was requested."""
        with self._session(write=True) as session:
            row = self._get(session, m.Run, run_id, "run")
            row.progress = min(1.0, max(0.0, float(progress)))
            if stage is not None:
                row.stage = stage
            if message is not None:
                row.message = message
            if timings is not None:
                row.timings = {**(row.timings or {}), **timings}
            if loss_history is not None:
                row.loss_history = list(loss_history)
            row.heartbeat_at = m.utcnow()
            return bool(row.cancel_requested)

    def finish_run(
        self,
        run_id: int,
        *,
        metrics: dict[str, Any] | None = None,
        timings: dict[str, Any] | None = None,
        checkpoint_path: str | None = None,
        loss_history: list[Any] | None = None,
        message: str | None = None,
    ) -> RunInfo:
        """Mark a run done (progress 1)."""
        with self._session(write=True) as session:
            row = self._get(session, m.Run, run_id, "run")
            row.status = DONE
            row.progress = 1.0
            now = m.utcnow()
            row.finished_at = now
            row.heartbeat_at = now
            if metrics is not None:
                row.metrics = dict(metrics)
            if timings is not None:
                row.timings = {**(row.timings or {}), **timings}
            if checkpoint_path is not None:
                row.checkpoint_path = str(checkpoint_path)
            if loss_history is not None:
                row.loss_history = list(loss_history)
            if message is not None:
                row.message = message
            session.flush()
            return self._run_info(row)

    def _end_run(self, run_id: int, status: str, message: str) -> RunInfo:
        with self._session(write=True) as session:
            row = self._get(session, m.Run, run_id, "run")
            row.status = status
            row.message = message
            row.finished_at = m.utcnow()
            session.flush()
            return self._run_info(row)

    def fail_run(self, run_id: int, message: str) -> RunInfo:
        """Mark a run failed with a message for the engineer."""
        return self._end_run(run_id, FAILED, message)

    def cancel_run(self, run_id: int) -> RunInfo:
        """Ask a run to stop: a queued run is cancelled at once, a running one gets the flag set."""
        with self._session(write=True) as session:
            row = self._get(session, m.Run, run_id, "run")
            row.cancel_requested = True
            if row.status == QUEUED:
                row.status = CANCELLED
                row.message = "cancelled before it started"
                row.finished_at = m.utcnow()
            session.flush()
            return self._run_info(row)

    def mark_cancelled(self, run_id: int, message: str = "cancelled") -> RunInfo:
        """The worker stopped on request: status cancelled."""
        return self._end_run(run_id, CANCELLED, message)

    def is_cancel_requested(self, run_id: int) -> bool:
        """The flag the job process polls."""
        with self._session() as session:
            flag = session.scalar(select(m.Run.cancel_requested).where(m.Run.id == run_id))
            if flag is None:
                raise NotFound(f"run {run_id} does not exist")
            return bool(flag)

    def get_run(self, run_id: int) -> RunInfo:
        """One run; NotFound if absent."""
        with self._session() as session:
            return self._run_info(self._get(session, m.Run, run_id, "run"))

    def list_runs(self, project_id: int, kind: str | None = None, status: str | None = None) -> list[RunInfo]:
        """Runs of a project, newest first."""
        if status is not None and status not in RUN_STATUSES:
            raise StorageError(f"unknown run status {status!r}; expected one of {RUN_STATUSES}")
        with self._session() as session:
            query = select(m.Run).where(m.Run.project_id == project_id)
            if kind is not None:
                query = query.where(m.Run.kind == kind)
            if status is not None:
                query = query.where(m.Run.status == status)
            return [self._run_info(r) for r in session.scalars(query.order_by(m.Run.id.desc()))]

    def recover_stale_runs(self, stale_after_s: float = 600.0) -> list[int]:
        """Mark failed the queued/running runs whose process is gone; returns their ids.

        A run of this host whose pid no longer exists is stale at once; a run of another host
        (or without pid) is stale when its heartbeat is older than stale_after_s. A run whose
        cancellation was requested ends as cancelled instead.
        """
        host = socket.gethostname()
        now = m.utcnow()
        stale: dict[int, str] = {}
        # Look first without the write lock: on SQLite a live run may hold it for a while.
        with self._session() as session:
            for row in session.scalars(select(m.Run).where(m.Run.status.in_((QUEUED, RUNNING)))):
                if row.pid is not None and row.host == host:
                    if not _pid_alive(row.pid):
                        stale[row.id] = f"the run's process (pid {row.pid}) ended without finishing"
                elif row.status == RUNNING or row.pid is not None:
                    beat = _aware(row.heartbeat_at) or _aware(row.created_at) or now
                    if (now - beat) > timedelta(seconds=stale_after_s):
                        stale[row.id] = f"no progress report for over {int(stale_after_s)} s"
                # else: queued and never launched, still waiting for the job runner
        if not stale:
            return []
        recovered = []
        with self._session(write=True) as session:
            rows = session.scalars(select(m.Run).where(m.Run.id.in_(list(stale)), m.Run.status.in_((QUEUED, RUNNING))))
            for row in rows:
                reason = stale[row.id]
                if row.cancel_requested:
                    row.status, row.message = CANCELLED, f"cancelled ({reason})"
                else:
                    during = f" during stage {row.stage!r}" if row.stage else ""
                    row.status, row.message = FAILED, f"{reason}{during}; its partial results were discarded"
                row.finished_at = now
                recovered.append(row.id)
        return sorted(recovered)

    def write_results(
        self, run_id: int, clusters: Sequence[ClusterInput], assignments: Iterable[AssignmentInput]
    ) -> list[ClusterInfo]:
        """Write a run's clusters and region assignments atomically (all or nothing).

        Replaces any previous result of the run (and its edit history). Unknown slots or region
        ids of another project raise StorageError and nothing is written.
        """
        with self._session(write=True) as session:
            run = self._get(session, m.Run, run_id, "run")
            slots = [c.slot for c in clusters]
            if len(set(slots)) != len(slots):
                raise StorageError(f"run {run_id}: cluster slots must be unique, got {slots}")
            session.execute(delete(m.Edit).where(m.Edit.run_id == run_id))
            session.execute(delete(m.Assignment).where(m.Assignment.run_id == run_id))
            session.execute(update(m.Cluster).where(m.Cluster.run_id == run_id).values(merged_into_id=None))
            session.execute(delete(m.Cluster).where(m.Cluster.run_id == run_id))
            rows = []
            for c in clusters:
                row = m.Cluster(
                    run_id=run_id,
                    slot=int(c.slot),
                    name=c.name or None,
                    color=c.color or palette_color(int(c.slot)),
                    is_normal=bool(c.is_normal),
                    version=1,
                )
                session.add(row)
                rows.append(row)
            session.flush()
            by_slot = {r.slot: r.id for r in rows}
            project_regions = set(
                session.scalars(select(m.Region.id).where(m.Region.project_id == run.project_id)).all()
            )
            batch: list[dict[str, Any]] = []
            seen: set[int] = set()
            for a in assignments:
                if a.slot not in by_slot:
                    raise StorageError(f"run {run_id}: assignment of region {a.region_id} to unknown slot {a.slot}")
                if a.region_id not in project_regions:
                    raise StorageError(f"run {run_id}: region {a.region_id} is not a region of project {run.project_id}")
                if a.region_id in seen:
                    raise StorageError(f"run {run_id}: region {a.region_id} is assigned twice")
                seen.add(a.region_id)
                cluster_id = by_slot[a.slot]
                batch.append(
                    {
                        "run_id": run_id,
                        "region_id": int(a.region_id),
                        "cluster_id": cluster_id,
                        "original_cluster_id": cluster_id,
                        "confidence": float(a.confidence),
                        "umap_x": None if a.umap_x is None else float(a.umap_x),
                        "umap_y": None if a.umap_y is None else float(a.umap_y),
                        "embedding": None
                        if a.embedding is None
                        else np.asarray(a.embedding, dtype=np.float32).ravel().tobytes(),
                        "is_normal": False,
                    }
                )
                if len(batch) >= INSERT_CHUNK:
                    session.execute(insert(m.Assignment), batch)
                    batch = []
            if batch:
                session.execute(insert(m.Assignment), batch)
        return self.list_clusters(run_id)

    # ------------------------------------------------------------ queries for the app
    def _cluster_infos(self, session: Session, where: Any, assignment_where: Any) -> list[ClusterInfo]:
        counts = (
            select(
                m.Assignment.cluster_id.label("cluster_id"),
                func.count(m.Assignment.id).label("regions"),
                func.count(func.distinct(m.Region.image_id)).label("images"),
                func.avg(m.Assignment.confidence).label("mean_confidence"),
            )
            .join(m.Region, m.Region.id == m.Assignment.region_id)
            .where(assignment_where)
            .group_by(m.Assignment.cluster_id)
            .subquery()
        )
        rows = session.execute(
            select(m.Cluster, counts.c.regions, counts.c.images, counts.c.mean_confidence)
            .outerjoin(counts, counts.c.cluster_id == m.Cluster.id)
            .where(where)
            .order_by(m.Cluster.slot)
        ).all()
        return [
            ClusterInfo(
                id=c.id,
                run_id=c.run_id,
                slot=c.slot,
                name=c.name,
                display_name=display_name(c.name, c.slot),
                color=c.color,
                is_normal=bool(c.is_normal),
                merged_into_id=c.merged_into_id,
                version=c.version,
                region_count=int(regions or 0),
                image_count=int(images or 0),
                mean_confidence=None if mean is None else float(mean),
            )
            for c, regions, images, mean in rows
        ]

    def list_clusters(self, run_id: int, *, include_merged: bool = False) -> list[ClusterInfo]:
        """Clusters of a run with counts, ordered by slot (merged-away ones hidden by default)."""
        with self._session() as session:
            where = m.Cluster.run_id == run_id
            if not include_merged:
                where = where & m.Cluster.merged_into_id.is_(None)
            return self._cluster_infos(session, where, m.Assignment.run_id == run_id)

    def get_cluster(self, cluster_id: int) -> ClusterInfo:
        """One cluster with counts; NotFound if absent."""
        with self._session() as session:
            found = self._cluster_infos(session, m.Cluster.id == cluster_id, m.Assignment.cluster_id == cluster_id)
            if not found:
                raise NotFound(f"cluster {cluster_id} does not exist")
            return found[0]

    def _assigned_query(self):  # type: ignore[no-untyped-def]
        return (
            select(m.Assignment, m.Region, m.Image.relpath, m.Cluster.name)
            .join(m.Region, m.Region.id == m.Assignment.region_id)
            .join(m.Image, m.Image.id == m.Region.image_id)
            .join(m.Cluster, m.Cluster.id == m.Assignment.cluster_id)
        )

    def _assigned(self, a: m.Assignment, r: m.Region, relpath: str, cluster_name: str | None) -> AssignedRegion:
        return AssignedRegion(
            region=self._region_info(r, relpath),
            run_id=a.run_id,
            cluster_id=a.cluster_id,
            cluster_name=cluster_name,
            original_cluster_id=a.original_cluster_id,
            confidence=a.confidence,
            umap_x=a.umap_x,
            umap_y=a.umap_y,
            is_normal=bool(a.is_normal),
        )

    def cluster_regions(
        self, cluster_id: int, *, offset: int = 0, limit: int = 50, order: str = "confidence"
    ) -> Page:
        """One page of a cluster's regions; order "confidence" (lowest first: most doubtful),
        "-confidence", "score" (highest first) or "image"."""
        orders = {
            "confidence": (m.Assignment.confidence.asc(), m.Assignment.region_id),
            "-confidence": (m.Assignment.confidence.desc(), m.Assignment.region_id),
            "score": (m.Region.score.desc(), m.Assignment.region_id),
            "image": (m.Image.relpath, m.Region.index),
        }
        if order not in orders:
            raise StorageError(f"unknown order {order!r}; expected one of {sorted(orders)}")
        offset, limit = max(0, int(offset)), max(0, int(limit))
        with self._session() as session:
            self._get(session, m.Cluster, cluster_id, "cluster")
            total = session.scalar(select(func.count(m.Assignment.id)).where(m.Assignment.cluster_id == cluster_id))
            rows = session.execute(
                self._assigned_query()
                .where(m.Assignment.cluster_id == cluster_id)
                .order_by(*orders[order])
                .offset(offset)
                .limit(limit)
            ).all()
            return Page([self._assigned(*row) for row in rows], int(total or 0), offset, limit)

    def image_regions(self, project_id: int, relpath: str) -> list[RegionInfo]:
        """Regions of one image, largest first (by index)."""
        with self._session() as session:
            image = self._image_row(session, project_id, relpath)
            rows = session.scalars(select(m.Region).where(m.Region.image_id == image.id).order_by(m.Region.index))
            return [self._region_info(r, relpath) for r in rows]

    def image_assignments(self, run_id: int, relpath: str) -> list[AssignedRegion]:
        """Regions of one image with their assignments in a run."""
        with self._session() as session:
            run = self._get(session, m.Run, run_id, "run")
            image = self._image_row(session, run.project_id, relpath)
            rows = session.execute(
                self._assigned_query()
                .where(m.Assignment.run_id == run_id, m.Region.image_id == image.id)
                .order_by(m.Region.index)
            ).all()
            return [self._assigned(*row) for row in rows]

    def run_assignments(self, run_id: int) -> list[AssignedRegion]:
        """Every assigned region of a run, ordered by image relpath and region index."""
        with self._session() as session:
            self._get(session, m.Run, run_id, "run")
            rows = session.execute(
                self._assigned_query().where(m.Assignment.run_id == run_id).order_by(m.Image.relpath, m.Region.index)
            ).all()
            return [self._assigned(*row) for row in rows]

    def umap_points(self, run_id: int) -> pd.DataFrame:
        """One row per assigned region: region_id, image, x, y, cluster_id, cluster_name, color,
        slot, confidence, score, is_normal (region or its cluster normal), crop_path."""
        with self._session() as session:
            rows = session.execute(
                select(
                    m.Assignment.region_id,
                    m.Image.relpath,
                    m.Assignment.umap_x,
                    m.Assignment.umap_y,
                    m.Assignment.cluster_id,
                    m.Cluster.name,
                    m.Cluster.color,
                    m.Cluster.slot,
                    m.Assignment.confidence,
                    m.Region.score,
                    m.Assignment.is_normal,
                    m.Cluster.is_normal,
                    m.Region.crop_path,
                )
                .join(m.Region, m.Region.id == m.Assignment.region_id)
                .join(m.Image, m.Image.id == m.Region.image_id)
                .join(m.Cluster, m.Cluster.id == m.Assignment.cluster_id)
                .where(m.Assignment.run_id == run_id)
                .order_by(m.Assignment.region_id)
            ).all()
        columns = ["region_id", "image", "x", "y", "cluster_id", "name", "color", "slot", "confidence", "score",
                   "region_normal", "cluster_normal", "crop_path"]  # fmt: skip
        frame = pd.DataFrame(rows, columns=columns)
        frame["cluster_name"] = [display_name(row[5], row[7]) for row in rows]  # before pandas turns None into NaN
        frame["is_normal"] = frame["region_normal"].astype(bool) | frame["cluster_normal"].astype(bool)
        frame["crop_path"] = [self._absolute(row[12]) for row in rows]
        frame["x"] = frame["x"].astype(float)
        frame["y"] = frame["y"].astype(float)
        return frame[["region_id", "image", "x", "y", "cluster_id", "cluster_name", "color", "slot", "confidence",
                      "score", "is_normal", "crop_path"]]  # fmt: skip

    def embeddings(self, run_id: int, region_ids: Sequence[int] | None = None) -> tuple[list[int], np.ndarray]:
        """Stored embeddings (region ids, N x D float32) of a run's regions that have one."""
        with self._session() as session:
            query = select(m.Assignment.region_id, m.Assignment.embedding).where(
                m.Assignment.run_id == run_id, m.Assignment.embedding.is_not(None)
            )
            if region_ids is not None:
                query = query.where(m.Assignment.region_id.in_(list(region_ids)))
            rows = session.execute(query.order_by(m.Assignment.region_id)).all()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [r for r, _ in rows], np.stack([np.frombuffer(e, dtype=np.float32) for _, e in rows])

    def image_classes(self, run_id: int, tau: float = 100.0) -> list[ImageClass]:
        """Image-level classes from the current (edited) assignments by area-weighted fusion.

        Weights w = softmax(sqrt(area) / tau) over the image's regions (METHOD.md stage 6); each
        region puts w * confidence on its cluster (regions of normal clusters on NORMAL_CLASS;
        regions the engineer marked normal put w * 1 there). The largest fused score wins and is
        the confidence. Unlabeled-role images without regions are NORMAL_CLASS with confidence 1.
        """
        with self._session() as session:
            run = self._get(session, m.Run, run_id, "run")
            images = session.execute(
                select(m.Image.id, m.Image.relpath, m.Image.gt_class, m.Image.role)
                .where(m.Image.project_id == run.project_id)
                .order_by(m.Image.relpath)
            ).all()
            rows = session.execute(
                select(
                    m.Region.image_id,
                    m.Region.area,
                    m.Assignment.cluster_id,
                    m.Assignment.confidence,
                    m.Assignment.is_normal,
                    m.Cluster.is_normal,
                    m.Cluster.name,
                    m.Cluster.slot,
                )
                .join(m.Region, m.Region.id == m.Assignment.region_id)
                .join(m.Cluster, m.Cluster.id == m.Assignment.cluster_id)
                .where(m.Assignment.run_id == run_id)
            ).all()
        per_image: dict[int, list[Any]] = defaultdict(list)
        for row in rows:
            per_image[row[0]].append(row)
        out = []
        for image_id, relpath, gt_class, role in images:
            regions = per_image.get(image_id, [])
            if not regions:
                if role != "unlabeled":
                    continue
                out.append(ImageClass(image_id, relpath, None, NORMAL_CLASS, 1.0, 0, gt_class))
                continue
            logits = np.array([math.sqrt(max(r[1], 0)) / tau for r in regions])
            weights = np.exp(logits - logits.max())
            weights /= weights.sum()
            fused: dict[int | None, float] = defaultdict(float)
            names: dict[int | None, str] = {None: NORMAL_CLASS}
            for w, (_, _, cluster_id, conf, region_normal, cluster_normal, name, slot) in zip(weights, regions):
                key = None if (region_normal or cluster_normal) else cluster_id
                fused[key] += float(w) * (1.0 if region_normal else float(conf))
                if key is not None:
                    names[key] = display_name(name, slot)
            # Ties go to the defect class with the lowest id, then to normal: deterministic.
            winner = max(fused, key=lambda k: (round(fused[k], 12), k is not None, -(k or 0)))
            out.append(ImageClass(image_id, relpath, winner, names[winner], fused[winner], len(regions), gt_class))
        return out

    # ------------------------------------------------------------ engineer edits (logged, undoable)
    def _log(self, session: Session, run: m.Run, kind: str, payload: dict[str, Any], author: str | None) -> None:
        # A new edit after undos drops the redo branch, as in any editor.
        session.execute(
            update(m.Edit).where(m.Edit.run_id == run.id, m.Edit.state == "undone").values(state="discarded")
        )
        session.add(m.Edit(project_id=run.project_id, run_id=run.id, kind=kind, payload=payload, author=author))

    @staticmethod
    def _check_version(cluster: m.Cluster, expected: int | None) -> None:
        if expected is not None and cluster.version != expected:
            shown = display_name(cluster.name, cluster.slot)
            raise EditConflict(
                f"cluster {shown!r} was changed by someone else since you loaded it "
                f"(version {expected}, now {cluster.version}); reload and try again"
            )

    @staticmethod
    def _touch(cluster: m.Cluster) -> None:
        cluster.version = cluster.version + 1

    def _cluster_for_edit(self, session: Session, cluster_id: int, expected: int | None) -> m.Cluster:
        cluster = self._get(session, m.Cluster, cluster_id, "cluster")
        self._check_version(cluster, expected)
        if cluster.merged_into_id is not None:
            raise StorageError(f"cluster {cluster_id} was merged into cluster {cluster.merged_into_id}; edit that one")
        return cluster

    def _set_cluster_field(
        self, kind: str, field: str, cluster_id: int, value: Any, expected: int | None, author: str | None
    ) -> ClusterInfo:
        with self._session(write=True) as session:
            cluster = self._cluster_for_edit(session, cluster_id, expected)
            before = getattr(cluster, field)
            if before != value:
                setattr(cluster, field, value)
                self._touch(cluster)
                run = session.get(m.Run, cluster.run_id)
                payload = {"cluster_id": cluster_id, "field": field, "before": before, "after": value}
                self._log(session, run, kind, payload, author)  # type: ignore[arg-type]
        return self.get_cluster(cluster_id)

    def rename_cluster(
        self, cluster_id: int, name: str | None, *, expected_version: int | None = None, author: str | None = None
    ) -> ClusterInfo:
        """Rename a cluster (stored as given; None or "" clears the name)."""
        if name is not None and not isinstance(name, str):
            raise StorageError("a cluster name must be text")
        return self._set_cluster_field("rename", "name", cluster_id, name or None, expected_version, author)

    def recolor_cluster(
        self, cluster_id: int, color: str, *, expected_version: int | None = None, author: str | None = None
    ) -> ClusterInfo:
        """Change a cluster's color ("#rrggbb")."""
        text = str(color).strip()
        if not (len(text) in (4, 7) and text.startswith("#") and all(ch in "0123456789abcdefABCDEF" for ch in text[1:])):
            raise StorageError(f"color {color!r} is not a #rrggbb color")
        return self._set_cluster_field("recolor", "color", cluster_id, text.lower(), expected_version, author)

    def mark_cluster_normal(
        self, cluster_id: int, normal: bool = True, *, expected_version: int | None = None, author: str | None = None
    ) -> ClusterInfo:
        """Mark a whole cluster as normal / false detection (or clear it)."""
        return self._set_cluster_field("mark_cluster_normal", "is_normal", cluster_id, bool(normal), expected_version, author)

    def _move(self, session: Session, run_id: int, region_ids: Sequence[int], cluster_id: int) -> None:
        ids = list(region_ids)
        for start in range(0, len(ids), 500):
            session.execute(
                update(m.Assignment)
                .where(m.Assignment.run_id == run_id, m.Assignment.region_id.in_(ids[start : start + 500]))
                .values(cluster_id=cluster_id)
            )

    def _region_ids_of(self, session: Session, cluster_id: int) -> list[int]:
        return list(
            session.scalars(
                select(m.Assignment.region_id).where(m.Assignment.cluster_id == cluster_id).order_by(m.Assignment.region_id)
            )
        )

    def merge_clusters(
        self,
        target_id: int,
        source_ids: Sequence[int],
        *,
        expected_versions: dict[int, int] | None = None,
        author: str | None = None,
    ) -> ClusterInfo:
        """Move every region of the source clusters into the target; sources become merged_into target."""
        expected_versions = expected_versions or {}
        sources = [s for s in dict.fromkeys(source_ids) if s != target_id]
        if not sources:
            raise StorageError("choose at least one other cluster to merge")
        with self._session(write=True) as session:
            target = self._cluster_for_edit(session, target_id, expected_versions.get(target_id))
            moved = []
            for source_id in sources:
                source = self._cluster_for_edit(session, source_id, expected_versions.get(source_id))
                if source.run_id != target.run_id:
                    raise StorageError(f"clusters {target_id} and {source_id} belong to different runs")
                region_ids = self._region_ids_of(session, source_id)
                self._move(session, target.run_id, region_ids, target_id)
                source.merged_into_id = target_id
                self._touch(source)
                moved.append({"cluster_id": source_id, "region_ids": region_ids})
            self._touch(target)
            run = session.get(m.Run, target.run_id)
            self._log(session, run, "merge", {"target_id": target_id, "sources": moved}, author)  # type: ignore[arg-type]
        return self.get_cluster(target_id)

    def split_cluster(
        self,
        cluster_id: int,
        k: int,
        *,
        seed: int = 0,
        expected_version: int | None = None,
        author: str | None = None,
    ) -> list[ClusterInfo]:
        """Split a cluster into k by KMeans on the stored embeddings (UMAP x/y when none).

        The original cluster keeps the largest part; k - 1 new clusters get new slots. Returns all
        k. Undo removes the new clusters again.
        """
        from sklearn.cluster import KMeans

        k = int(k)
        if k < 2:
            raise StorageError("a split needs k >= 2")
        with self._session(write=True) as session:
            cluster = self._cluster_for_edit(session, cluster_id, expected_version)
            rows = session.execute(
                select(m.Assignment.region_id, m.Assignment.embedding, m.Assignment.umap_x, m.Assignment.umap_y)
                .where(m.Assignment.cluster_id == cluster_id)
                .order_by(m.Assignment.region_id)
            ).all()
            if len(rows) < k:
                raise StorageError(f"cluster {display_name(cluster.name, cluster.slot)!r} has {len(rows)} regions; cannot split into {k}")
            if all(r[1] is not None for r in rows):
                features = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            elif all(r[2] is not None and r[3] is not None for r in rows):
                features = np.array([[r[2], r[3]] for r in rows], dtype=np.float32)
            else:
                raise StorageError("this run stored neither embeddings nor UMAP coordinates for all regions; cannot split")
            labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features.astype(np.float64))
            region_ids = np.array([r[0] for r in rows])
            parts = sorted(range(k), key=lambda p: (-int((labels == p).sum()), p))
            next_slot = (session.scalar(select(func.max(m.Cluster.slot)).where(m.Cluster.run_id == cluster.run_id)) or 0) + 1
            logged = []
            for offset, part in enumerate(parts[1:]):
                slot = next_slot + offset
                new = m.Cluster(run_id=cluster.run_id, slot=slot, name=None, color=palette_color(slot), is_normal=False, version=1)
                session.add(new)
                session.flush()
                members = [int(x) for x in region_ids[labels == part]]
                self._move(session, cluster.run_id, members, new.id)
                logged.append({"cluster_id": new.id, "slot": slot, "color": new.color, "region_ids": members})
            self._touch(cluster)
            run = session.get(m.Run, cluster.run_id)
            self._log(session, run, "split", {"cluster_id": cluster_id, "k": k, "parts": logged}, author)  # type: ignore[arg-type]
            ids = [cluster_id] + [p["cluster_id"] for p in logged]
        return [self.get_cluster(i) for i in ids]

    def move_regions(
        self,
        run_id: int,
        region_ids: Sequence[int],
        target_cluster_id: int,
        *,
        expected_version: int | None = None,
        author: str | None = None,
    ) -> ClusterInfo:
        """Move regions to another cluster of the same run."""
        with self._session(write=True) as session:
            run = self._get(session, m.Run, run_id, "run")
            target = self._cluster_for_edit(session, target_cluster_id, expected_version)
            if target.run_id != run_id:
                raise StorageError(f"cluster {target_cluster_id} is not a cluster of run {run_id}")
            current = dict(
                session.execute(
                    select(m.Assignment.region_id, m.Assignment.cluster_id).where(
                        m.Assignment.run_id == run_id, m.Assignment.region_id.in_(list(region_ids))
                    )
                ).all()
            )
            missing = [r for r in region_ids if r not in current]
            if missing:
                raise NotFound(f"region {missing[0]} has no assignment in run {run_id}")
            moves = [{"region_id": r, "from": c} for r, c in current.items() if c != target_cluster_id]
            if not moves:
                return self._cluster_infos(session, m.Cluster.id == target_cluster_id, m.Assignment.cluster_id == target_cluster_id)[0]
            self._move(session, run_id, [mv["region_id"] for mv in moves], target_cluster_id)
            for source_id in {mv["from"] for mv in moves}:
                self._touch(session.get(m.Cluster, source_id))  # type: ignore[arg-type]
            self._touch(target)
            self._log(session, run, "move", {"target_id": target_cluster_id, "moves": moves}, author)
        return self.get_cluster(target_cluster_id)

    def mark_regions_normal(
        self, run_id: int, region_ids: Sequence[int], normal: bool = True, *, author: str | None = None
    ) -> int:
        """Mark regions as normal / false detection (or clear the mark). Returns count changed."""
        with self._session(write=True) as session:
            run = self._get(session, m.Run, run_id, "run")
            rows = session.execute(
                select(m.Assignment.region_id, m.Assignment.cluster_id).where(
                    m.Assignment.run_id == run_id,
                    m.Assignment.region_id.in_(list(region_ids)),
                    m.Assignment.is_normal.is_(not normal),
                )
            ).all()
            changed = sorted(r[0] for r in rows)
            if changed:
                self._set_region_normal(session, run_id, changed, bool(normal))
                for cluster_id in {r[1] for r in rows}:
                    self._touch(session.get(m.Cluster, cluster_id))  # type: ignore[arg-type]
                self._log(session, run, "mark_regions_normal", {"region_ids": changed, "after": bool(normal)}, author)
            return len(changed)

    def _set_region_normal(self, session: Session, run_id: int, region_ids: Sequence[int], value: bool) -> None:
        ids = list(region_ids)
        for start in range(0, len(ids), 500):
            session.execute(
                update(m.Assignment)
                .where(m.Assignment.run_id == run_id, m.Assignment.region_id.in_(ids[start : start + 500]))
                .values(is_normal=value)
            )

    def _apply_labels(
        self, session: Session, project_id: int, labels: dict[int, str | None], source: str, author: str | None
    ) -> None:
        """Set (or with None remove) one label per region for one source."""
        ids = list(labels)
        existing: dict[int, m.Label] = {}
        for start in range(0, len(ids), 500):
            for row in session.scalars(
                select(m.Label).where(m.Label.source == source, m.Label.region_id.in_(ids[start : start + 500]))
            ):
                existing[row.region_id] = row
        now = m.utcnow()
        for region_id, class_name in labels.items():
            row = existing.get(region_id)
            if class_name is None:
                if row is not None:
                    session.delete(row)
            elif row is None:
                session.add(
                    m.Label(project_id=project_id, region_id=region_id, class_name=class_name, source=source, author=author, created_at=now)
                )
            else:
                row.class_name, row.author, row.created_at = class_name, author, now

    def promote_to_labels(
        self, run_id: int, cluster_ids: Sequence[int] | None = None, *, author: str | None = None
    ) -> int:
        """Turn named clusters into engineer labels (region -> cluster name): the labeled set of
        the next run. Normal clusters and normal-marked regions are skipped. Returns label count."""
        with self._session(write=True) as session:
            run = self._get(session, m.Run, run_id, "run")
            query = (
                select(m.Assignment.region_id, m.Cluster.name)
                .join(m.Cluster, m.Cluster.id == m.Assignment.cluster_id)
                .where(
                    m.Assignment.run_id == run_id,
                    m.Assignment.is_normal.is_(False),
                    m.Cluster.is_normal.is_(False),
                    m.Cluster.name.is_not(None),
                    m.Cluster.merged_into_id.is_(None),
                )
            )
            if cluster_ids is not None:
                query = query.where(m.Cluster.id.in_(list(cluster_ids)))
            wanted = dict(session.execute(query).all())
            if not wanted:
                return 0
            before: dict[int, str] = {}
            ids = list(wanted)
            for start in range(0, len(ids), 500):
                before.update(
                    session.execute(
                        select(m.Label.region_id, m.Label.class_name).where(
                            m.Label.source == SOURCE_ENGINEER, m.Label.region_id.in_(ids[start : start + 500])
                        )
                    ).all()
                )
            changes = [
                {"region_id": r, "before": before.get(r), "after": name} for r, name in wanted.items() if before.get(r) != name
            ]
            self._apply_labels(session, run.project_id, dict(wanted), SOURCE_ENGINEER, author)
            self._log(session, run, "promote", {"changes": changes}, author)
            return len(wanted)

    def carry_over_names(self, from_run_id: int, to_run_id: int, *, author: str | None = None) -> list[ClusterMatch]:
        """Give to_run's unnamed clusters the names (and normal flags) of their matches in from_run."""
        matches = self.match_clusters(from_run_id, to_run_id)
        with self._session(write=True) as session:
            run = self._get(session, m.Run, to_run_id, "run")
            changes = []
            for match in matches:
                source = session.get(m.Cluster, match.cluster_a_id)
                target = session.get(m.Cluster, match.cluster_b_id)
                assert source is not None and target is not None
                if target.name is not None or (source.name is None and not source.is_normal):
                    continue
                changes.append(
                    {
                        "cluster_id": target.id,
                        "name_before": target.name,
                        "name_after": source.name,
                        "normal_before": bool(target.is_normal),
                        "normal_after": bool(target.is_normal or source.is_normal),
                    }
                )
                target.name = source.name
                target.is_normal = bool(target.is_normal or source.is_normal)
                self._touch(target)
            if changes:
                self._log(session, run, "carry_names", {"from_run_id": from_run_id, "changes": changes}, author)
        return matches

    def _apply_edit(self, session: Session, edit: m.Edit, forward: bool) -> None:
        """Redo (forward) or undo one logged edit."""
        p = edit.payload
        run_id = edit.run_id
        touched: set[int] = set()
        if edit.kind in ("rename", "recolor", "mark_cluster_normal"):
            cluster = session.get(m.Cluster, p["cluster_id"])
            setattr(cluster, p["field"], p["after"] if forward else p["before"])
            touched.add(p["cluster_id"])
        elif edit.kind == "merge":
            for source in p["sources"]:
                cluster = session.get(m.Cluster, source["cluster_id"])
                assert cluster is not None
                cluster.merged_into_id = p["target_id"] if forward else None
                self._move(session, run_id, source["region_ids"], p["target_id"] if forward else source["cluster_id"])  # type: ignore[arg-type]
                touched.add(source["cluster_id"])
            touched.add(p["target_id"])
        elif edit.kind == "split":
            # Undo removes the new clusters; redo recreates them with the same ids, so later
            # edits in the log that name them still apply.
            for part in p["parts"]:
                if forward:
                    session.add(
                        m.Cluster(id=part["cluster_id"], run_id=run_id, slot=part["slot"], name=None, color=part["color"], is_normal=False, version=1)
                    )
                    session.flush()
                    self._move(session, run_id, part["region_ids"], part["cluster_id"])  # type: ignore[arg-type]
                else:
                    self._move(session, run_id, part["region_ids"], p["cluster_id"])  # type: ignore[arg-type]
                    session.execute(delete(m.Cluster).where(m.Cluster.id == part["cluster_id"]))
            touched.add(p["cluster_id"])
        elif edit.kind == "move":
            if forward:
                self._move(session, run_id, [mv["region_id"] for mv in p["moves"]], p["target_id"])  # type: ignore[arg-type]
            else:
                by_source: dict[int, list[int]] = defaultdict(list)
                for mv in p["moves"]:
                    by_source[mv["from"]].append(mv["region_id"])
                for source_id, ids in by_source.items():
                    self._move(session, run_id, ids, source_id)  # type: ignore[arg-type]
            touched.update(mv["from"] for mv in p["moves"])
            touched.add(p["target_id"])
        elif edit.kind == "mark_regions_normal":
            value = p["after"] if forward else not p["after"]
            self._set_region_normal(session, run_id, p["region_ids"], value)  # type: ignore[arg-type]
            touched.update(
                session.scalars(
                    select(m.Assignment.cluster_id).where(
                        m.Assignment.run_id == run_id, m.Assignment.region_id.in_(p["region_ids"])
                    )
                )
            )
        elif edit.kind == "promote":
            key = "after" if forward else "before"
            self._apply_labels(
                session, edit.project_id, {c["region_id"]: c[key] for c in p["changes"]}, SOURCE_ENGINEER, edit.author
            )
        elif edit.kind == "carry_names":
            for change in p["changes"]:
                cluster = session.get(m.Cluster, change["cluster_id"])
                assert cluster is not None
                cluster.name = change["name_after" if forward else "name_before"]
                cluster.is_normal = change["normal_after" if forward else "normal_before"]
                touched.add(change["cluster_id"])
        else:  # pragma: no cover - a kind written by a newer version
            raise StorageError(f"edit {edit.id} of unknown kind {edit.kind!r} cannot be replayed")
        for cluster_id in touched:
            cluster = session.get(m.Cluster, cluster_id)
            if cluster is not None:
                self._touch(cluster)

    def undo(self, run_id: int) -> EditInfo:
        """Revert the newest done edit of a run; NothingToUndo when there is none."""
        with self._session(write=True) as session:
            edit = session.scalar(
                select(m.Edit).where(m.Edit.run_id == run_id, m.Edit.state == "done").order_by(m.Edit.id.desc()).limit(1)
            )
            if edit is None:
                raise NothingToUndo(f"nothing to undo in run {run_id}")
            self._apply_edit(session, edit, forward=False)
            edit.state = "undone"
            session.flush()
            return self._edit_info(edit)

    def redo(self, run_id: int) -> EditInfo:
        """Re-apply the edit undone last; NothingToUndo when there is none."""
        with self._session(write=True) as session:
            edit = session.scalar(
                select(m.Edit).where(m.Edit.run_id == run_id, m.Edit.state == "undone").order_by(m.Edit.id.asc()).limit(1)
            )
            if edit is None:
                raise NothingToUndo(f"nothing to redo in run {run_id}")
            self._apply_edit(session, edit, forward=True)
            edit.state = "done"
            session.flush()
            return self._edit_info(edit)

    def can_undo(self, run_id: int) -> bool:
        """Whether undo(run_id) has an edit to revert."""
        with self._session() as session:
            return session.scalar(select(func.count(m.Edit.id)).where(m.Edit.run_id == run_id, m.Edit.state == "done")) > 0  # type: ignore[operator]

    def can_redo(self, run_id: int) -> bool:
        """Whether redo(run_id) has an undone edit to re-apply."""
        with self._session() as session:
            return session.scalar(select(func.count(m.Edit.id)).where(m.Edit.run_id == run_id, m.Edit.state == "undone")) > 0  # type: ignore[operator]

    def edit_history(self, run_id: int) -> list[EditInfo]:
        """The run's edit log, oldest first."""
        with self._session() as session:
            return [self._edit_info(e) for e in session.scalars(select(m.Edit).where(m.Edit.run_id == run_id).order_by(m.Edit.id))]

    # ------------------------------------------------------------ labels
    def set_labels(
        self, project_id: int, labels: dict[int, str], source: str = SOURCE_IMPORTED, *, author: str | None = None
    ) -> int:
        """Insert or replace labels region id -> class name for one source. Returns count."""
        if source not in LABEL_SOURCES:
            raise StorageError(f"unknown label source {source!r}; expected one of {LABEL_SOURCES}")
        with self._session(write=True) as session:
            self._get(session, m.Project, project_id, "project")
            known = set(session.scalars(select(m.Region.id).where(m.Region.project_id == project_id)))
            unknown = sorted(set(labels) - known)
            if unknown:
                raise NotFound(f"region {unknown[0]} is not a region of project {project_id}")
            self._apply_labels(session, project_id, dict(labels), source, author)
            return len(labels)

    def list_labels(self, project_id: int, source: str | None = None) -> list[LabelInfo]:
        """Labels of a project, by region id."""
        with self._session() as session:
            query = select(m.Label).where(m.Label.project_id == project_id)
            if source is not None:
                query = query.where(m.Label.source == source)
            return [
                LabelInfo(r.id, r.region_id, r.class_name, r.source, r.author, _aware(r.created_at))  # type: ignore[arg-type]
                for r in session.scalars(query.order_by(m.Label.region_id, m.Label.source))
            ]

    def labeled_set(self, project_id: int) -> dict[int, str]:
        """region id -> class name for training: engineer labels win over imported ones
        (ground-truth labels are for metrics and never included)."""
        out: dict[int, str] = {}
        for label in self.list_labels(project_id, SOURCE_IMPORTED):
            out[label.region_id] = label.class_name
        for label in self.list_labels(project_id, SOURCE_ENGINEER):
            out[label.region_id] = label.class_name
        return out

    # ------------------------------------------------------------ run comparison
    def _run_clusters(self, session: Session, run_id: int) -> dict[int, int]:
        return dict(
            session.execute(select(m.Assignment.region_id, m.Assignment.cluster_id).where(m.Assignment.run_id == run_id)).all()
        )

    def match_clusters(self, run_a: int, run_b: int) -> list[ClusterMatch]:
        """Match clusters across two runs of a project by shared regions (Hungarian on overlap)."""
        from scipy.optimize import linear_sum_assignment

        with self._session() as session:
            self._get(session, m.Run, run_a, "run")
            self._get(session, m.Run, run_b, "run")
            a, b = self._run_clusters(session, run_a), self._run_clusters(session, run_b)
        shared = sorted(a.keys() & b.keys())
        if not shared:
            return []
        a_ids = sorted({a[r] for r in shared})
        b_ids = sorted({b[r] for r in shared})
        ai = {c: i for i, c in enumerate(a_ids)}
        bi = {c: i for i, c in enumerate(b_ids)}
        overlap = np.zeros((len(a_ids), len(b_ids)), dtype=np.int64)
        for r in shared:
            overlap[ai[a[r]], bi[b[r]]] += 1
        rows, cols = linear_sum_assignment(overlap, maximize=True)
        return [
            ClusterMatch(a_ids[i], b_ids[j], int(overlap[i, j]))
            for i, j in sorted(zip(rows, cols), key=lambda ij: (-overlap[ij], a_ids[ij[0]]))
            if overlap[i, j] > 0
        ]

    def changed_regions(self, run_a: int, run_b: int) -> list[RegionChange]:
        """Regions whose cluster in run_b is not the match of their cluster in run_a."""
        matched = {x.cluster_a_id: x.cluster_b_id for x in self.match_clusters(run_a, run_b)}
        with self._session() as session:
            a, b = self._run_clusters(session, run_a), self._run_clusters(session, run_b)
            names = {
                c.id: display_name(c.name, c.slot)
                for c in session.scalars(select(m.Cluster).where(m.Cluster.run_id.in_((run_a, run_b))))
            }
            changed = sorted(r for r in a.keys() & b.keys() if matched.get(a[r]) != b[r])
            images = {}
            for start in range(0, len(changed), 500):
                images.update(
                    session.execute(
                        select(m.Region.id, m.Image.relpath)
                        .join(m.Image, m.Image.id == m.Region.image_id)
                        .where(m.Region.id.in_(changed[start : start + 500]))
                    ).all()
                )
        return [RegionChange(r, images[r], a[r], names[a[r]], b[r], names[b[r]]) for r in changed]


__all__ = [
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
    "NotFound",
    "NothingToUndo",
    "Page",
    "ProjectInfo",
    "RegionChange",
    "RegionInfo",
    "RunInfo",
    "StorageError",
    "Store",
    "open_workspace",
    "palette_color",
    "display_name",
]
