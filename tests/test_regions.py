import numpy as np
import pytest

from core.config import RegionConfig
from core.regions.crops import crop_boxes, extract_regions


def _mask(shape, *rects):
    mask = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in rects:
        mask[y0:y1, x0:x1] = 255
    return mask


def test_single_box_is_square_padded_and_centred():
    # 30 x 20 component at x 40..70, y 50..70 on a 200 x 200 image.
    mask = _mask((200, 200), (40, 50, 70, 70))
    (box,) = crop_boxes(mask, num_anomalies=1)
    # radius = max(int(30 * 1.1 / 2), int(200 * 0.1)) = max(16, 20) = 20; centre (55, 60)
    assert box == (35, 40, 75, 80)


def test_large_component_radius_from_padding_and_cap():
    mask = _mask((100, 100), (10, 10, 90, 90))
    (box,) = crop_boxes(mask, 1)
    # int(80 * 1.1 / 2) = 44 -> side 88, centred at 50 -> (6, 6, 94, 94)
    assert box == (6, 6, 94, 94)
    huge = _mask((100, 100), (0, 0, 100, 100))
    assert crop_boxes(huge, 1) == [(0, 0, 100, 100)]  # capped at max_side / 2


def test_box_is_shifted_inside_not_shrunk():
    mask = _mask((100, 100), (0, 0, 4, 4))
    (box,) = crop_boxes(mask, 1)
    assert box == (0, 0, 20, 20)  # min crop radius 10, shifted from (-8, -8)


def test_near_boxes_merge_and_far_boxes_sort_largest_first():
    mask = _mask((400, 400), (100, 100, 110, 110), (112, 100, 122, 110), (300, 300, 360, 340))
    boxes = crop_boxes(mask, num_anomalies=5)
    # the two close blobs: min-crop squares (side 80) overlap -> merged into one square
    assert len(boxes) == 2
    sides = [b[2] - b[0] for b in boxes]
    assert sides == sorted(sides, reverse=True)
    assert all(b[2] - b[0] == b[3] - b[1] for b in boxes)


def test_reference_keeps_estimate_plus_one():
    rects = [(10 + 60 * i, 10, 20 + 60 * i, 20) for i in range(5)]
    mask = _mask((100, 400), *rects)
    config = RegionConfig(min_crop=0.02)
    assert len(crop_boxes(mask, num_anomalies=2, config=config)) == 3
    assert len(crop_boxes(mask, num_anomalies=2, config=RegionConfig(min_crop=0.02, keep="all"))) == 5


def test_no_contour_is_whole_image():
    assert crop_boxes(np.zeros((30, 50), np.uint8), 0) == [(0, 0, 50, 30)]


def test_extract_regions_crops_area_and_score():
    image = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    mask = _mask((50, 50), (10, 10, 15, 15))  # half resolution: resized nearest to 100 x 100
    score_map = np.zeros((100, 100), np.uint8)
    score_map[25, 25] = 204
    (region,) = extract_regions("a.png", image, score_map, mask, 1, RegionConfig(extraction="reference"))
    x0, y0, x1, y1 = region.box
    assert region.image_crop.shape == (y1 - y0, x1 - x0, 3)
    assert np.array_equal(region.image_crop, image[y0:y1, x0:x1])
    assert region.area == 100  # the 5x5 blob at half size is 10x10 at image size
    assert region.score == pytest.approx(0.8)
    assert region.key == "a.png#0"


# ------------------------------------------------------------- per-component extraction

COMPONENTS = RegionConfig(extraction="components")


def _components_map() -> np.ndarray:
    """200 x 200 map: a strong blob, a weaker one, a 1-px thin line and faint noise."""
    array = np.zeros((200, 200), np.uint8)
    array[20:40, 20:40] = 240  # main element
    array[120:135, 30:45] = 150  # weaker defect, below a threshold of 200
    array[60, 100:160] = 220  # thin line: erosion would remove it
    array[180:184, 180:184] = 40  # faint speck: under the relative-peak rule
    return array


def test_components_give_every_defect_its_own_region_without_erosion():
    array = _components_map()
    regions = extract_regions("a.png", np.zeros((200, 200, 3), np.uint8), array.astype(np.float32), np.zeros_like(array),
                              1, COMPONENTS, map_u8=array, threshold=200)
    assert len(regions) == 3
    boxes = [r.box for r in regions]
    assert [r.area for r in regions] == [400, 60, 225]  # strongest peak first; the line keeps all its pixels
    side = [b[2] - b[0] for b in boxes]
    assert side[0] == 30  # crop follows the component: 20 * (1 + 0.5)
    assert side[1] == 90  # the 60 px line: 60 * 1.5
    assert side[2] == 24  # 15 px blob: at least min_side
    for region in regions:  # each mask holds only its own component
        x0, y0, x1, y1 = region.box
        assert ((region.mask_crop > 0) <= (array[y0:y1, x0:x1] > 100)).all()


def test_components_without_a_stable_threshold_still_find_the_defect():
    array = _components_map()
    regions = extract_regions("a.png", np.zeros((200, 200, 3), np.uint8), array.astype(np.float32), np.zeros_like(array),
                              0, COMPONENTS, map_u8=array, threshold=255)
    assert len(regions) >= 1 and regions[0].area == 400


def test_components_on_an_empty_map_give_the_whole_image():
    array = np.zeros((50, 60), np.uint8)
    (region,) = extract_regions("a.png", np.zeros((50, 60, 3), np.uint8), array.astype(np.float32), array, 0,
                                COMPONENTS, map_u8=array, threshold=255)
    assert region.box == (0, 0, 60, 50) and region.area == 0


def test_components_need_the_map_and_threshold_and_check_settings():
    array = _components_map()
    with pytest.raises(ValueError, match="needs the uint8 map"):
        extract_regions("a.png", np.zeros((200, 200, 3), np.uint8), array.astype(np.float32), array, 1, COMPONENTS)
    with pytest.raises(ValueError, match="extraction must be one of"):
        RegionConfig(extraction="everything")


def test_components_join_close_parts_drop_the_noise_floor_and_tighten_blobs():
    """Parts closer than join_distance are one region; the cut never reaches the set's background."""
    from core.regions.crops import component_boxes, noise_floor

    field = np.full((200, 200), 10, np.uint8)  # a detector's noise floor
    field[50:54, 40:60] = 200  # a broken trace: two parts 3 px apart ...
    field[50:54, 63:80] = 200
    field[150:154, 150:154] = 14  # ... and a faint bump just above the background
    joined = component_boxes(field, 100, RegionConfig(join_distance=0.02, relative_peak=0.0))
    assert len(joined) == 1 and np.count_nonzero(joined[0][1]) == 4 * 20 + 4 * 17
    apart = component_boxes(field, 100, RegionConfig(join_distance=0.0, relative_peak=0.0))
    assert len(apart) == 2
    floor = noise_floor([field], RegionConfig().noise_z)
    assert 10 < floor < 200
    low = RegionConfig(low_fraction=0.01, relative_peak=0.0, join_distance=0.0)
    assert len(component_boxes(field, 100, low, floor)) == 2  # the bump is left out ...
    assert len(component_boxes(np.maximum(field, 11), 100, low, 0.0)) == 1  # ... a cut below it takes the whole image
    blob = np.zeros((100, 100), np.uint8)
    yy, xx = np.mgrid[:100, :100]
    blob[:] = np.clip(200 * np.exp(-((yy - 50) ** 2 + (xx - 50) ** 2) / 200.0), 0, 255).astype(np.uint8)
    wide = component_boxes(blob, 40, RegionConfig(mask_fraction=0.0))[0][1]
    tight = component_boxes(blob, 40, RegionConfig(mask_fraction=0.6))[0][1]
    assert 0 < np.count_nonzero(tight) < 0.5 * np.count_nonzero(wide)


def test_the_floor_comes_from_held_out_normal_peaks_when_the_detector_scored_some():
    """Smooth maps of a textured part: the pixel spread is small, so median + 8 spreads sits above a
    faint defect; the normal images' own peaks put the floor where a defect-free part really reaches."""
    from core.detection.maps import normalize_global, on_global_scale
    from core.regions.crops import component_boxes, normal_floor, set_floor

    rng = np.random.default_rng(0)
    raw = [np.clip(rng.normal(1.0, 0.05, (64, 64)), 0, None).astype(np.float32) for _ in range(6)]
    raw[0][20:26, 20:26] = 1.3  # a faint defect: above a normal image's peak (about 1.2), below median + 8 spreads (1.4)
    raw[1][40:44, 40:44] = 4.0  # a strong one sets the scale
    maps = normalize_global(raw)
    peaks = on_global_scale([1.18, 1.2, 1.22, 1.19, 3.5], raw)  # one normal image with a bright corner
    assert all(0 < p < 255 for p in peaks)
    spread = 1.4826 * np.median(np.abs(np.array(peaks) - np.median(peaks)))
    assert normal_floor(peaks, 2.0) == pytest.approx(np.median(peaks) + 2.0 * spread)
    assert normal_floor(peaks, 2.0) < peaks[-1]
    assert normal_floor(peaks[:2], 2.0) is None  # too few to tell
    config = RegionConfig(relative_peak=0.0)
    pixel = set_floor(maps, [], config)
    normal = set_floor(maps, peaks, config)
    assert normal < maps[0][20:26, 20:26].min() < pixel  # only the normal images' floor lets the faint defect in
    assert component_boxes(maps[0], 255, config, pixel) == []
    (found,) = component_boxes(maps[0], 255, config, normal)
    x0, y0, x1, y1 = found[0]
    assert x0 <= 20 and y0 <= 20 and x1 >= 26 and y1 >= 26


def test_an_image_with_nothing_above_the_floor_gets_its_strongest_spot_as_a_weak_region():
    """A faint defect that the map localizes but that stays below what normal images reach: the
    'peak' fallback cuts the map's own strongest spot (marked weak), 'whole' keeps the old placeholder,
    and an engineer's exact threshold (recut_image) never invents a region."""
    from dataclasses import replace

    from core.config import MEBinConfig
    from core.regions.crops import recut_image

    rng = np.random.default_rng(1)
    field = np.clip(rng.normal(20, 2, (120, 160)), 0, 255).astype(np.uint8)
    field[60:66, 100:130] = 34  # the faint defect: the map's peak, under the floor of 40
    image = np.zeros((120, 160, 3), np.uint8)
    config = replace(COMPONENTS, refine="none")
    (spot,) = extract_regions("a.png", image, field.astype(np.float32), np.zeros_like(field), 0, config,
                              map_u8=field, threshold=255, floor=40.0)
    x0, y0, x1, y1 = spot.box
    assert spot.weak and x0 <= 100 and y0 <= 60 and x1 >= 130 and y1 >= 66
    assert 150 <= spot.area <= 200  # the defect's 180 pixels, not the noise around it
    (whole,) = extract_regions("a.png", image, field.astype(np.float32), np.zeros_like(field), 0,
                               replace(config, fallback="whole"), map_u8=field, threshold=255, floor=40.0)
    assert whole.weak and whole.box == (0, 0, 160, 120) and whole.area == 0
    (strong,) = extract_regions("a.png", image, field.astype(np.float32), np.zeros_like(field), 0, config,
                                map_u8=field, threshold=255, floor=30.0)
    assert not strong.weak and strong.area >= 150  # above the floor: an ordinary region
    _, _, exact = recut_image("a.png", image, field, 200, (0, 255), MEBinConfig(), config, floor=40.0)
    assert len(exact) == 1 and exact[0].area == 0  # nothing above the engineer's 200 stays nothing
    with pytest.raises(ValueError, match="fallback must be one of"):
        RegionConfig(fallback="guess")
