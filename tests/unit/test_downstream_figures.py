"""Downstream benchmark: the feature-space figures (diversity, memorisation, alignment), the colour coverage, the
mean ± std over seeds, and how the sources are put together (mix, aliases of identical defectgen rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from downstream import features
from downstream.figures import colour_coverage
from downstream.generate import aliases, needed
from downstream.seeds import aggregate, mean_std
from downstream.segmenter import UNet
from downstream.sources import Sample, mix_samples


@pytest.fixture(scope="module")
def net() -> UNet:
    torch.manual_seed(0)
    return UNet(width=8, depth=3).eval()


def _crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, features.CROP, features.CROP, 3), dtype=np.uint8)


def test_defect_crop_keeps_the_defect_relative_to_its_surface() -> None:
    img = np.full((128, 128, 3), (90, 100, 110), np.uint8)
    mask = np.zeros((128, 128), np.uint8)
    mask[60:64, 70:80] = 1
    img[mask > 0] = (40, 50, 60)  # a dark defect: 50 below its surface in every channel
    crop = features.defect_crop(img, mask)
    assert crop.shape == (features.CROP, features.CROP, 3)
    inside = mask[62 - 20:62 + 20, 75 - 20:75 + 20] > 0  # the window is centred on the bounding box
    assert (crop[inside] == 78).all() and (crop[~inside] == 128).all()
    brighter = np.clip(img.astype(int) + 60, 0, 255).astype(np.uint8)  # the same defect on a lighter part
    assert np.array_equal(features.defect_crop(brighter, mask), crop)
    corner = np.zeros_like(mask)
    corner[0:2, 126:] = 1  # in a corner: the window shifts inside, it does not shrink
    assert features.defect_crop(img, corner).shape == (features.CROP, features.CROP, 3)
    assert features.defect_crop(img[:32, :32], mask[:32, :32] | 1).shape == (32, 32, 3)  # small image: all of it


def test_dihedral_gives_eight_distinct_variants() -> None:
    crop = _crops(1)[0]
    variants = features.dihedral(crop)
    assert len(variants) == 8 and np.array_equal(variants[0], crop)
    assert len({v.tobytes() for v in variants}) == 8


def test_diversity_of_identical_crops_is_zero(net: UNet) -> None:
    crop = _crops(1)[0]
    div, per_type = features.diversity(net, {"hole": np.stack([crop] * 4), "cut": _crops(4, 1)})
    assert per_type["hole"] == pytest.approx(0.0, abs=1e-9)
    assert per_type["cut"] > 0.01 and div == pytest.approx(per_type["cut"] / 2)


def test_memorisation_of_a_real_crop_and_of_its_mirror_is_zero(net: UNet) -> None:
    real = _crops(3)
    bank = features.bank_embedding(net, {"hole": real[:2], "cut": real[2:]})
    assert len(bank) == 3 * 8
    assert features.memorisation(net, {"x": real}, bank) == pytest.approx(0.0, abs=1e-9)
    mirrored = np.stack([np.ascontiguousarray(c[:, ::-1].transpose(1, 0, 2)) for c in real])
    assert features.memorisation(net, {"x": mirrored}, bank) == pytest.approx(0.0, abs=1e-9)
    assert features.memorisation(net, {"x": _crops(3, 7)}, bank) > 0.01


def test_embedding_distance_is_the_mean_over_levels_and_bounded(net: UNet) -> None:
    e = features.embed(net, _crops(2))
    d = float(((e[0] - e[1]) ** 2).sum())
    assert 0.0 < d <= 4.0 + 1e-9
    assert features.embed(net, _crops(0)).shape[0] == 0


def test_alignment_of_a_perfect_prediction_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    masks = np.zeros((3, 16, 16), np.uint8)
    masks[0, 2:6, 2:6], masks[1, 8:12, 3:5] = 1, 1  # the third sample is empty: not counted
    images = np.zeros((3, 16, 16, 3), np.uint8)
    monkeypatch.setattr(features, "predict", lambda net, x: masks[: len(x)] * 0.9 + 0.05)
    assert features.alignment(None, images, masks, threshold=0.5) == 1.0  # type: ignore[arg-type]
    monkeypatch.setattr(features, "predict", lambda net, x: np.zeros((len(x), 16, 16), np.float32))
    assert features.alignment(None, images, masks, threshold=0.5) == 0.0  # type: ignore[arg-type]


def test_threshold_set_adds_good_images_with_empty_masks() -> None:
    imgs, masks = np.ones((2, 8, 8, 3), np.uint8), np.ones((2, 8, 8), np.uint8)
    good = np.zeros((30, 8, 8, 3), np.uint8)
    x, m = features.threshold_set((imgs, masks), good)
    assert x.shape == (22, 8, 8, 3) and m.shape == (22, 8, 8) and m[2:].sum() == 0 and m[:2].all()


def test_mean_std_over_seeds() -> None:
    assert mean_std([0.5, 0.7, 0.9]) == pytest.approx({"mean": 0.7, "std": 0.2, "n": 3})
    assert mean_std([0.4, float("nan"), None]) == {"mean": 0.4, "std": 0.0, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}
    runs = [{"metrics": {"pixel_ap": v}, "per_type_ap": {"hole": v / 2}} for v in (0.2, 0.4)]
    agg = aggregate(runs)
    assert agg["pixel_ap"]["mean"] == pytest.approx(0.3) and agg["pixel_ap"]["n"] == 2
    assert agg["per_type_ap"] == {"hole": pytest.approx(0.15)}


def test_mix_alternates_jobs_and_fills_gaps() -> None:
    a = [Sample(f"a{i}", "m", "hole", "g", i) for i in (0, 1, 3)]  # job 2 failed in a
    b = [Sample(f"b{i}", "m", "hole", "g", i) for i in range(4)]
    assert [s.image for s in mix_samples(a, b, 4)] == ["a0", "b1", "b2", "b3"]


def test_defectgen_variants_equal_to_the_main_row_are_aliases() -> None:
    names = ["defectgen", "defectgen_g1", "defectgen_g0", "copypaste", "mix"]
    assert aliases(names, {"guide_weight": 1.0}, "") == {"defectgen_g1": "defectgen"}
    assert aliases(names, {}, "") == {"defectgen_g0": "defectgen"}  # the runtime's default is 0
    assert aliases(names, {"guide_weight": 1.0}, "--guide-weight 0.5") == {}
    assert aliases(["defectgen_g1", "defectgen_g0"], {"guide_weight": 1.0}, "") == {}
    assert aliases(["defectgen", "defectgen_surface"], {}, "") == {}  # the runtime's detail comes from the reference
    surface = {"defectgen_surface": "defectgen"}
    assert aliases(["defectgen", "defectgen_surface"], {}, "--detail-from surface") == surface
    assert aliases(["defectgen", "defectgen_surface"], {}, "--detail-from=surface --detail-from reference") == {}
    g1 = ["defectgen", "defectgen_g1"]
    assert aliases(g1, {"mask_mode": "generated"}, "--guide-weight=1") == {}  # same weight, G's labels: not g1
    assert aliases(g1, {"mask_mode": "generated"}, "--guide-weight 0.5 --guide-weight=1 --mask-mode target") == {
        "defectgen_g1": "defectgen"}
    assert aliases(["defectgen", "defectgen_surface"], {"detail": False}, "") == surface  # no detail to move
    assert needed(names, {"defectgen_g1": "defectgen"}) == ["defectgen", "defectgen_g0", "copypaste", "mix"]
    assert needed(["mix"], {}) == ["mix", "defectgen", "copypaste"]  # what mix is made of comes along


def test_colour_coverage_counts_the_test_colours_a_source_leaves_out() -> None:
    def defects(colours: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
        images = np.full((len(colours), 8, 8, 3), 128, np.uint8)
        masks = np.zeros((len(colours), 8, 8), np.uint8)
        masks[:, 2:5, 2:5] = 1
        for i, c in enumerate(colours):
            images[i][masks[i] > 0] = c
        return images, masks

    red, green, brown = (150, 25, 30), (25, 85, 45), (70, 45, 30)
    test = {"print": np.array([red, green], np.float32), "hole": np.array([brown], np.float32)}
    images, masks = defects([red, red, brown])
    mean, per_type = colour_coverage(images, masks, np.array(["print", "print", "hole"]), test)
    assert per_type == {"print": 0.5, "hole": 1.0} and mean == 0.75  # the green prints are missing
    images, masks = defects([red, green, brown])
    assert colour_coverage(images, masks, np.array(["print", "print", "hole"]), test)[0] == 1.0
