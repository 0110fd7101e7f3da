"""Image/mask I/O: exact round trips, clear errors naming the file, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectgen.data import imageio
from defectgen.data.imageio import (
    atomic_write_bytes,
    atomic_write_text,
    from_model,
    mask_to_model,
    read_image,
    read_mask,
    to_model,
    write_image,
    write_mask,
)
from defectgen.errors import DataError


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)


def test_image_and_mask_round_trip_exact(tmp_path, rgb):
    mask = np.zeros((24, 40), np.uint8)
    mask[5:9, 10:30] = 1
    p = write_image(tmp_path / "deep" / "a.png", rgb)
    q = write_mask(tmp_path / "deep" / "a_mask.png", mask)
    np.testing.assert_array_equal(read_image(p), rgb)
    np.testing.assert_array_equal(read_mask(q, rgb.shape[:2]), mask)
    assert set(np.unique(cv2.imread(str(q), cv2.IMREAD_UNCHANGED)).tolist()) == {0, 255}  # MVTec convention
    assert sorted(os.listdir(tmp_path / "deep")) == ["a.png", "a_mask.png"]  # no temp files left


def test_read_image_channel_order_gray_and_16bit(tmp_path):
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    assert read_image(tmp_path / "red.png")[0, 0].tolist() == [200, 0, 0]
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((4, 5), 7, np.uint8))
    g = read_image(tmp_path / "gray.png")
    assert g.shape == (4, 5, 3) and g.dtype == np.uint8 and (g == 7).all()
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((3, 3), 65535, np.uint16))
    assert (read_image(tmp_path / "deep.png") == 255).all()


def test_unreadable_and_missing_images_name_the_file(tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG not really a png at all")
    with pytest.raises(DataError, match=r"not a readable image.*corrupt\.png"):
        read_image(bad)
    with pytest.raises(DataError, match=r"cannot read file.*nothere\.png"):
        read_image(tmp_path / "nothere.png")
    with pytest.raises(DataError, match=r"corrupt\.png"):
        read_mask(bad)


def test_mask_accepts_01_and_rejects_gray_and_wrong_size(tmp_path):
    m01 = np.array([[0, 1], [1, 0]], np.uint8)
    cv2.imwrite(str(tmp_path / "m01.png"), m01)
    np.testing.assert_array_equal(read_mask(tmp_path / "m01.png"), m01)
    cv2.imwrite(str(tmp_path / "soft.png"), np.array([[0, 128], [255, 0]], np.uint8))
    with pytest.raises(DataError, match=r"not binary.*128.*soft\.png"):
        read_mask(tmp_path / "soft.png")
    write_mask(tmp_path / "small_mask.png", np.ones((64, 64), np.uint8))
    with pytest.raises(DataError, match=r"mask size 64x64 != image size 128x96: .*small_mask\.png"):
        read_mask(tmp_path / "small_mask.png", (96, 128))


def test_atomic_write_failure_leaves_nothing(tmp_path, rgb, monkeypatch):
    target = tmp_path / "out.png"

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(imageio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_image(target, rgb)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp file


def test_atomic_write_keeps_old_file_when_encoding_fails(tmp_path, rgb, monkeypatch):
    target = write_image(tmp_path / "out.png", rgb)
    before = target.read_bytes()
    monkeypatch.setattr(imageio.cv2, "imencode", lambda ext, arr: (False, None))
    with pytest.raises(DataError, match=r"cannot encode.*out\.png"):
        write_image(target, rgb[::-1].copy())
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_atomic_text_and_bytes(tmp_path):
    atomic_write_text(tmp_path / "a" / "jobs.jsonl", '{"x": 1}\n')
    atomic_write_bytes(tmp_path / "a" / "jobs.jsonl", b'{"x": 2}\n')  # replaces
    assert (tmp_path / "a" / "jobs.jsonl").read_text() == '{"x": 2}\n'
    assert os.listdir(tmp_path / "a") == ["jobs.jsonl"]


def test_write_rejects_bad_arrays(tmp_path):
    with pytest.raises(DataError, match=r"x\.png"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(DataError, match=r"m\.png"):
        write_mask(tmp_path / "m.png", np.full((4, 4), 255, np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_model_conversions(rgb):
    x = to_model(rgb, 24)  # 24x40 is squashed to 24x24
    assert x.shape == (3, 24, 24) and x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    square = rgb[:, :24]
    t = to_model(square, 24)
    assert t.shape == (3, 24, 24)
    np.testing.assert_array_equal(from_model(t), square)  # exact at the same resolution
    assert from_model(np.full((3, 2, 2), 5.0)).max() == 255 and from_model(np.full((3, 2, 2), -5.0)).max() == 0
    small = to_model(np.full((64, 64, 3), 255, np.uint8), 16)
    assert small.shape == (3, 16, 16) and np.allclose(small, 1.0)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 1
    m = mask_to_model(mask, 16)
    assert m.shape == (1, 16, 16) and m.dtype == np.float32
    assert set(np.unique(m).tolist()) == {0.0, 1.0} and m.sum() == 64


def test_atomic_write_respects_umask(tmp_path):
    import os

    from defectgen.data.imageio import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(("shape", "dtype", "channels"), [((5, 7), np.uint8, "gray"), ((5, 7), np.uint16, "gray"),
                                                          ((5, 7, 3), np.uint16, "rgb"), ((5, 7, 4), np.uint8, "rgba")])
def test_native_round_trip_keeps_channels_and_depth(tmp_path: Path, shape: tuple[int, ...], dtype: type,
                                                    channels: str) -> None:
    from defectgen.data.imageio import read_native, to_rgb8

    peak = np.iinfo(dtype).max
    img = np.random.default_rng(1).integers(0, peak, shape, endpoint=True).astype(dtype)
    write_image(tmp_path / "x.png", img)
    back, fmt = read_native(tmp_path / "x.png")
    assert back.dtype == dtype and np.array_equal(back, img)
    assert (fmt.channels, fmt.bits, fmt.source) == (channels, 16 if dtype == np.uint16 else 8, "png")
    rgb = to_rgb8(back)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    if channels == "gray":
        assert np.array_equal(rgb[:, :, 0], rgb[:, :, 2])
    gen = np.full((2, 3), 255.0, np.float32)
    assert np.allclose(fmt.from_rgb(gen), peak)  # white is the format's peak in every format
