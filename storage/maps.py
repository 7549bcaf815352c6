"""Anomaly maps and their MEBin binarizations (threshold, anomaly count, mask PNG) per image.

Binarizations are versioned: recording one adds a version and makes it the image's current
one, so a finished run's evidence stays. A threshold override by the engineer is such a
version (settings["source"] == "override"), recorded with the image's new crops in one
transaction; it stays in force for every later run until it is reset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.imageio import write_image
from core.records import Region
from storage import models as m
from storage.projects import image_ids
from storage.records import DONE, BinarizationInput, MapInput, RegionInfo, StorageError
from storage.regions import RegionStore
from storage.workspace import aware

#: settings["source"] of a binarization the engineer set by hand.
OVERRIDE = "override"


class MapStore(RegionStore):
    """Anomaly map files and MEBin's result per image, with the engineer's threshold overrides."""

    def record_maps(self, project_id: int, maps: Sequence[MapInput]) -> int:
        """Record anomaly map files (one per image and source; re-recording replaces). Returns count."""
        with self._session(write=True) as session:
            ids = image_ids(session, project_id, (x.relpath for x in maps))
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

    def _add_binarization(self, session: Session, project_id: int, image_id: int, item: BinarizationInput,
                          *, keep_override: bool) -> m.Binarization:
        """A new current version of an image's binarization (the previous one stays, not current).

        keep_override: a run recording the threshold of the override in force keeps it an override.
        """
        previous = session.scalar(
            select(m.Binarization).where(m.Binarization.image_id == image_id, m.Binarization.is_current.is_(True))
        )
        settings = dict(item.settings)
        if (keep_override and previous is not None and (previous.settings or {}).get("source") == OVERRIDE
                and int(previous.threshold) == int(item.threshold)):  # fmt: skip
            settings["source"] = OVERRIDE
            settings["set_by"] = "run"  # a run applied it: no longer pending
            if "mebin_threshold" in previous.settings:
                settings["mebin_threshold"] = previous.settings["mebin_threshold"]
        version = (session.scalar(select(func.max(m.Binarization.version)).where(m.Binarization.image_id == image_id)) or 0) + 1
        session.execute(update(m.Binarization).where(m.Binarization.image_id == image_id).values(is_current=False))
        map_id = session.scalar(
            select(m.AnomalyMap.id).where(m.AnomalyMap.image_id == image_id).order_by(m.AnomalyMap.id.desc())
        )
        mask_path = None
        if item.mask is not None:
            target = self.project_dir(project_id) / "masks" / "binarized" / f"{image_id}_v{version}.png"
            write_image(target, np.asarray(item.mask, dtype=np.uint8))
            mask_path = self._relative(target)
        row = m.Binarization(
            image_id=image_id, map_id=map_id, threshold=int(item.threshold), num_anomalies=int(item.num_anomalies),
            counts=[int(c) for c in item.counts], mask_path=mask_path, settings=settings, version=version, is_current=True,
        )  # fmt: skip
        session.add(row)
        session.flush()
        return row

    def record_binarizations(self, project_id: int, results: Sequence[BinarizationInput]) -> int:
        """Record MEBin results (threshold, count, counts per threshold, mask PNG) as new versions. Returns count."""
        with self._session(write=True) as session:
            ids = image_ids(session, project_id, (x.relpath for x in results))
            for item in results:
                self._add_binarization(session, project_id, ids[item.relpath], item, keep_override=True)
            return len(results)

    def _binarization_dict(self, relpath: str, b: m.Binarization) -> dict[str, Any]:
        return {
            "id": b.id,
            "image": relpath,
            "threshold": b.threshold,
            "num_anomalies": b.num_anomalies,
            "counts": list(b.counts),
            "mask_path": self._absolute(b.mask_path),
            "settings": dict(b.settings),
            "version": b.version,
            "created_at": b.created_at,
        }

    def list_binarizations(self, project_id: int) -> list[dict[str, Any]]:
        """Current binarization of every image: image, threshold, num_anomalies, counts, mask_path, settings, version."""
        with self._session() as session:
            rows = session.execute(
                select(m.Image.relpath, m.Binarization)
                .join(m.Binarization, m.Binarization.image_id == m.Image.id)
                .where(m.Image.project_id == project_id, m.Binarization.is_current.is_(True))
                .order_by(m.Image.relpath)
            ).all()
            return [self._binarization_dict(relpath, b) for relpath, b in rows]

    def record_threshold_override(
        self, project_id: int, binarization: BinarizationInput, regions: Sequence[Region], *, reset: bool = False
    ) -> list[RegionInfo]:
        """The engineer's threshold for one image and its re-cut regions, in one transaction.

        Both become the image's current version, used by the NEXT run; finished runs keep the
        regions they assigned (see record_regions). reset=True records MEBin's own threshold
        again (source "mebin"), ending the override. Returns the new regions.
        """
        if any(r.image != binarization.relpath for r in regions):
            raise StorageError(f"the regions of an override must all be of image {binarization.relpath!r}")
        item = BinarizationInput(
            binarization.relpath, binarization.threshold, binarization.num_anomalies, binarization.counts,
            binarization.mask, {**binarization.settings, "source": "mebin" if reset else OVERRIDE, "set_by": "engineer"},
        )  # fmt: skip
        with self._session(write=True) as session:
            image_id = image_ids(session, project_id, [item.relpath])[item.relpath]
            self._add_binarization(session, project_id, image_id, item, keep_override=False)
            return self._add_regions(session, project_id, regions, replace=True, images=[item.relpath])

    def threshold_overrides(self, project_id: int) -> dict[str, int]:
        """Thresholds in force that the engineer set by hand, by image relpath (the next run applies them)."""
        return {b["image"]: int(b["threshold"]) for b in self.list_binarizations(project_id)
                if b["settings"].get("source") == OVERRIDE}  # fmt: skip

    def pending_overrides(self, project_id: int) -> list[dict[str, Any]]:
        """Overrides in force that no finished discovery run has used yet (as list_binarizations).

        An override is used once a run re-records it (set_by "run") or a discovery run that
        started after it finished.
        """
        with self._session() as session:
            started = session.scalar(
                select(func.max(m.Run.started_at)).where(
                    m.Run.project_id == project_id, m.Run.kind == "discover", m.Run.status == DONE
                )
            )
        current = [b for b in self.list_binarizations(project_id)
                   if b["settings"].get("source") == OVERRIDE and b["settings"].get("set_by") != "run"]  # fmt: skip
        if started is None:
            return current
        return [b for b in current if aware(b["created_at"]) > aware(started)]  # type: ignore[operator]
