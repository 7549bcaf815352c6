"""Importing anomaly maps from any detector: formats, sizes, matching and every named problem."""

import numpy as np
import pytest
import tifffile

from core.dataset import load_dataset
from core.detection import MapImportError, import_maps
from core.imageio import write_image
from core.detection.maps import normalize_global


def _dataset(root, size=(48, 64), names=("a", "b", "c")):
    rng = np.random.default_rng(0)
    for name in names:
        write_image(root / "images" / f"{name}.png", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return load_dataset(root / "images")


def _raw_maps(size=(24, 32)):
    yy, xx = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
    return {
        "a": 0.1 + 0.5 * np.exp(-((yy - 6) ** 2 + (xx - 8) ** 2) / 20.0),
        "b": 0.1 + 0.9 * np.exp(-((yy - 15) ** 2 + (xx - 20) ** 2) / 30.0),
        "c": 0.1 + 0.2 * np.exp(-((yy - 12) ** 2 + (xx - 16) ** 2) / 50.0),
    }


def _write(folder, raw, fmt):
    folder.mkdir(parents=True, exist_ok=True)
    for name, values in raw.items():
        if fmt == "npy":
            np.save(folder / f"{name}.npy", values)
        elif fmt == "tiff":
            tifffile.imwrite(folder / f"{name}.tif", values.astype(np.float32))
        elif fmt == "png8":
            write_image(folder / f"{name}.png", np.rint(values * 255).astype(np.uint8))
        elif fmt == "png16":
            write_image(folder / f"{name}.png", np.rint(values * 65535).astype(np.uint16))


def test_formats_and_sizes_give_the_same_normalized_maps(tmp_path):
    manifest = _dataset(tmp_path)
    raw = _raw_maps()
    normalized = {}
    for fmt in ("npy", "tiff", "png8", "png16"):
        _write(tmp_path / fmt, raw, fmt)
        imported = import_maps(manifest.images, tmp_path / fmt)
        assert not imported.problems
        keys = sorted(imported.maps)
        assert keys == ["a.png", "b.png", "c.png"]
        assert all(imported.maps[k].shape == (48, 64) and imported.maps[k].dtype == np.float32 for k in keys)
        normalized[fmt] = np.stack(normalize_global([imported.maps[k] for k in keys])).astype(int)
    for fmt in ("tiff", "png8", "png16"):
        assert np.abs(normalized[fmt] - normalized["npy"]).max() <= 2, fmt
    # One global scale: the weak map's peak stays well below the strong one's.
    assert normalized["npy"][2].max() < 0.4 * normalized["npy"][1].max()

    # Full-size maps and half-size maps of the same function agree after resizing.
    yy, xx = (np.mgrid[0:48, 0:64].astype(np.float32) + 0.5) / 2 - 0.5  # pixel-centre alignment
    full = {"a": 0.1 + 0.5 * np.exp(-((yy - 6) ** 2 + (xx - 8) ** 2) / 20.0),
            "b": 0.1 + 0.9 * np.exp(-((yy - 15) ** 2 + (xx - 20) ** 2) / 30.0),
            "c": 0.1 + 0.2 * np.exp(-((yy - 12) ** 2 + (xx - 16) ** 2) / 50.0)}
    _write(tmp_path / "full", full, "npy")
    imported = import_maps(manifest.images, tmp_path / "full")
    big = np.stack(normalize_global([imported.maps[k] for k in sorted(imported.maps)])).astype(int)
    assert np.abs(big - normalized["npy"]).max() <= 6
    assert np.abs(big - normalized["npy"]).mean() < 1


def test_matching_by_path_suffix_and_unique_stem(tmp_path):
    root = tmp_path / "set"
    rng = np.random.default_rng(1)
    for rel in ("test/crack/000.png", "test/stain/000.png", "test/stain/unique.png"):
        write_image(root / rel, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    manifest = load_dataset(root)
    maps = tmp_path / "maps"
    (maps / "crack").mkdir(parents=True)
    (maps / "stain").mkdir()
    np.save(maps / "crack" / "000.npy", np.ones((8, 8), np.float32) * np.arange(8))
    np.save(maps / "stain" / "000.npy", np.ones((8, 8), np.float32) * np.arange(8)[::-1].copy())
    np.save(maps / "unique.npy", np.eye(8, dtype=np.float32))
    imported = import_maps(manifest.unlabeled, maps)
    assert sorted(imported.maps) == ["test/crack/000.png", "test/stain/000.png", "test/stain/unique.png"]
    assert imported.maps["test/crack/000.png"][0, 0] < imported.maps["test/crack/000.png"][0, -1]
    assert imported.maps["test/stain/000.png"][0, 0] > imported.maps["test/stain/000.png"][0, -1]


def test_every_bad_map_is_named(tmp_path):
    manifest = _dataset(tmp_path, names=("good", "nan", "flat", "wide", "junk", "missing", "dup"))
    maps = tmp_path / "maps"
    maps.mkdir()
    ok = np.random.default_rng(2).random((24, 32)).astype(np.float32)
    np.save(maps / "good.npy", ok)
    bad = ok.copy()
    bad[3, 4] = np.nan
    bad[5, 6] = np.inf
    np.save(maps / "nan.npy", bad)
    np.save(maps / "flat.npy", np.full((24, 32), 0.5, np.float32))
    np.save(maps / "wide.npy", np.random.default_rng(3).random((24, 64)).astype(np.float32))
    (maps / "junk.png").write_bytes(b"not a png")
    np.save(maps / "extra.npy", ok)
    np.save(maps / "dup.npy", ok)
    write_image(maps / "dup.png", np.rint(ok * 255).astype(np.uint8))

    with pytest.raises(MapImportError) as raised:
        import_maps(manifest.images, maps)
    message = str(raised.value)
    expected = {
        "nan.npy": "invalid values: map holds 2 NaN or infinite values",
        "flat.npy": "constant map",
        "wide.npy": "aspect ratio differs",
        "junk.png": "unreadable map",
        "missing.png": "missing map",
        "extra.npy": "extra map",
        "dup.png": "duplicate maps",
    }
    for name, reason in expected.items():
        assert any(name in line and reason in line for line in message.splitlines()), (name, message)
    assert len(raised.value.problems) == len(expected)

    lenient = import_maps(manifest.images, maps, strict=False)
    assert len(lenient.problems) == len(expected)
    # Usable maps come back (a constant map is usable: "nothing anomalous"); broken ones do not.
    assert sorted(lenient.maps) == ["flat.png", "good.png"]
    assert np.allclose(lenient.maps["good.png"], ok.repeat(2, 0).repeat(2, 1), atol=0.6)


def test_ambiguous_stems_are_reported(tmp_path):
    root = tmp_path / "set"
    for rel in ("test/crack/000.png", "test/stain/000.png"):
        write_image(root / rel, np.zeros((8, 8, 3), np.uint8))
    manifest = load_dataset(root)
    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / "000.npy", np.eye(8, dtype=np.float32))
    with pytest.raises(MapImportError, match=r"000.npy: ambiguous map: its name matches 2 images"):
        import_maps(manifest.unlabeled, maps)


def test_missing_folder(tmp_path):
    manifest = _dataset(tmp_path, names=("a",))
    with pytest.raises(MapImportError, match="maps folder does not exist"):
        import_maps(manifest.images, tmp_path / "nowhere")
