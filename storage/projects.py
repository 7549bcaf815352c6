"""Projects and their images: create, list, settings, delete; images recorded by relpath."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.records import ImageRecord
from storage import models as m
from storage.records import ImageInfo, NotFound, ProjectInfo, StorageError
from storage.workspace import Workspace, aware, file_sha256


def project_info(row: m.Project) -> ProjectInfo:
    """The record of a project row."""
    return ProjectInfo(row.id, row.name, row.data_root, dict(row.settings or {}), aware(row.created_at))  # type: ignore[arg-type]


def image_info(row: m.Image) -> ImageInfo:
    """The record of an image row."""
    return ImageInfo(
        row.id, row.project_id, row.relpath, row.content_hash, row.file_size, row.width, row.height,
        row.role, row.gt_class,
    )  # fmt: skip


def image_row(session: Session, project_id: int, relpath: str) -> m.Image:
    """The image row of a relpath in a project; NotFound when it is not recorded."""
    row = session.scalar(select(m.Image).where(m.Image.project_id == project_id, m.Image.relpath == relpath))
    if row is None:
        raise NotFound(f"image {relpath!r} is not recorded in project {project_id}")
    return row


def image_ids(session: Session, project_id: int, relpaths: Iterable[str]) -> dict[str, int]:
    """relpath -> image id of a project's images; NotFound when one of `relpaths` is not recorded."""
    wanted = set(relpaths)
    ids = dict(session.execute(select(m.Image.relpath, m.Image.id).where(m.Image.project_id == project_id)).all())
    missing = sorted(wanted - ids.keys())
    if missing:
        raise NotFound(f"image {missing[0]!r} is not recorded in project {project_id} (record images first)")
    return ids


class ProjectStore(Workspace):
    """Projects (a data set folder with settings) and the images recorded in them."""

    def create_project(self, name: str, data_root: Path | str, settings: dict[str, Any] | None = None) -> ProjectInfo:
        """Create a project for a data set folder; the name is stored exactly as given."""
        if not isinstance(name, str) or not name.strip():
            raise StorageError("a project needs a non-empty name")
        with self._session(write=True) as session:
            row = m.Project(name=name, data_root=str(data_root), settings=dict(settings or {}))
            session.add(row)
            session.flush()
            info = project_info(row)
        self.project_dir(info.id).mkdir(parents=True, exist_ok=True)
        return info

    def list_projects(self) -> list[ProjectInfo]:
        """All projects, oldest first."""
        with self._session() as session:
            return [project_info(r) for r in session.scalars(select(m.Project).order_by(m.Project.id))]

    def get_project(self, project_id: int) -> ProjectInfo:
        """One project; NotFound if absent."""
        with self._session() as session:
            return project_info(self._get(session, m.Project, project_id, "project"))

    def update_project_settings(self, project_id: int, settings: dict[str, Any]) -> ProjectInfo:
        """Replace a project's settings dict."""
        with self._session(write=True) as session:
            row = self._get(session, m.Project, project_id, "project")
            row.settings = dict(settings)
            session.flush()
            return project_info(row)

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
                        row.content_hash = file_sha256(path)
                        try:
                            row.height, row.width = image_size(path)
                        except ValueError:
                            row.height = row.width = None
                out.append(row)
            session.flush()
            return [image_info(r) for r in out]

    def list_images(self, project_id: int, role: str | None = None) -> list[ImageInfo]:
        """Images of a project ordered by relpath, optionally only one role."""
        with self._session() as session:
            query = select(m.Image).where(m.Image.project_id == project_id)
            if role is not None:
                query = query.where(m.Image.role == role)
            return [image_info(r) for r in session.scalars(query.order_by(m.Image.relpath))]

    def project_counts(self, project_id: int) -> dict[str, dict[str, int] | int]:
        """What the Projects page tells of a project, counted in the database (a list of 25,000 images
        and 50,000 regions took seconds): images per role, per size ('W x H') and per ground-truth
        class of the images to inspect, anomaly maps, current regions."""
        with self._session() as session:
            connection = session.connection()
            image = m.Image.project_id == project_id

            def grouped(*columns: Any, where: Any = image) -> list[Any]:
                return connection.execute(select(*columns, func.count()).where(where).group_by(*columns)).all()

            sizes = {f"{w} x {h}": int(n) for w, h, n in grouped(m.Image.width, m.Image.height,
                                                               where=image & m.Image.width.is_not(None))}
            return {
                "roles": {role: int(n) for role, n in grouped(m.Image.role)},
                "sizes": dict(sorted(sizes.items(), key=lambda item: -item[1])),
                "gt_classes": {c: int(n) for c, n in grouped(m.Image.gt_class, where=image & (m.Image.role == "unlabeled")
                                                            & m.Image.gt_class.is_not(None) & (m.Image.gt_class != ""))},
                "maps": int(connection.scalar(select(func.count(m.AnomalyMap.id)).join(
                    m.Image, m.Image.id == m.AnomalyMap.image_id).where(image)) or 0),
                "regions": int(connection.scalar(select(func.count(m.Region.id)).where(
                    m.Region.project_id == project_id, m.Region.is_current.is_(True))) or 0),
            }

    def get_image(self, project_id: int, relpath: str) -> ImageInfo:
        """One image by relpath; NotFound if absent."""
        with self._session() as session:
            return image_info(image_row(session, project_id, relpath))
