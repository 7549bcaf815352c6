"""Regions: the anomaly-centred crops of each image, with their crop and mask PNGs.

Regions are versioned per image: a re-crop (a new binarization, an override) adds a new set
of regions that becomes the image's current one. The older set stays as long as a run assigned
it or a label names it, so a finished run keeps showing and exporting exactly its regions;
older regions nothing uses are deleted. `list_regions` and `image_regions` read the current
set, or with `run_id` the regions that run assigned.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from core.records import Region, region_key
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
            weak=bool(row.weak),
            crop_path=self._absolute(row.crop_path),
            mask_path=self._absolute(row.mask_path),
        )

    def _supersede(self, session: Session, image_ids_: Sequence[int]) -> None:
        """The current regions of these images stop being current; those nothing refers to are deleted."""
        for chunk in chunks(list(image_ids_)):
            current = select(m.Region.id).where(m.Region.image_id.in_(chunk), m.Region.is_current.is_(True))
            used = select(m.Assignment.region_id).union(select(m.Label.region_id))
            session.execute(delete(m.Region).where(m.Region.id.in_(current), m.Region.id.not_in(used)))
            session.execute(update(m.Region).where(m.Region.image_id.in_(chunk)).values(is_current=False))

    def _add_regions(
        self, session: Session, project_id: int, regions: Sequence[Region], *, replace: bool, images: Sequence[str] = ()
    ) -> list[RegionInfo]:
        """Insert regions (and write their PNGs) inside a session; see record_regions."""
        crops_dir = self.project_dir(project_id) / "crops"
        masks_dir = self.project_dir(project_id) / "masks"
        regions = list(regions)
        self._get(session, m.Project, project_id, "project")
        ids = image_ids(session, project_id, [*(r.image for r in regions), *images])
        touched = sorted({ids[name] for name in [*(r.image for r in regions), *images]})
        versions: dict[int, int] = {}
        for chunk in chunks(touched):
            versions.update(
                session.execute(
                    select(m.Region.image_id, func.max(m.Region.version)).where(m.Region.image_id.in_(chunk)).group_by(m.Region.image_id)
                ).all()
            )
        if replace:
            self._supersede(session, touched)
            versions = {image_id: versions.get(image_id, 0) + 1 for image_id in touched}
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
                "weak": bool(r.weak),
                "version": versions.get(ids[r.image], 1),
                "is_current": True,
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

    def record_regions(self, project_id: int, regions: Sequence[Region], *, replace: bool = True) -> list[RegionInfo]:
        """Store regions and their crop/mask PNGs under projects/<id>/crops and masks.

        With replace=True they become a new version, the current regions of their images; the
        previous ones are kept for the runs and labels that use them (deleted otherwise). With
        replace=False they are added to the images' current set. Returned in input order.
        """
        with self._session(write=True) as session:
            return self._add_regions(session, project_id, regions, replace=replace)

    def _region_rows(self, session: Session, where: object) -> list[RegionInfo]:
        rows = session.execute(
            select(m.Region, m.Image.relpath)
            .join(m.Image, m.Image.id == m.Region.image_id)
            .where(where)  # type: ignore[arg-type]
            .order_by(m.Image.relpath, m.Region.index)
        ).all()
        return [self._region_info(r, relpath) for r, relpath in rows]

    def list_regions(self, project_id: int, run_id: int | None = None) -> list[RegionInfo]:
        """The current regions of a project (with run_id: the regions that run assigned), by image and index."""
        with self._session() as session:
            if run_id is not None:
                return self._region_rows(session, m.Region.id.in_(select(m.Assignment.region_id).where(m.Assignment.run_id == run_id)))
            return self._region_rows(session, (m.Region.project_id == project_id) & m.Region.is_current.is_(True))

    def run_regions(self, run_id: int) -> list[RegionInfo]:
        """The regions a run assigned, as they were when it ran (later re-crops do not change them)."""
        with self._session() as session:
            self._get(session, m.Run, run_id, "run")
            return self._region_rows(session, m.Region.id.in_(select(m.Assignment.region_id).where(m.Assignment.run_id == run_id)))

    def get_region(self, region_id: int) -> RegionInfo:
        """One region (current or of an older version); NotFound if absent."""
        with self._session() as session:
            row = self._get(session, m.Region, region_id, "region")
            relpath = session.scalar(select(m.Image.relpath).where(m.Image.id == row.image_id))
            return self._region_info(row, relpath)

    def image_regions(self, project_id: int, relpath: str, run_id: int | None = None) -> list[RegionInfo]:
        """Current regions of one image (with run_id: those that run assigned), largest first (by index)."""
        with self._session() as session:
            image = image_row(session, project_id, relpath)
            query = select(m.Region).where(m.Region.image_id == image.id)
            if run_id is None:
                query = query.where(m.Region.is_current.is_(True))
            else:
                query = query.where(m.Region.id.in_(select(m.Assignment.region_id).where(m.Assignment.run_id == run_id)))
            return [self._region_info(r, relpath) for r in session.scalars(query.order_by(m.Region.index))]

    def region_ids_by_key(self, project_id: int) -> dict[str, int]:
        """Map core.records.region_key(image, index) -> id of the current regions."""
        with self._session() as session:
            rows = session.execute(
                select(m.Image.relpath, m.Region.index, m.Region.id)
                .join(m.Image, m.Image.id == m.Region.image_id)
                .where(m.Region.project_id == project_id, m.Region.is_current.is_(True))
            ).all()
            return {region_key(relpath, index): region_id for relpath, index, region_id in rows}
