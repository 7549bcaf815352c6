"""The bundle of a discovery run just finished (the discover command's last step)."""

from __future__ import annotations

from pathlib import Path

import sys
from datetime import datetime, timezone

from core.classify.bundle import BundleError, BundleSource, write_bundle

__all__ = ["BUNDLE_FOLDER", "write_run_bundle"]

#: A run folder's bundle (`classify --model RUN` looks here).
BUNDLE_FOLDER = "bundle"


def write_run_bundle(out: Path, result, config, manifest, *, maps_imported: bool,
                     workdir: Path | None = None) -> Path | None:
    """Write out/bundle/ from a core.results.DiscoveryResult: its regions under the cluster names the run
    gave them, the run's normal references, the learned detector's fitted state from workdir's detection
    cache and out/model.pt when the run trained an MGViT. The bundle of an earlier run in the same folder is
    moved to out/bundle-<time>, never overwritten. A run that found no anomaly gets none (said on stderr;
    the run's results stand): returns None."""
    out = Path(out)
    source = BundleSource(
        regions=[r.region for r in result.regions],
        classes=[result.cluster_names[r.cluster] for r in result.regions],
        images={r.relpath: r.path for r in manifest.unlabeled},
        config=config,
        references=[r.path for r in manifest.normal],
        maps_imported=maps_imported,
        run=str(out),
        detection_cache=None if workdir is None else Path(workdir) / "detection_cache",
        model_file=out / "model.pt" if (out / "model.pt").is_file() else None,
        normal_class=result.cluster_names[result.normal_cluster],
    )
    target = out / BUNDLE_FOLDER
    if target.exists():  # an earlier run wrote into this folder: its bundle is kept, beside
        kept = out / f"{BUNDLE_FOLDER}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}"
        target.rename(kept)
        print(f"note: the earlier run's bundle in {out} moved to {kept}", file=sys.stderr)
    try:
        return write_bundle(target, source)
    except BundleError as error:
        print(f"warning: no model bundle: {error}", file=sys.stderr)
        return None
