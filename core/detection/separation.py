"""How well the maps tell the inspected images from defect-free ones: a check before discovery.

A share of the normal references is held out of the detector's fit and scored like the images
to inspect. If the inspected images do not score above those held-out normals, the maps follow
something other than the defects (texture, lighting) and discovery on them would cluster noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Below this AUROC (inspected vs held-out normal images) the maps are called poor.
LOW_AUROC = 0.65
#: Fewest normal references for which some are held out (the rest must still fit the detector).
MIN_NORMAL_FOR_HOLDOUT = 10
#: Most normal references held out (each is scored like an inspected image, which costs time).
MAX_HELD_OUT = 50


def held_out_count(count: int, share: float) -> int:
    """How many of `count` normal images are held out."""
    if share <= 0 or count < MIN_NORMAL_FOR_HOLDOUT:
        return 0
    return min(MAX_HELD_OUT, max(2, int(round(share * count))))


def holdout_indices(content_hashes: Sequence[str], share: float, seed: int) -> list[int]:
    """Which normal images are held out: a seeded draw over their content (file order plays no part)."""
    count = len(content_hashes)
    held = held_out_count(count, share)
    if not held:
        return []
    order = sorted(range(count), key=lambda i: content_hashes[i])
    rng = np.random.default_rng(seed + 7919)
    return sorted(order[i] for i in rng.permutation(count)[:held])


def _auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    greater = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(greater + 0.5 * ties)


def separation_report(inspected: Sequence[float], held_out: Sequence[float]) -> dict:
    """Share of inspected images above the held-out normals' 99th percentile, AUROC, and a verdict."""
    positives = np.asarray(list(inspected), dtype=np.float64)
    negatives = np.asarray(list(held_out), dtype=np.float64)
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("separation needs inspected and held-out normal scores")
    threshold = float(np.percentile(negatives, 99))
    share = float((positives > threshold).mean())
    auroc = _auroc(positives, negatives)
    low = auroc < LOW_AUROC
    summary = (f"separation: {share:.0%} of the {positives.size} inspected images score above the 99th "
               f"percentile of {negatives.size} held-out normal images; AUROC inspected vs held-out {auroc:.2f}")
    warning = None
    if low:
        warning = ("these maps barely tell your images from the references: import maps from your own detector, "
                   "or give a pretrained backbone (--backbone NAME with its weights cached, or --weights FILE). "
                   "(If nearly all of your images are defect-free, a low value is expected.)")
    return {"held_out": int(negatives.size), "inspected": int(positives.size), "threshold": threshold,
            "share_above": share, "auroc": auroc, "low": low, "summary": summary, "warning": warning}
