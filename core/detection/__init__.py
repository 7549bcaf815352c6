"""Stage 1: anomaly maps, imported from any detector or computed by the built-in one.

import_maps reads maps made elsewhere and matches them to images; detect runs PatchCore (fit on
normal images) or a MuSc-style zero-shot mode (no normal images), with an on-disk cache;
write_detection writes the maps and scores as docs/architecture.md's output files say.
"""

from typing import Any

from core.detection.config import AUTO_BACKBONE, METHODS, OFFLINE_BACKBONE, PAPER_BACKBONE, DetectorConfig
from core.detection.importer import IMPORT_EXTENSIONS, MapImport, MapImportError, import_maps

#: Names that need torch, imported on first use so that importing maps stays light.
_LAZY = {
    "Detection": "core.detection.detector",
    "detect": "core.detection.detector",
    "map_relpath": "core.detection.detector",
    "write_detection": "core.detection.detector",
    "DetectionError": "core.detection.features",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'core.detection' has no attribute {name!r}")


__all__ = [
    "AUTO_BACKBONE",
    "IMPORT_EXTENSIONS",
    "METHODS",
    "OFFLINE_BACKBONE",
    "PAPER_BACKBONE",
    "Detection",
    "DetectionError",
    "DetectorConfig",
    "MapImport",
    "MapImportError",
    "detect",
    "import_maps",
    "map_relpath",
    "write_detection",
]
