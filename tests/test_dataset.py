import numpy as np
import pytest

from core.dataset import DatasetError, load_dataset
from core.imageio import ImageReadError, read_image, write_image
from core.records import ROLE_NORMAL, ROLE_UNLABELED


def _img(seed=0, shape=(12, 16, 3), dtype=np.uint8):
    high = 65535 if dtype == np.uint16 else 255
    return np.random.default_rng(seed).integers(0, high, shape, dtype=dtype)


def test_mvtec_layout(tmp_path):
    write_image(tmp_path / "train/good/000.png", _img(1))
    write_image(tmp_path / "test/good/000.png", _img(2))
    write_image(tmp_path / "test/scratch/000.png", _img(3))
    write_image(tmp_path / "test/scratch/001.png", _img(4))
    write_image(tmp_path / "ground_truth/scratch/000_mask.png", np.zeros((12, 16), np.uint8))
    write_image(tmp_path / "ground_truth/scratch/001.png", np.zeros((12, 16), np.uint8))
    manifest = load_dataset(tmp_path)
    assert manifest.layout == "mvtec"
    assert [r.relpath for r in manifest.normal] == ["train/good/000.png"]
    by_path = {r.relpath: r for r in manifest.unlabeled}
    assert set(by_path) == {"test/good/000.png", "test/scratch/000.png", "test/scratch/001.png"}
    assert by_path["test/scratch/000.png"].gt_class == "scratch"
    assert by_path["test/scratch/000.png"].gt_mask_path.name == "000_mask.png"
    assert by_path["test/scratch/001.png"].gt_mask_path.name == "001.png"
    assert by_path["test/good/000.png"].gt_mask_path is None
    assert by_path["test/good/000.png"].size == (12, 16)
    assert manifest.has_ground_truth()


def test_plain_folder_formats_unicode_and_corrupt_files(tmp_path):
    write_image(tmp_path / "a.png", _img(1))
    write_image(tmp_path / "b.jpg", _img(2))
    write_image(tmp_path / "c.bmp", _img(3))
    write_image(tmp_path / "d.tiff", _img(4, (12, 16), np.uint16))
    write_image(tmp_path / "gray_ü_检查.png", _img(5, (12, 16)))
    write_image(tmp_path / "sub/e16.png", _img(6, (12, 16, 3), np.uint16))
    write_image(tmp_path / "normal/ref.png", _img(7))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    manifest = load_dataset(tmp_path)
    assert manifest.layout == "folder"
    assert [r.relpath for r in manifest.normal] == ["normal/ref.png"]
    names = sorted(r.relpath for r in manifest.unlabeled)
    assert names == ["a.png", "b.jpg", "c.bmp", "d.tiff", "gray_ü_检查.png", "sub/e16.png"]
    assert all(r.role == ROLE_UNLABELED and r.gt_class is None for r in manifest.unlabeled)
    problems = {p.path.name: p.reason for p in manifest.problems}
    assert set(problems) == {"broken.png", "empty.jpg"}
    assert "empty" in problems["empty.jpg"]
    for record in manifest.images:
        image = read_image(record.path)
        assert image.dtype == np.uint8 and image.shape == (12, 16, 3)
    assert manifest.normal[0].role == ROLE_NORMAL


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    data = np.full((4, 4), 40000, np.uint16)
    write_image(tmp_path / "x.png", data)
    assert read_image(tmp_path / "x.png")[0, 0, 0] == 40000 >> 8


def test_read_image_errors_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ImageReadError, match="bad.png: is not a readable image"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_empty_missing_and_only_normal_folders(tmp_path):
    with pytest.raises(DatasetError, match="no usable images"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "only_bad.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="1 unreadable: .*only_bad.png"):
        load_dataset(tmp_path)
    (tmp_path / "only_bad.png").unlink()
    write_image(tmp_path / "normal/ref.png", _img())
    with pytest.raises(DatasetError, match="only normal reference images"):
        load_dataset(tmp_path)
