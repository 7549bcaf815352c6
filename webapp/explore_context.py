"""What the Explore page's parts share for one render: the run's points and clusters as cached per
revision, the cluster versions the engineer saw (edit conflicts are checked against them), and
small text helpers. Built once at the top of webapp/views/explore.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import streamlit as st

from storage import ClusterInfo, NotFound, ProjectInfo, Store
from storage.records import STATE_MARKED_NORMAL, STATE_NO_ANOMALY, STATE_NORMAL
from webapp.widgets import literal

#: Session key of the cluster versions the engineer last saw (for conflict detection).
SEEN_KEY = "explore_seen_versions"
#: Session key of the image shown in the image view.
IMAGE_KEY = "explore_image"
#: Longest cluster name storage keeps; the field says so instead of stopping silently.
MAX_NAME_CHARS = 200


def short(text: str, limit: int = 48) -> str:
    """A long name cut with an ellipsis for a picker or a caption (the full name is in the help)."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def plural(count: int, word: str) -> str:
    """'1 region', '3 regions'."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def quoted(name: str) -> str:
    """A name for a message rendered as markdown: quoted and made literal."""
    return f"“{literal(name)}”"


@dataclass
class ExploreContext:
    """One render of the Explore page: the store, the run, its points (indexed by region id) and clusters."""

    store: Store
    project: ProjectInfo
    run_id: int
    revision: tuple
    points: pd.DataFrame
    clusters: list[ClusterInfo]
    selected: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.by_cluster_id = {c.id: c for c in self.clusters}
        self.indexed = self.points.set_index("region_id", drop=False)
        self.known_ids = set(self.indexed.index.tolist())
        # Pickers list populated clusters first (largest first), then the empty ones (e.g. the normal slot).
        self.cluster_ids = [c.id for c in sorted(self.clusters, key=lambda c: (c.region_count == 0, -c.region_count,
                                                                                c.slot))]
        self.populated = [c for c in self.clusters if c.region_count > 0]

    def expected(self, cluster_id: int) -> int | None:
        """The version of a cluster as the engineer saw it (None: not seen yet, no check).

        Read from the session when asked, not when the context was made: the panels' fragment reruns
        with the context of the last full render, whose remember_seen ran after it was made (a copy
        taken then made the edit after a rename a false conflict)."""
        return st.session_state.get(SEEN_KEY, {}).get(self.run_id, {}).get(cluster_id)

    def expected_versions(self, cluster_ids: list[int]) -> dict[int, int]:
        return {i: v for i in cluster_ids if (v := self.expected(i)) is not None}

    def name_of(self, cluster_id: int) -> str:
        cluster = self.by_cluster_id.get(cluster_id)
        return cluster.display_name if cluster else f"cluster #{cluster_id}"

    def cluster_label(self, cluster_id: int) -> str:
        cluster = self.by_cluster_id[cluster_id]
        flag = " · normal" if cluster.is_normal else ""
        return f"{short(cluster.display_name)} ({cluster.region_count} regions{flag})"

    def files_of(self, region_id: int) -> tuple[str | None, str | None]:
        """(crop path, mask path) of a region of this run (as it was when the run ran)."""
        if region_id in self.known_ids:
            row = self.indexed.loc[region_id]
            return row["crop_path"], row["mask_path"]
        try:
            region = self.store.get_region(region_id)
        except NotFound:
            return None, None
        return region.crop_path, region.mask_path

    def remember_seen(self) -> None:
        """What the engineer saw on this render: edits submitted from it are checked against these."""
        st.session_state.setdefault(SEEN_KEY, {})[self.run_id] = {c.id: c.version for c in self.clusters}


def region_states(points: pd.DataFrame) -> dict[str, int]:
    """How many regions are marked normal by the engineer, predicted normal (the engine's normal
    slot) and placeholders (strongest spot or whole image) where no anomaly was found (storage's region_state)."""
    counts = points["state"].value_counts()
    return {"marked": int(counts.get(STATE_MARKED_NORMAL, 0)), "predicted": int(counts.get(STATE_NORMAL, 0)),
            "none_found": int(counts.get(STATE_NO_ANOMALY, 0))}


def state_cards(states: dict[str, int]) -> list[tuple[str, str, str]]:
    """Metric cards of the three normal-like states, kept apart."""
    return [
        ("Marked normal", f"{states['marked']:,}", "Regions you marked normal (false detections of the detector)."),
        ("Model: normal", f"{states['predicted']:,}", "Predicted normal: regions the model put in its normal cluster."),
        ("No anomaly", f"{states['none_found']:,}",
         "Images where nothing rose above what normal images reach, each shown as its map's strongest spot or the "
         "whole image (hollow rings on the plot). Not a verdict that the part is normal: look at them."),
    ]
