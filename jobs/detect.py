"""The detect job: anomaly maps (imported or from the built-in detector), then core's MEBin and
regions chain, all stored for the Detection & MEBin page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.dataset import load_dataset
from core.decisions import decide
from jobs.maps import binarization_inputs, compute_maps, map_source, save_maps, store_regions, with_search_range
from jobs.progress import Reporter
from storage import RunInfo, Store

#: Where the detection job's bar starts (after reading the data set) and where core's stages end
#: (storing the regions takes the rest).
BAR_START, BAR_END = 0.02, 0.99


def detect_spans(manifest: Any, config: Any, builtin: bool) -> dict[str, tuple[float, float]]:
    """(start, width) on the job's bar of the maps, MEBin and regions, by their expected seconds
    (core.pipeline.plan_seconds: the detector's steps, the masks redrawn against the references)."""
    from core.pipeline import plan_seconds

    seconds = plan_seconds(manifest, config, builtin)
    names = ("maps", "mebin", "regions")
    total = sum(seconds[name] for name in names)
    spans, start = {}, BAR_START
    for name in names:
        width = (BAR_END - BAR_START) * seconds[name] / max(total, 1e-9)
        spans[name] = (start, width)
        start += width
    return spans


def run_detect(store: Store, run: RunInfo, report: Reporter) -> str:
    """Maps (import or built-in detector) -> stored maps -> core's MEBin and regions chain -> stored masks and crops."""
    from core.pipeline import Stages, find_regions, prepare_maps

    project = store.get_project(run.project_id)
    config = decide(run.settings).config  # a setting it cannot use fails the job before any work
    report(0.0, "loading", project.data_root, force=True)
    manifest = load_dataset(Path(project.data_root))
    store.record_images(project.id, manifest.images)
    report.check()
    spans = detect_spans(manifest, config, map_source(project, run.settings) == "builtin")
    computed = compute_maps(store, project, manifest, config, run.settings, report,
                            span=(BAR_START, sum(spans["maps"])))
    if computed.summary:
        report.metrics = {"detection": computed.summary}  # method, why, separation: kept with the run
    report.check()
    keys = [r.relpath for r in manifest.unlabeled if r.relpath in computed.maps]
    save_maps(store, project.id, {k: computed.maps[k] for k in keys}, computed.source, computed.normal_peaks,
              computed.separation)
    records = {r.relpath: r for r in manifest.unlabeled}
    map_set = prepare_maps([records[k] for k in keys], computed.maps, computed.normal_peaks)

    def progress(event: Any) -> None:
        start, span = spans[event.stage]
        report(start + span * event.fraction, event.stage, event.message, force=event.fraction == 0.0)
        report.check()

    found = find_regions(map_set, manifest.normal, config, Stages(progress), require_anomalies=False)
    store.record_binarizations(project.id, with_search_range(
        binarization_inputs(found.binarization, config.mebin, source=config.binarizer), map_set.normalized,
        found.floor))
    store_regions(store, project.id, found.regions)
    problems = computed.problems + found.problems
    note = f"; {len(problems)} problem(s) with maps or references" if problems else ""
    return (f"{len(keys)} maps ({computed.source}), {found.with_anomalies} images with anomalies, "
            f"{len(found.regions)} regions{note}")
