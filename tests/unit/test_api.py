"""The Python API used the way a user would: load a bundle, hand over numpy images (RGB or OpenCV's BGR, gray,
16 bit), with and without masks, and get images, masks and records back; plus the proof that an image handed
over in memory goes through the same pipeline as the same image read from a file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from defectgen.api import Generator, array_jobs
from defectgen.data.imageio import read_image, write_image
from defectgen.data.masks import dilate
from defectgen.errors import DataError, JobError
from defectgen.runtime.jobs.compose import Crop, feather_px
from defectgen.runtime.jobs.pipeline import generate_outcomes
from defectgen.runtime.jobs.sources import image_jobs


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory, run_bundle) -> Generator:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("api")
    with Generator.load(run_bundle(folder / "bundle"), threads=1) as g:
        yield g


def _parts(n: int, *, h: int = 40, w: int = 56, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(rng.integers(60, 190, 3) + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
            for _ in range(n)]


def _blob(h: int = 40, w: int = 56) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (((yy - 20) / 6.0) ** 2 + ((xx - 28) / 9.0) ** 2 <= 1).astype(np.uint8) * 255


def test_random_targets_give_images_masks_and_records(gen: Generator) -> None:
    images = _parts(3)
    defects = gen.generate(images, types=["crack", "hole"], per_image=2, seed=0)
    assert [d.index for d in defects] == [0, 0, 1, 1, 2, 2]
    assert [d.type for d in defects] == ["crack", "hole"] * 3
    for d in defects:
        assert d.ok and d.error is None
        assert d.image.shape == images[d.index].shape and d.image.dtype == np.uint8
        assert d.mask.shape == images[d.index].shape[:2] and set(np.unique(d.mask)) <= {0, 1} and d.mask.any()
        changed = (d.image != images[d.index]).any(axis=2)
        assert changed.any(), "the defect changed no pixel"
        rec = d.record
        assert rec["status"] == "ok" and rec["inputs"]["mask"] == "random" and rec["final_terms"]
        assert isinstance(rec["seed"], int)
    assert len({d.record["id"] for d in defects}) == 6


def test_same_seed_same_defects_other_seed_differs(gen: Generator) -> None:
    images = _parts(2)
    a = gen.generate(images, seed=3)
    b = gen.generate(images, seed=3)
    c = gen.generate(images, seed=4)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a, c, strict=True))


def test_bgr_in_bgr_out(gen: Generator) -> None:
    rgb = _parts(1, seed=5)[0]
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    from_rgb = gen.generate(rgb, _blob(), types="crack", seed=1)[0]
    from_bgr = gen.generate(bgr, _blob(), types="crack", seed=1, channel_order="bgr")[0]
    np.testing.assert_array_equal(from_bgr.image, from_rgb.image[:, :, ::-1])
    np.testing.assert_array_equal(from_bgr.mask, from_rgb.mask)


def test_given_mask_is_the_label_and_background_is_kept(gen: Generator) -> None:
    image, mask = _parts(1, seed=2)[0], _blob()
    d = gen.generate(image, mask > 0, types="hole", seed=0)[0]
    assert gen.settings.mask_mode == "target"  # the toy bundle's default: the label is the given mask
    np.testing.assert_array_equal(d.mask, (mask > 0).astype(np.uint8))
    px = feather_px(Crop(0, 0, 40, 56), gen.bundle.resolution, gen.settings.feather_px)
    outside = dilate(d.mask, px) == 0
    assert outside.sum() > 100
    np.testing.assert_array_equal(d.image[outside], image[outside])
    assert not np.array_equal(d.image[d.mask > 0], image[d.mask > 0])
    assert d.record["inputs"]["mask"] == "masks[0]"


def test_gray_rgba_and_16_bit_keep_their_format(gen: Generator) -> None:
    rgb = _parts(1, seed=7)[0]
    gray = rgb[:, :, 1].copy()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    deep = rgb.astype(np.uint16) * 257
    column = gray[:, :, None]
    for img in (gray, rgba, deep, column):
        d = gen.generate(img, _blob(), types="crack", seed=0)[0]
        assert d.image.shape == img.shape and d.image.dtype == img.dtype
    d = gen.generate(rgba, _blob(), types="crack", seed=0)[0]
    np.testing.assert_array_equal(d.image[:, :, 3], rgba[:, :, 3])  # alpha carried through


def test_mixed_masks_and_variants(gen: Generator) -> None:
    images = _parts(2, seed=1)
    defects = gen.generate(images, [_blob(), None], types="crack", per_image=2, variants=2, seed=0)
    assert [d.index for d in defects] == [0, 0, 1, 1, 1, 1]  # image 0: one mask x 2 variants; 1: 2 random x 2
    assert not np.array_equal(defects[0].image, defects[1].image)  # variants differ
    assert [d.record["variant"] for d in defects] == [0, 1, 0, 1, 0, 1]


def test_iter_generate_streams_in_batches(gen: Generator) -> None:
    it = gen.iter_generate(_parts(9), seed=0)
    first = next(it)
    assert first.ok
    assert len(list(it)) == 8


def test_failed_job_is_returned_with_its_error(gen: Generator) -> None:
    empty = np.zeros((40, 56), np.uint8)
    d = gen.generate(_parts(1)[0], empty, types="crack")[0]
    assert not d.ok and d.image is None and d.mask is None
    assert "empty" in d.error and d.record["status"] == "failed"


@pytest.mark.parametrize(("images", "masks", "kwargs", "error", "text"), [
    (np.zeros((4, 4, 3), np.float32), None, {}, DataError, "images[0]: expected a uint8/uint16"),
    ([np.zeros((9, 9, 3), np.uint8)], [np.zeros((8, 9), np.uint8)], {}, DataError, "masks[0]: mask size 9x8"),
    ([np.zeros((9, 9, 3), np.uint8)], [np.full((9, 9), 7, np.uint8)], {}, DataError, "not binary"),
    ([np.zeros((9, 9, 3), np.uint8)] * 2, [None], {}, DataError, "2 images but 1 masks"),
    (np.zeros((9, 9, 3), np.uint8), None, {"types": "dent"}, JobError, "unknown defect type 'dent'"),
    (np.zeros((9, 9, 3), np.uint8), None, {"channel_order": "rbg"}, DataError, "unknown channel order"),
    (np.zeros((9, 9, 3), np.uint8), None, {"per_image": 0}, JobError, "per_image must be >= 1"),
    (np.zeros((9, 9, 3), np.uint8), None, {"variants": 0}, JobError, "variants must be >= 1"),
    ("part.png", None, {}, DataError, "numpy array or a sequence"),
])
def test_bad_input_is_one_clear_error(gen: Generator, images, masks, kwargs, error, text) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=text.replace("[", r"\[").replace("]", r"\]")):
        gen.generate(images, masks, **kwargs)


def test_bad_options_fail_at_load(run_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle = run_bundle(tmp_path / "bundle")
    with pytest.raises(JobError, match="guide-weight"):
        Generator.load(bundle, guide_weight=2.0)
    with pytest.raises(JobError, match="threads"):
        Generator.load(bundle, threads=0)


def test_an_array_and_the_same_file_give_the_same_defect(gen: Generator, tmp_path: Path) -> None:
    """One pipeline: the in-memory job and the file job (same seed) produce identical pixels and labels."""
    image = _parts(1, seed=9)[0]
    path = write_image(tmp_path / "part.png", image)
    from_file = next(image_jobs([(path, "part.png")], None, 1, ["hole"], run_seed=0))
    from_array = array_jobs([read_image(path)], None, types=["hole"], per_image=1, seed=0, channel_order="rgb")[0]
    from_array = dataclasses.replace(from_array, seed=from_file.seed)
    settings = gen.settings_for(1)
    a, b = (next(generate_outcomes([s], bundle=gen.bundle, backend=gen.engine, settings=settings))
            for s in (from_file, from_array))
    assert a.ok and b.ok
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)

