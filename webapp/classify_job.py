"""The Classify page's side of the "classify" job: enqueue it. The job body (new images placed in a
finished run's named classes) is jobs.classify, run by a worker on the cpu queue. No `st.*` here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.classify import CLASSIFY, classification_dir

__all__ = ["CLASSIFY", "classification_dir", "start_classification"]


def start_classification(store: Any, source_run_id: int, images: Path | str, maps_dir: Path | str | None = None) -> int:
    """Queue a classify run in the source run's project; returns the run id."""
    from webapp import job_control

    source = store.get_run(source_run_id)
    settings = {"source_run": int(source_run_id), "images": str(images),
                "maps_dir": str(maps_dir) if maps_dir else None}
    return job_control.start_job(store, source.project_id, CLASSIFY, settings, parent_run_id=source_run_id)
