"""Outputs keep the input's format: grayscale stays grayscale, 16 bit stays 16 bit (bit-exact background at 16
bits), RGBA keeps its alpha, JPEG comes out as PNG (and jobs.jsonl says so); masks are always 8-bit 0/255."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import invoke, jobs_log

from defectgen.data.imageio import read_native, write_image, write_mask
from defectgen.data.masks import dilate

H, W = 100, 140


def _inputs(folder: Path, name: str, image: np.ndarray, suffix: str = ".png") -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        write_image(folder / "images" / f"{name}.png", image)
    else:
        cv2.imwrite(str(folder / "images" / f"{name}{suffix}"), image[:, :, ::-1])
    mask = np.zeros((H, W), np.uint8)
    mask[40:60, 50:80] = 1
    write_mask(folder / "masks" / f"{name}.png", mask)


def _texture(rng: np.random.Generator, channels: int, peak: int, dtype: type) -> np.ndarray:
    shape = (H, W) if channels == 1 else (H, W, channels)
    return rng.integers(peak // 4, 3 * peak // 4, shape).astype(dtype)


@pytest.mark.parametrize(("kind", "channels", "dtype", "peak", "suffix"), [
    ("gray8", 1, np.uint8, 255, ".png"),
    ("rgb16", 3, np.uint16, 65535, ".png"),
    ("gray16", 1, np.uint16, 65535, ".png"),
    ("rgba8", 4, np.uint8, 255, ".png"),
    ("jpeg", 3, np.uint8, 255, ".jpg"),
])
def test_output_keeps_the_input_format(tmp_path: Path, run_bundle: Callable[..., Path], kind: str, channels: int,
                                       dtype: type, peak: int, suffix: str) -> None:
    image = _texture(np.random.default_rng(0), channels, peak, dtype)
    _inputs(tmp_path, kind, image, suffix)
    code, _, err = invoke("run", "--bundle", run_bundle(tmp_path / "b"), "--images", tmp_path / "images",
                          "--masks", tmp_path / "masks", "--out", tmp_path / "out", "--steps", 2,
                          "--backend", "ort-cpu")
    assert code == 0, err
    (rec,) = jobs_log(tmp_path / "out")
    assert rec["outputs"]["image"].endswith(".png")
    assert rec["pixels"]["source"] == ("jpeg" if suffix == ".jpg" else "png")
    src, _ = read_native(next((tmp_path / "images").iterdir()))
    out, fmt = read_native(tmp_path / "out" / rec["outputs"]["image"])
    assert out.dtype == src.dtype and out.shape == src.shape and fmt.bits == (16 if peak > 255 else 8)
    assert rec["pixels"]["channels"] == fmt.channels and rec["pixels"]["bits"] == fmt.bits
    target = cv2.imread(str(tmp_path / "masks" / f"{kind}.png"), cv2.IMREAD_UNCHANGED)
    written_mask = cv2.imread(str(tmp_path / "out" / rec["outputs"]["mask"]), cv2.IMREAD_UNCHANGED)
    assert written_mask.dtype == np.uint8 and set(np.unique(written_mask)) == {0, 255}
    outside = dilate((target > 0).astype(np.uint8), 25) == 0
    assert outside.sum() > 0.5 * H * W
    assert np.array_equal(out[outside], src[outside])  # the background, bit for bit at the input's depth
    inside = target > 0
    assert not np.array_equal(out[inside], src[inside])  # the defect was drawn
    if channels == 4:
        assert np.array_equal(out[:, :, 3], src[:, :, 3])  # alpha untouched everywhere
    good = read_native(next((tmp_path / "out" / "train" / "good").iterdir()))[0]
    assert np.array_equal(good, src)  # the source part, as it came in (a JPEG decoded, as PNG)
