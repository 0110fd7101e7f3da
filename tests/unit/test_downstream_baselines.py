"""Downstream benchmark: the baselines paint only inside their masks, on the part, and stay finite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from downstream import baselines

from defectgen.data.masks import part_mask
from defectgen.data.mvtec import MVTecCategory
from defectgen.data.procedural import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nuts")
    make_dataset(root, res=64, n_good=3, n_defect=7, n_test_good=2, seed=3)
    return root


def _check(good: np.ndarray, part: np.ndarray, out: np.ndarray, mask: np.ndarray) -> None:
    assert out.shape == good.shape and out.dtype == np.uint8
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= {0, 1}
    assert mask.sum() >= baselines.MIN_PIXELS or mask.any()
    assert not (mask & (part == 0)).any(), "mask leaves the part"
    changed = (out != good).any(-1)
    assert not (changed & (mask == 0)).any(), "pixels changed outside the mask"
    assert changed.any(), "nothing changed"


@pytest.mark.parametrize("kind", ["scar", "patch", "draem", "copypaste"])
def test_baselines_paint_only_inside_a_mask_on_the_part(data: Path, kind: str) -> None:
    cat = MVTecCategory(data)
    goods = [i.load()[0] for i in cat.train_good()]
    refs = [i.load() for i in cat.defective_items()]
    rng = np.random.default_rng(0)
    for k in range(12):
        good = goods[k % len(goods)]
        part = part_mask(good)
        if kind == "scar":
            out, mask = baselines.cutpaste_scar(good, part, rng)
        elif kind == "patch":
            out, mask = baselines.cutpaste_patch(good, part, rng)
        elif kind == "draem":
            out, mask = baselines.draem(good, part, goods[(k + 1) % len(goods)], rng)
        else:
            ref_img, ref_mask = refs[k % len(refs)]
            out, mask = baselines.copy_paste(good, part, ref_img, ref_mask, rng)
        _check(good, part, out, mask)


def test_copy_paste_keeps_the_defect_shape_and_pixels(data: Path) -> None:
    cat = MVTecCategory(data)
    good = cat.train_good()[0].load()[0]
    ref_img, ref_mask = cat.defective_items(["hole"])[0].load()
    out, mask = baselines.copy_paste(good, part_mask(good), ref_img, ref_mask, np.random.default_rng(1))
    assert abs(int(mask.sum()) - int(ref_mask.sum())) <= 0.05 * ref_mask.sum() + 1  # moved, not resized
    # a hole is dark: the pasted pixels are darker than the surface they replaced
    assert out[mask > 0].mean() < good[mask > 0].mean()


def test_perlin_mask_is_seeded_and_binary() -> None:
    a = baselines.perlin_mask((64, 48), np.random.default_rng(5))
    b = baselines.perlin_mask((64, 48), np.random.default_rng(5))
    assert a.shape == (64, 48) and np.array_equal(a, b) and set(np.unique(a).tolist()) <= {0, 1}
    n = baselines.perlin_noise((32, 32), (4, 4), np.random.default_rng(0))
    assert np.abs(n).max() <= 1.5 and n.std() > 0.1


def test_texture_augmentation_stays_finite(data: Path) -> None:
    good = MVTecCategory(data).train_good()[0].load()[0]
    x = good.astype(np.float32)
    for op in (baselines._autocontrast, baselines._invert):  # round-off here once made the gamma op NaN
        x = op(x, np.random.default_rng(0))
    with np.errstate(invalid="raise"):
        for seed in range(200):
            out = baselines.augment_texture(good, np.random.default_rng(seed))
            assert out.dtype == np.uint8 and out.shape == good.shape
        baselines._gamma(np.clip(x, 0, 255), np.random.default_rng(0))
