"""Stage 3: from anomaly maps to anomaly-centred regions (docs/method.md, "MEBin" and "Regions").

- `mebin`: MEBin's binarization of a map (fast path, OpenCV oracle, Otsu ablation);
  `kernels`: its numba kernels.
- `crops`: crop boxes and regions, the noise floor, `recut_image` at an engineer's threshold.
- `refine`: region masks redrawn against the best-matching normal reference patch.
"""

from core.regions.crops import extract_regions, normal_floor, noise_floor, recut_image, square_box
from core.regions.mebin import MEBinResult, binarize, binarize_otsu, mask_at_threshold
from core.regions.refine import ReferenceImages, references_for, refine_regions

__all__ = [
    "MEBinResult",
    "ReferenceImages",
    "binarize",
    "binarize_otsu",
    "extract_regions",
    "mask_at_threshold",
    "noise_floor",
    "normal_floor",
    "recut_image",
    "references_for",
    "refine_regions",
    "square_box",
]
