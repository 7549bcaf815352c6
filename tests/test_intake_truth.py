"""The Projects preview of a DeepPCB-like folder (issue 24, defect 5): images paired with their own
references and a COCO annotations.json are 'template comparison' and 'ground truth on regions', not
'PatchCore' and 'no ground truth'."""

from __future__ import annotations

import json

import numpy as np

from core.imageio import write_image
from webapp import intake


def pcb_like(root, n: int = 3, annotations: bool = True):
    rng = np.random.default_rng(0)
    for i in range(n):
        write_image(root / "images" / f"{i:04d}_test.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        write_image(root / "normal" / f"{i:04d}_temp.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    if annotations:
        (root / "annotations.json").write_text(json.dumps({
            "images": [{"id": i, "file_name": f"images/{i:04d}_test.png", "width": 32, "height": 32} for i in range(n)],
            "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [2, 2, 8, 8], "area": 64, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "open"}]}))
    return root


def test_paired_images_with_annotations_are_template_comparison_with_region_truth(tmp_path):
    summary = intake.summarize_dataset(pcb_like(tmp_path / "pcb"))
    assert summary.n_paired == summary.n_unlabeled == 3 and summary.templates
    assert "template comparison" in summary.detector_mode and "PatchCore" not in summary.detector_mode
    assert summary.has_ground_truth and summary.annotations == tmp_path / "pcb" / "annotations.json"
    notes = " ".join(summary.missing)
    assert "No ground-truth classes" not in notes and "annotations.json" in notes
    assert "PatchCore" not in notes


def test_without_annotations_or_partners_the_preview_says_so(tmp_path):
    root = pcb_like(tmp_path / "pcb", annotations=False)
    (root / "normal" / "0002_temp.png").rename(root / "normal" / "extra.png")
    summary = intake.summarize_dataset(root)
    assert not summary.templates and not summary.has_ground_truth
    assert "learns what normal looks like from the 3 normal images" in summary.detector_mode
    assert "No ground-truth classes" in " ".join(summary.missing)
