"""What share of a detection each of its steps takes, from the data set's counts, so one progress
bar over the detector moves at an even pace: `step_shares(manifest, config)` names every step that
`detect` reports (including auto's comparison on a sample) with its share of the whole.

The shares come from measured seconds per image of each step (STEP_COST; 2 cores, offline backbone,
the demo's 256-pixel parts and DeepPCB's 640-pixel boards), times the images each step works on.
They only need to be right relative to each other: a progress bar that stands still for a third
of a job (auto's comparison took every share it could, then the full fit had none) is the failure
they prevent.
"""

from __future__ import annotations

from core.detection.config import DetectorConfig
from core.records import Manifest

#: Seconds per image (or, for a coreset, per fit) of each step, measured on 2 cores.
STEP_COST = {
    "hashing images": 0.003,
    "template: registered differences": 0.012,
    "learned: features of normal images": 0.02,
    "learned: coreset": 2.0,
    "fit: features of normal images": 0.05,
    "fit: coreset": 2.5,
    "predict: anomaly maps": 0.13,
    "zero-shot: features": 0.10,
    "zero-shot: coresets": 0.03,
    "zero-shot: mutual scoring": 0.10,
}


def _fit_and_predict(method: str, n_fit: int, n_scored: int) -> dict[str, float]:
    """Seconds of each step of one fitted detector (learned or patchcore)."""
    prefix = "learned" if method == "learned" else "fit"
    return {f"{prefix}: features of normal images": STEP_COST[f"{prefix}: features of normal images"] * n_fit,
            f"{prefix}: coreset": STEP_COST[f"{prefix}: coreset"],
            "predict: anomaly maps": STEP_COST["predict: anomaly maps"] * n_scored}


def step_seconds(manifest: Manifest, config: DetectorConfig) -> dict[str, float]:
    """About how many seconds (2 cores) each step of `detect(manifest, config)` takes, keyed by the name
    it reports. After auto's comparison either detector is fitted in full: both variants' names are
    given, the patchcore one under "fit: ..." (their prediction shares the name). Empty when the
    method cannot be resolved (detect then says why)."""
    from core.detection.detector import AUTO_SAMPLE_IMAGES, AUTO_SAMPLE_REFERENCES, _references, resolve_method
    from core.detection.separation import held_out_count

    try:
        method, pairs, _ = resolve_method(manifest, config)
        references = _references(manifest, method, pairs)
    except Exception:  # noqa: BLE001 - detect() itself raises the message the engineer reads
        return {}
    targets = len(manifest.unlabeled)
    seconds = {"hashing images": STEP_COST["hashing images"] * (targets + len(references))}
    if method == "template":
        seconds["template: registered differences"] = STEP_COST["template: registered differences"] * targets
        return seconds
    if method == "zero-shot":
        seconds["zero-shot: features"] = STEP_COST["zero-shot: features"] * len(references)
        seconds["zero-shot: coresets"] = STEP_COST["zero-shot: coresets"] * len(references)
        seconds["zero-shot: mutual scoring"] = STEP_COST["zero-shot: mutual scoring"] * targets
        return seconds
    held = held_out_count(len(references), config.holdout_share)
    fit = len(references) - held
    if config.method == "auto" and method == "learned" and held:  # the comparison on a sample (detector.py)
        sample = (min(fit, AUTO_SAMPLE_REFERENCES), min(targets, AUTO_SAMPLE_IMAGES) + held)
        for name, kind in (("learned", "learned"), ("filter bank", "patchcore")):
            for step, cost in _fit_and_predict(kind, *sample).items():
                seconds[f"choosing the detector: {name} on a sample ({step})"] = cost
        seconds.update(_fit_and_predict("patchcore", fit, targets + held))
    seconds.update(_fit_and_predict(method, fit, targets + held))
    return seconds


def step_shares(manifest: Manifest, config: DetectorConfig) -> dict[str, float]:
    """Each step's share (0..1) of `detect(manifest, config)`, keyed by the name it reports (step_seconds)."""
    seconds = step_seconds(manifest, config)
    total = detector_seconds(seconds)
    return {step: cost / max(total, 1e-9) for step, cost in seconds.items()}


def detector_seconds(seconds: dict[str, float]) -> float:
    """The whole detection's seconds from step_seconds: one full fit counted, not both variants."""
    return sum(cost for step, cost in seconds.items() if not step.startswith("fit: ") or
               not any(s.startswith("learned: ") for s in seconds))


__all__ = ["STEP_COST", "detector_seconds", "step_seconds", "step_shares"]
