"""The bundle of a discovery run just finished (the discover command's last step)."""

from __future__ import annotations

from pathlib import Path

from core.classify.bundle import BundleSource, write_bundle

__all__ = ["BUNDLE_FOLDER", "write_run_bundle"]

#: A run folder's bundle (`classify --model RUN` looks here).
BUNDLE_FOLDER = "bundle"


def write_run_bundle(out: Path, result, config, manifest, *, maps_imported: bool, workdir: Path | None = None) -> Path:
    """Write out/bundle/ from a core.results.DiscoveryResult: its regions under the cluster names the run
    gave them, the run's normal references, the learned detector's fitted state from workdir's detection
    cache and out/model.pt when the run trained an MGViT."""
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
    return write_bundle(out / BUNDLE_FOLDER, source)
