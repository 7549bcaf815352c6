"""COCO region-level truth: overlap rules, normal for unmatched, polygons and boxes, bad input named."""

import json

import numpy as np
import pytest

from core.evaluation.coco import CocoError, find_annotations, labeled_crops_from_coco, load_coco, match_regions, region_coverage
from core.records import NORMAL_CLASS, Region

SIZES = {"images/a.png": (100, 100), "images/b.png": (50, 80)}


def _write(tmp_path, data) -> object:
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _coco(**extra):
    data = {
        "images": [{"id": 1, "file_name": "images/a.png", "width": 100, "height": 100},
                   {"id": 2, "file_name": "b.png", "width": 80, "height": 50}],
        "categories": [{"id": 7, "name": "scratch"}, {"id": 8, "name": "hole"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20]},
            # a triangle polygon whose box overlaps the first box's right part
            {"id": 2, "image_id": 1, "category_id": 8, "bbox": [25, 10, 30, 30],
             "segmentation": [[40, 10, 55, 40, 25, 40]]},
            {"id": 3, "image_id": 2, "category_id": 8, "bbox": [0, 0, 10, 10]},
        ],
    }
    data.update(extra)
    return data


def _region(image: str, index: int, box, mask=None) -> Region:
    x0, y0, x1, y1 = box
    mask = np.full((y1 - y0, x1 - x0), 255, np.uint8) if mask is None else mask
    return Region(image, index, box, np.zeros((*mask.shape, 3), np.uint8), mask, int((mask > 0).sum()), 1.0)


def test_region_takes_the_class_it_overlaps_most_and_none_is_normal(tmp_path):
    truth = load_coco(_write(tmp_path, _coco()), SIZES)
    assert truth.problems == [] and truth.categories == ["scratch", "hole"]
    regions = [
        _region("images/a.png", 0, (12, 12, 28, 28)),  # inside the scratch box only
        _region("images/a.png", 1, (26, 20, 56, 41)),  # mostly inside the hole triangle
        _region("images/a.png", 2, (70, 70, 90, 90)),  # nowhere: a false detection
        _region("images/b.png", 0, (0, 0, 4, 4)),  # matched through the file name alone
    ]
    matches = match_regions(regions, truth, SIZES)
    assert [m.gt for m in matches] == ["scratch", "hole", NORMAL_CLASS, "hole"]
    assert matches[2].annotation is None and matches[2].overlap == 0


def test_polygon_shape_not_its_box_decides(tmp_path):
    truth = load_coco(_write(tmp_path, _coco()), SIZES)
    # (26..30, 10..14) lies in the hole's box but outside its triangle, and inside the scratch box
    matches = match_regions([_region("images/a.png", 0, (26, 10, 30, 14))], truth, SIZES)
    assert matches[0].gt == "scratch"


def test_region_mask_pixels_count_not_its_box(tmp_path):
    truth = load_coco(_write(tmp_path, _coco()), SIZES)
    mask = np.zeros((30, 40), np.uint8)
    mask[20:, 30:] = 255  # only the lower right corner (x 40..50, y 30..40) holds mask pixels: hole triangle
    matches = match_regions([_region("images/a.png", 0, (10, 10, 50, 40), mask)], truth, SIZES)
    assert matches[0].gt == "hole"


def test_coverage_counts_defects_seen_and_regions_on_defects(tmp_path):
    truth = load_coco(_write(tmp_path, _coco()), SIZES)
    regions = [_region("images/a.png", 0, (12, 12, 28, 28)), _region("images/a.png", 1, (70, 70, 90, 90))]
    coverage = region_coverage(match_regions(regions, truth, SIZES), truth)
    assert coverage["annotations"] == 3 and coverage["covered"] == 1
    assert coverage["recall"] == pytest.approx(1 / 3) and coverage["precision"] == pytest.approx(0.5)


def test_bad_entries_are_named_in_one_message_and_the_rest_used(tmp_path):
    data = _coco()
    data["images"].append({"id": 9, "file_name": "images/gone.png"})
    data["annotations"] += [
        {"id": 4, "image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2]},  # unknown category
        {"id": 5, "image_id": 2, "category_id": 7, "bbox": [70, 40, 30, 30]},  # reaches outside: clipped
        {"id": 6, "image_id": 2, "category_id": 7, "bbox": [200, 200, 5, 5]},  # entirely outside: dropped
        {"id": 7, "image_id": 9, "category_id": 7, "bbox": [1, 1, 2, 2]},  # image not in the data set
    ]
    truth = load_coco(_write(tmp_path, data), SIZES)
    message = truth.problem_summary()
    assert "annotations.json" in message
    assert "gone.png" in message and "unknown category ids (99)" in message and "outside their image" in message
    assert sorted(a.id for a in truth.annotations) == [1, 2, 3, 5]
    clipped = next(a for a in truth.annotations if a.id == 5)
    assert clipped.box == (70, 40, 80, 50)


@pytest.mark.parametrize("content, words", [("", "empty"), ("{not json", "not valid JSON"),
                                            ('{"images": []}', "not a COCO file"),
                                            ('{"images": [], "annotations": [], "categories": []}', "no usable")])
def test_unusable_files_raise_naming_the_file(tmp_path, content, words):
    with pytest.raises(CocoError, match=words) as error:
        load_coco(_write(tmp_path, content), SIZES)
    assert "annotations.json" in str(error.value)


def test_annotations_file_is_found_at_the_root_or_given(tmp_path):
    assert find_annotations(tmp_path) is None
    path = _write(tmp_path, _coco())
    assert find_annotations(tmp_path) == path
    with pytest.raises(CocoError, match="does not exist"):
        find_annotations(tmp_path, tmp_path / "other.json")


def test_annotations_become_a_labeled_set(tmp_path):
    truth = load_coco(_write(tmp_path, _coco()), SIZES)
    images = {"images/a.png": np.zeros((100, 100, 3), np.uint8), "images/b.png": np.zeros((50, 80, 3), np.uint8)}
    labeled = labeled_crops_from_coco(truth, images)
    assert labeled.base_classes == ["scratch", "hole"]
    assert list(labeled.labels) == [0, 1, 1]
    for crop, mask in zip(labeled.crops, labeled.masks):
        assert crop.shape[:2] == mask.shape and crop.shape[0] == crop.shape[1] and (mask > 0).any()


def test_labeled_set_file_names_unreadable_and_missing_images_and_uses_the_rest(tmp_path):
    import cv2

    from core.evaluation.coco import labeled_crops_from_file

    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.full((100, 100, 3), 90, np.uint8))
    (tmp_path / "b.png").write_bytes(b"not an image at all")
    data = _coco()
    data["images"].append({"id": 3, "file_name": "gone.png", "width": 10, "height": 10})
    data["annotations"].append({"id": 4, "image_id": 3, "category_id": 7, "bbox": [0, 0, 5, 5]})
    labeled, left_out = labeled_crops_from_file(_write(tmp_path, data))
    assert list(labeled.labels) == [0, 1]  # the two annotations of the one readable image
    assert "annotations.json" in left_out
    assert "could not be read" in left_out and "b.png" in left_out
    assert "gone.png" in left_out


def test_box_scores_read_the_file_through_load_coco(tmp_path):
    """Boxes score a detector's maps through the one COCO reader: images the file lists count (one
    without annotations is all normal pixels), maps of images it does not list are left out."""
    from core.detection.boxes import box_scores, coco_truth_for_maps

    maps = {name: np.zeros((20, 20), np.float32) for name in ("a.png", "b.png", "c.png")}
    maps["a.png"][2:6, 2:6] = 1.0  # the first box's defect stands out; the second box is flat
    maps["c.png"][:] = 9.0  # not in the file: were it scored, its pixels would set the threshold
    path = _write(tmp_path, {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "short"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 4, 4]},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [12, 12, 4, 4]}],
    })
    truth = coco_truth_for_maps(path, maps)
    assert truth.images == ["a.png", "b.png"] and [a.box for a in truth.by_image["a.png"]] == [(2, 2, 6, 6), (12, 12, 16, 16)]
    scores = box_scores(maps, truth)
    assert scores["defects"] == 2 and scores["defect_recall"] == 0.5 and scores["threshold"] == 0.0
    # 32 box pixels (16 at 1, 16 at 0) against 768 normal pixels at 0, 400 of them from b.png
    assert scores["pixel_auroc"] == pytest.approx(0.75)  # the 16 flat box pixels tie with the normal ones
