"""Comparing two runs of a project: their clusters matched by shared regions, and what moved."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.grouping.matching import match_by_overlap
from storage import models as m
from storage.records import ClusterMatch, RegionChange, display_name
from storage.workspace import Workspace, chunks


def run_clusters(session: Session, run_id: int) -> dict[int, int]:
    """region id -> cluster id of every region assigned in a run."""
    return dict(
        session.execute(select(m.Assignment.region_id, m.Assignment.cluster_id).where(m.Assignment.run_id == run_id)).all()
    )


class ComparisonStore(Workspace):
    """Cluster matching (core.grouping.matching) and region changes between two runs."""

    def match_clusters(self, run_a: int, run_b: int) -> list[ClusterMatch]:
        """Match clusters across two runs of a project by shared regions (Hungarian on overlap)."""
        with self._session() as session:
            self._get(session, m.Run, run_a, "run")
            self._get(session, m.Run, run_b, "run")
            a, b = run_clusters(session, run_a), run_clusters(session, run_b)
        return [ClusterMatch(int(x), int(y), n) for x, y, n in match_by_overlap(a, b)]  # type: ignore[call-overload]

    def changed_regions(self, run_a: int, run_b: int) -> list[RegionChange]:
        """Regions whose cluster in run_b is not the match of their cluster in run_a."""
        matched = {x.cluster_a_id: x.cluster_b_id for x in self.match_clusters(run_a, run_b)}
        with self._session() as session:
            a, b = run_clusters(session, run_a), run_clusters(session, run_b)
            names = {
                c.id: display_name(c.name, c.slot)
                for c in session.scalars(select(m.Cluster).where(m.Cluster.run_id.in_((run_a, run_b))))
            }
            changed = sorted(r for r in a.keys() & b.keys() if matched.get(a[r]) != b[r])
            images: dict[int, str] = {}
            for chunk in chunks(changed):
                images.update(
                    session.execute(
                        select(m.Region.id, m.Image.relpath)
                        .join(m.Image, m.Image.id == m.Region.image_id)
                        .where(m.Region.id.in_(chunk))
                    ).all()
                )
        return [RegionChange(r, images[r], a[r], names[a[r]], b[r], names[b[r]]) for r in changed]
