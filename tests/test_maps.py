import numpy as np
import pytest

from core.imageio import ImageReadError, write_image
from core.detection.maps import normalize_global, read_map_file, resize_to


def test_global_normalization_keeps_the_spread_of_maxima():
    weak = np.full((4, 4), 1.0, np.float32)
    weak[0, 0] = 2.0
    strong = np.full((4, 4), 1.0, np.float32)
    strong[0, 0] = 5.0
    a, b = normalize_global([weak, strong])
    assert a.dtype == np.uint8 and b.max() == 255 and a.min() == 0
    # Per-image scaling would give both maxima 255; one global scale keeps weak << strong.
    assert a.max() == round(255 / 4)


def test_constant_set_and_nan_maps():
    assert normalize_global([np.ones((3, 3))])[0].max() == 0
    bad = np.ones((3, 3), np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="map 1: map holds 1 NaN"):
        normalize_global([np.ones((3, 3)), bad])


def test_read_formats(tmp_path):
    values = (np.arange(48, dtype=np.float32).reshape(6, 8)) / 47.0
    np.save(tmp_path / "m.npy", values)
    write_image(tmp_path / "m8.png", (values * 255).round().astype(np.uint8))
    write_image(tmp_path / "m16.png", (values * 65535).round().astype(np.uint16))
    assert np.allclose(read_map_file(tmp_path / "m.npy"), values)
    assert read_map_file(tmp_path / "m8.png").max() == 255
    assert read_map_file(tmp_path / "m16.png").max() == 65535
    normalized = [normalize_global([read_map_file(tmp_path / n)])[0] for n in ("m.npy", "m8.png", "m16.png")]
    assert np.abs(normalized[0].astype(int) - normalized[1]).max() <= 1
    assert np.abs(normalized[0].astype(int) - normalized[2]).max() <= 1


def test_bad_map_files_name_the_file(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_map_file(tmp_path / "junk.png")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    with pytest.raises(ImageReadError, match="cube.npy: is not a 2-D map"):
        read_map_file(tmp_path / "cube.npy")


def test_resize_to():
    assert resize_to(np.ones((2, 3)), (4, 6)).shape == (4, 6)


def test_an_unreadable_tiff_map_names_both_readers_causes(tmp_path):
    bad = tmp_path / "map.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(ImageReadError, match=r"map\.tif: .*tifffile: "):
        read_map_file(bad)


def test_values_on_the_global_scale_match_the_normalized_maps():
    from core.detection.maps import on_global_scale

    maps = [np.array([[0.0, 1.0]], np.float32), np.array([[3.0, 4.0]], np.float32)]
    normalized = normalize_global(maps)
    assert on_global_scale([1.0, 3.0, -1.0, 9.0], maps) == [pytest.approx(normalized[0][0, 1], abs=0.5),
                                                             pytest.approx(normalized[1][0, 0], abs=0.5), 0.0, 255.0]
    assert on_global_scale([1.0], []) == [] and on_global_scale([2.0], [np.ones((2, 2))]) == [0.0]
