"""MEBin: the fast path against the plain OpenCV oracle, hand-made cases, and input checks."""

from __future__ import annotations

import warnings
from dataclasses import asdict

import cv2
import numpy as np
import pytest

from core.config import MEBinConfig
from core.regions.mebin import binarize, binarize_reference, stable_interval
from core.regions.kernels import level_counts, stable_interval_kernel

# ----------------------------------------------------------------------------- map generators


def _blobs(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Gaussian-blurred random points: smooth blobs of many counts and sizes."""
    image = np.zeros((height, width), np.float32)
    count = int(rng.integers(0, 12))
    ys, xs = rng.integers(0, height, count), rng.integers(0, width, count)
    image[ys, xs] = rng.uniform(0.2, 1.0, count)
    image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.7, 6.0)))
    if rng.random() < 0.5:
        image += rng.uniform(0, 0.05) * image.max() * rng.random((height, width), dtype=np.float32)
    return image


def _noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.random((height, width), dtype=np.float32) * rng.uniform(0.1, 1.0)


def _single_pixels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """1-pixel features on a low background (erosion removes them; erode=False keeps them)."""
    image = rng.random((height, width), dtype=np.float32) * 0.1
    count = int(rng.integers(1, 20))
    image[rng.integers(0, height, count), rng.integers(0, width, count)] = rng.uniform(0.5, 1, count)
    return image


def _border_blobs(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blobs centred on edges and corners, where erosion's border handling matters."""
    image = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(1, 6))):
        y = int(rng.choice([0, height - 1, int(rng.integers(0, height))]))
        x = int(rng.choice([0, width - 1])) if rng.random() < 0.7 else int(rng.integers(0, width))
        image[y, x] = rng.uniform(0.3, 1.0)
    return cv2.GaussianBlur(image, (0, 0), float(rng.uniform(1.0, 5.0)))


def _plateaus(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Nested flat rectangles and a diagonal checkerboard: flat levels and 8-connectivity."""
    image = np.zeros((height, width), np.float32)
    for level in range(int(rng.integers(1, 6))):
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        y1, x1 = y0 + int(rng.integers(1, height + 1)), x0 + int(rng.integers(1, width + 1))
        image[y0:y1, x0:x1] = max(image[y0:y1, x0:x1].max(), rng.uniform(0.1, 1.0))
    if rng.random() < 0.3:
        checker = (np.indices((height, width)).sum(axis=0) // int(rng.integers(1, 9))) % 2
        image = np.maximum(image, checker * rng.uniform(0.1, 1.0))
    return image


def _constant(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return np.full((height, width), rng.uniform(0, 1), np.float32)


GENERATORS = [_blobs, _blobs, _blobs, _noise, _single_pixels, _border_blobs, _plateaus, _constant]


def _make_set(seed: int, size: int) -> list[np.ndarray]:
    """One data set of uint8 maps with spread maxima (MEBin's range is per set)."""
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(size):
        if rng.random() < 0.15:
            height, width = int(rng.integers(1, 12)), int(rng.integers(1, 12))  # tiny, non-square
        else:
            height, width = int(rng.integers(32, 97)), int(rng.integers(32, 97))
        generator = GENERATORS[int(rng.integers(0, len(GENERATORS)))]
        image = generator(rng, height, width)
        peak = float(image.max())
        scale = rng.uniform(40, 255) / peak if peak > 0 else 0.0
        maps.append(np.clip(image * scale, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        maps.append(np.zeros((int(rng.integers(5, 40)), int(rng.integers(5, 40))), np.uint8))
    return maps


def _assert_same(fast, oracle) -> None:
    assert len(fast) == len(oracle)
    for index, (a, b) in enumerate(zip(fast, oracle)):
        where = f"map {index}"
        assert np.array_equal(a.counts, b.counts), where
        assert a.num_anomalies == b.num_anomalies, where
        assert a.interval == b.interval, where
        assert a.threshold == b.threshold, where
        assert isinstance(a.threshold, int) and isinstance(a.num_anomalies, int), where
        assert a.mask.dtype == np.uint8 and a.mask.shape == b.mask.shape, where
        assert np.array_equal(a.mask, b.mask), where
        assert np.array_equal(a.sweep_thresholds, b.sweep_thresholds), where
        assert a.normalized.dtype == np.float32
        assert np.array_equal(a.normalized, b.normalized), where


# ----------------------------------------------------------------------------- fast == oracle


def test_fast_path_matches_oracle_on_varied_maps():
    total = 0
    interesting = set()
    for seed in range(16):
        maps = _make_set(seed, 14)
        total += len(maps)
        fast = binarize(maps, workers=1)
        _assert_same(fast, binarize_reference(maps))
        interesting.update(result.num_anomalies for result in fast)
    assert total >= 200
    # The data must exercise real answers, not only "no anomaly".
    assert {0, 1, 2, 3} <= interesting and max(interesting) >= 4


@pytest.mark.parametrize(
    "config",
    [
        MEBinConfig(erode=False),
        MEBinConfig(sample_rate=1, min_interval_len=6),
        MEBinConfig(sample_rate=7, min_interval_len=2),
        MEBinConfig(kernel_size=3),
        MEBinConfig(kernel_size=1, min_interval_len=1),
    ],
)
def test_fast_path_matches_oracle_for_other_settings(config: MEBinConfig):
    for seed in (100, 101, 102):
        maps = _make_set(seed, 10)
        _assert_same(binarize(maps, workers=1, **asdict(config)), binarize_reference(maps, config))


def test_thread_pool_gives_the_same_results_in_order():
    maps = _make_set(7, 20)
    _assert_same(binarize(maps, workers=3), binarize(maps, workers=1))
    _assert_same(binarize(maps), binarize(maps, workers=1))


def test_maps_of_different_shapes_and_non_contiguous_views():
    rng = np.random.default_rng(5)
    base = [(_blobs(rng, 80, 64) * 255 / 1.0).clip(0, 255).astype(np.uint8) for _ in range(4)]
    maps = [base[0], base[1].T, base[2][::2, 1::3], base[3][:7, :90]]
    _assert_same(binarize(maps), binarize_reference(maps))


def test_level_counts_equal_opencv_labelling_at_every_level():
    rng = np.random.default_rng(3)
    for generator in GENERATORS:
        image = (generator(rng, 37, 53) * 255 / max(1e-6, generator(rng, 37, 53).max())).clip(0, 255)
        image = image.astype(np.uint8)
        counts = level_counts(image, 0)
        for level in range(0, 256, 5):
            labels, _ = cv2.connectedComponents((image >= level).astype(np.uint8), connectivity=8)
            assert counts[level] == labels - 1, level


def test_grayscale_erosion_equals_binary_erosion_on_the_border():
    """The speed-up's premise, checked on OpenCV itself: min-filter then cut == cut then erode."""
    rng = np.random.default_rng(11)
    kernel = np.ones((6, 6), np.uint8)
    for shape in [(1, 1), (2, 9), (5, 5), (6, 7), (31, 17)]:
        image = rng.integers(0, 256, shape).astype(np.uint8)
        eroded = cv2.erode(image, kernel)
        for cut in (0, 1, 100, 200, 255):
            binary = np.where(image >= cut, 255, 0).astype(np.uint8)
            assert np.array_equal(cv2.erode(binary, kernel), np.where(eroded >= cut, 255, 0))


# ----------------------------------------------------------------------------- step 4


def _reference_style_interval(counts: list[int], min_len: int):
    """Independent transcription of the reference's rule: lists of runs, stable sort on length."""
    runs: dict[int, list[tuple[int, int]]] = {}
    i = 0
    while i < len(counts):
        j = i
        while j < len(counts) - 1 and counts[j] == counts[j + 1]:
            j += 1
        if counts[i] != 0 and j - i + 1 >= min_len:
            runs.setdefault(counts[i], []).append((i, j))
        i = j + 1
    if not runs:
        return None
    longest = {value: max(e - s for s, e in spans) for value, spans in runs.items()}
    value = max(longest, key=longest.get)
    return value, sorted(runs[value], key=lambda span: span[1] - span[0])[-1]


def test_stable_interval_follows_the_reference_rule_including_ties():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        counts = rng.integers(0, 4, int(rng.integers(1, 40))).repeat(rng.integers(1, 7, 1)).tolist()
        counts = [c for c in counts for _ in range(int(rng.integers(1, 4)))][:64]
        min_len = int(rng.integers(1, 6))
        expected = _reference_style_interval(counts, min_len)
        assert stable_interval(counts, min_len) == expected
        value, start, end = stable_interval_kernel(np.array(counts, np.int64), min_len)
        assert (None if start < 0 else (value, (start, end))) == expected


def test_stable_interval_hand_cases():
    # Ties between values: the first to appear wins; ties within a value: the later run.
    assert stable_interval([0, 2, 2, 2, 2, 1, 1, 1, 1, 0], 4) == (2, (1, 4))
    assert stable_interval([1, 1, 1, 1, 3, 1, 1, 1, 1], 4) == (1, (5, 8))
    assert stable_interval([5, 5, 5, 0, 0, 0, 0], 4) is None
    assert stable_interval([1, 1, 2, 2, 2, 2, 2, 1, 1, 1, 1], 4) == (2, (2, 6))


# ----------------------------------------------------------------------------- known answers


def _three_blobs() -> np.ndarray:
    image = np.zeros((96, 128), np.float32)
    for y, x in [(20, 20), (70, 60), (30, 105)]:
        image[y, x] = 1.0
    image = cv2.GaussianBlur(image, (0, 0), 5.0)
    return (image / image.max() * 250).astype(np.uint8)


@pytest.mark.parametrize("run", [binarize, binarize_reference])
def test_three_separated_blobs_give_three_anomalies(run):
    weak = (_three_blobs().astype(np.float32) * 0.2).astype(np.uint8)  # sets s_min below s_max
    result = run([_three_blobs(), weak])[0]
    assert result.num_anomalies == 3
    labels, _ = cv2.connectedComponents(result.mask, connectivity=8)
    assert labels - 1 == 3
    assert set(np.unique(result.mask)) == {0, 255}
    assert result.counts[result.interval[0] : result.interval[1] + 1].tolist() == [3] * (
        result.interval[1] - result.interval[0] + 1
    )


def test_threshold_uses_exact_arithmetic_not_uint8_wraparound():
    """Step 5 with s_min=50, s_max=250: uint8 scalar arithmetic (NumPy 2) would wrap mod 256."""
    low = (_three_blobs().astype(np.float32) * 0.2).astype(np.uint8)
    maps = [_three_blobs(), low]
    s_min, s_max = int(low.max()), int(_three_blobs().max())
    assert (s_min, s_max) == (50, 250)
    for result in (binarize(maps)[0], binarize_reference(maps)[0]):
        t_star = 255 - result.interval[1] * 4
        expected = int(t_star * (s_max - s_min) / 255 + s_min)
        assert result.threshold == expected
        if np.__version__ >= "2":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wrapped = int(t_star * (np.uint8(s_max) - np.uint8(s_min)) / 255 + np.uint8(s_min))
            assert wrapped != expected  # this case really exercises the trap
        assert np.array_equal(result.mask, cv2.erode(np.where(maps[0] > expected, 255, 0).astype(np.uint8), np.ones((6, 6), np.uint8)))


def test_normalized_map_is_the_step_2_scale():
    maps = [np.array([[0, 50, 100], [150, 200, 250]], np.uint8), np.full((2, 2), 100, np.uint8)]
    result = binarize(maps)[0]
    values = maps[0].astype(np.float64)
    expected = np.where(values < 100, 0, (values - 100) / 150 * 255).astype(np.float32)
    assert np.array_equal(result.normalized, expected)
    assert result.sweep_thresholds.tolist() == list(range(255, 0, -4))
    assert len(result.counts) == 64


def test_constant_maps_at_the_top_are_one_whole_image_anomaly():
    maps = [np.full((20, 30), 200, np.uint8), np.full((10, 10), 40, np.uint8)]
    for results in (binarize(maps), binarize_reference(maps)):
        top, bottom = results
        assert top.counts[0] == 0 and (top.counts[1:] == 1).all()
        assert top.num_anomalies == 1 and top.interval == (1, 63)
        assert top.threshold == int(3 * 160 / 255 + 40)
        assert (top.mask == 255).all()
        assert bottom.num_anomalies == 0 and bottom.threshold == 255 and not bottom.mask.any()


def test_equal_maxima_do_not_divide_by_zero():
    """s_max == s_min (one map, or all maps with the same maximum): no anomaly, no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for maps in ([_three_blobs()], [np.zeros((8, 8), np.uint8)] * 3, [np.full((4, 5), 9, np.uint8)]):
            for results in (binarize(maps), binarize_reference(maps)):
                for result in results:
                    assert result.num_anomalies == 0 and result.threshold == 255
                    assert result.interval is None and not result.counts.any()
                    assert not result.mask.any() and not result.normalized.any()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "maps, message",
    [
        ([np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.uint8)], "map 1: expected a 2-D map"),
        ([np.zeros((4, 4), np.uint8)] * 2 + [np.zeros((4, 4), np.float32)], "map 2: expected dtype uint8"),
        ([np.zeros((0, 5), np.uint8)], "map 0: empty map"),
        ([np.zeros((4, 4), np.uint8), [[1, 2]]], "map 1: expected a numpy array"),
        ([], "no maps"),
        (np.zeros((4, 4), np.uint8), "not one map"),
    ],
)
def test_bad_input_names_the_map(maps, message):
    for run in (binarize, binarize_reference):
        with pytest.raises(ValueError, match=message):
            run(maps)


def test_bad_settings_are_rejected():
    maps = [np.zeros((4, 4), np.uint8)]
    with pytest.raises(ValueError, match="sample_rate"):
        binarize(maps, sample_rate=0)
    with pytest.raises(ValueError, match="min_interval_len"):
        binarize(maps, min_interval_len=0)
