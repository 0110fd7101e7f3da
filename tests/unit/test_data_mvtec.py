"""MVTec layout reader/writer: lazy items, and every bad layout fails with the offending file named."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from defectgen.data.mvtec import MVTecCategory, MVTecWriter, list_images
from defectgen.errors import DataError


def _img(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _mask(size: int = 32) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[10:14, 4:20] = 1
    return m


@pytest.fixture
def category(tmp_path):
    w = MVTecWriter(tmp_path / "cat")
    for i in range(3):
        w.write_good("train", f"{i:03d}", _img(i))
    w.write_good("test", "000", _img(10))
    paths = {t: w.write_defect(t, f"{i:03d}", _img(20 + i), _mask()) for i, t in enumerate(["hole", "crack", "crack"])}
    w.write_defect("crack", "007", _img(30), _mask())
    return tmp_path / "cat", paths


def test_writer_layout_and_reader_round_trip(category):
    root, _ = category
    assert (root / "test" / "crack" / "007.png").is_file()
    assert (root / "ground_truth" / "crack" / "007_mask.png").is_file()
    cat = MVTecCategory(root, check_files=True)
    assert cat.defect_types == ["crack", "hole"]
    assert [i.image_path.name for i in cat.train_good()] == ["000.png", "001.png", "002.png"]
    assert len(cat.test_items()) == 5  # 1 good + hole/000 + crack/001, 002, 007
    assert {i.defect_type for i in cat.defective_items()} == {"crack", "hole"}
    assert [i.defect_type for i in cat.test_items(["good"])] == ["good"]
    item = cat.defective_items(["crack"])[-1]
    img, mask = item.load()
    np.testing.assert_array_equal(img, _img(30))
    np.testing.assert_array_equal(mask, _mask())
    good_img, good_mask = cat.train_good()[1].load()
    np.testing.assert_array_equal(good_img, _img(1))
    assert good_mask.shape == (32, 32) and not good_mask.any()
    with pytest.raises(DataError, match=r"\['scratch'\]"):
        cat.test_items(["scratch"])


def test_missing_root_and_train_good(tmp_path, category):
    root, _ = category
    with pytest.raises(DataError, match=r"missing folder .*nope"):
        MVTecCategory(tmp_path / "nope")
    (root / "train" / "good").rename(root / "train" / "ok")
    with pytest.raises(DataError, match=r"missing folder .*train/good"):
        MVTecCategory(root)


def test_defect_image_without_mask(category):
    root, paths = category
    paths["hole"][1].unlink()
    with pytest.raises(DataError, match=r"no mask .*test/hole/000\.png"):
        MVTecCategory(root)


def test_deep_check_mask_size(category):
    root, paths = category
    cv2.imwrite(str(paths["hole"][1]), np.zeros((16, 16), np.uint8))
    MVTecCategory(root)  # cheap check passes: paths are fine
    with pytest.raises(DataError, match=r"mask size 16x16 != image size 32x32: .*hole/000_mask\.png"):
        MVTecCategory(root, check_files=True)


def test_deep_check_corrupt_image(category):
    root, _ = category
    (root / "train" / "good" / "001.png").write_bytes(b"garbage, not a png")
    with pytest.raises(DataError, match=r"not a readable image.*train/good/001\.png"):
        MVTecCategory(root, check_files=True)


def test_deep_check_non_binary_mask(category):
    root, paths = category
    soft = _mask() * 200
    soft[0, 0] = 90
    cv2.imwrite(str(paths["crack"][1]), soft)
    with pytest.raises(DataError, match=r"not binary.*ground_truth/crack/002_mask\.png"):
        MVTecCategory(root, check_files=True)


def test_empty_train_good(tmp_path):
    (tmp_path / "c" / "train" / "good").mkdir(parents=True)
    (tmp_path / "c" / "test").mkdir()
    with pytest.raises(DataError, match=r"no good training images in .*train/good"):
        MVTecCategory(tmp_path / "c")


def test_writer_rejects_bad_input(tmp_path):
    w = MVTecWriter(tmp_path)
    with pytest.raises(DataError, match=r"mask size 16x16 != image size 32x32: .*test/hole/a\.png"):
        w.write_defect("hole", "a", _img(0), np.ones((16, 16), np.uint8))
    with pytest.raises(DataError, match="empty"):
        w.write_defect("hole", "a", _img(0), np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match="path separators"):
        w.write_good("train", "../evil", _img(0))
    with pytest.raises(DataError, match="split"):
        w.write_good("val", "a", _img(0))
    assert list(tmp_path.iterdir()) == []


def test_list_images(tmp_path):
    for name in ["b.JPG", "a.png", "c.txt", ".a.png.123.tmp", "d.bmp"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "d.bmp"]
    with pytest.raises(DataError, match="missing"):
        list_images(tmp_path / "missing")
