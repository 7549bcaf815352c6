"""Anomaly maps and their MEBin binarizations (threshold, anomaly count, mask PNG) per image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import delete, select

from core.imageio import write_image
from storage import models as m
from storage.projects import image_ids
from storage.records import BinarizationInput, MapInput
from storage.workspace import Workspace


class MapStore(Workspace):
    """Anomaly map files and MEBin's result per image."""

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

    def record_binarizations(self, project_id: int, results: Sequence[BinarizationInput]) -> int:
        """Record MEBin results (threshold, count, counts per threshold, mask PNG). Returns count."""
        masks_dir = self.project_dir(project_id) / "masks" / "binarized"
        with self._session(write=True) as session:
            ids = image_ids(session, project_id, (x.relpath for x in results))
            wanted = [ids[x.relpath] for x in results]
            session.execute(delete(m.Binarization).where(m.Binarization.image_id.in_(wanted)))
            for item, image_id in zip(results, wanted):
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
