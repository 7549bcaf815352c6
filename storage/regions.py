"""Regions: the anomaly-centred crops of each image, with their crop and mask PNGs."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert, select, update

from core.records import Region
from storage import models as m
from storage import workspace
from storage.projects import image_ids, image_row
from storage.records import RegionInfo
from storage.workspace import Workspace, chunks, write_pngs


class RegionStore(Workspace):
    """Regions of a project's images and the files of their crops and masks."""

    def _region_info(self, row: m.Region, relpath: str) -> RegionInfo:
        """The record of a region row (paths made absolute)."""
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
            ids = image_ids(session, project_id, (r.image for r in regions))
            if replace and regions:
                for chunk in chunks(sorted({ids[r.image] for r in regions})):
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
            for batch in chunks(rows, workspace.INSERT_CHUNK):
                result = session.execute(insert(m.Region).returning(m.Region.id, sort_by_parameter_order=True), batch)
                new_ids.extend(result.scalars().all())
            crops_dir.mkdir(parents=True, exist_ok=True)
            masks_dir.mkdir(parents=True, exist_ok=True)
            write_pngs(
                item
                for region, region_id in zip(regions, new_ids)
                for item in ((crops_dir / f"{region_id}.png", region.image_crop), (masks_dir / f"{region_id}.png", region.mask_crop))
            )
            crops_rel, masks_rel = self._relative(crops_dir), self._relative(masks_dir)
            paths = [
                {"id": region_id, "crop_path": f"{crops_rel}/{region_id}.png", "mask_path": f"{masks_rel}/{region_id}.png"}
                for region_id in new_ids
            ]
            if paths:
                session.execute(update(m.Region), paths)
            by_id: dict[int, m.Region] = {}
            for chunk in chunks(new_ids):
                by_id.update((r.id, r) for r in session.scalars(select(m.Region).where(m.Region.id.in_(chunk))))
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

    def image_regions(self, project_id: int, relpath: str) -> list[RegionInfo]:
        """Regions of one image, largest first (by index)."""
        with self._session() as session:
            image = image_row(session, project_id, relpath)
            rows = session.scalars(select(m.Region).where(m.Region.image_id == image.id).order_by(m.Region.index))
            return [self._region_info(r, relpath) for r in rows]

    def region_ids_by_key(self, project_id: int) -> dict[str, int]:
        """Map Region.key ("<relpath>#<index>") -> region id."""
        with self._session() as session:
            rows = session.execute(
                select(m.Image.relpath, m.Region.index, m.Region.id)
                .join(m.Image, m.Image.id == m.Region.image_id)
                .where(m.Region.project_id == project_id)
            ).all()
            return {f"{relpath}#{index}": region_id for relpath, index, region_id in rows}
