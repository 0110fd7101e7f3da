"""Downstream benchmark metrics against hand-computed cases and brute force (no sklearn needed)."""

from __future__ import annotations

import numpy as np
import pytest
from downstream.metrics import (
    PSNR_CAP,
    average_precision,
    f1_max,
    f1_threshold,
    image_score,
    iou,
    mean_iou,
    mean_pairwise_distance,
    nearest_distance,
    psnr,
    roc_auc,
    segmentation_metrics,
)


def test_auroc_perfect_inverted_random() -> None:
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert roc_auc(s, y) == 1.0
    assert roc_auc(-s, y) == 0.0
    assert roc_auc(np.zeros(5), y) == 0.5  # all tied: chance
    rng = np.random.default_rng(0)
    big_y = rng.integers(0, 2, 20000)
    assert abs(roc_auc(rng.random(20000), big_y) - 0.5) < 0.02


def test_hand_case_matches_sklearn_docs() -> None:
    # the scikit-learn docs example: roc_auc 0.75, average_precision 0.8333
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert roc_auc(s, y) == pytest.approx(0.75)
    assert average_precision(s, y) == pytest.approx(5 / 6)
    # thresholds 0.8: P=1 R=.5 (F1 .667); 0.4: P=.5 R=.5; 0.35: P=2/3 R=1 (F1 .8); 0.1: P=.5 R=1
    assert f1_max(s, y) == pytest.approx(0.8)


def test_auroc_equals_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 300).astype(float)  # many ties
    y = rng.integers(0, 2, 300)
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert roc_auc(s, y) == pytest.approx(brute)


def test_ap_and_f1_perfect_inverted_constant() -> None:
    y = np.array([0, 1, 0, 1, 0, 0])
    s = y + 0.01 * np.arange(6)
    assert average_precision(s, y) == pytest.approx(1.0) and f1_max(s, y) == pytest.approx(1.0)
    assert average_precision(np.ones(6), y) == pytest.approx(2 / 6)  # one threshold: precision = positive rate
    # inverted: positives ranked last -> AP = mean over positives of precision at their rank (1/5, 2/6)
    assert average_precision(-s, y) == pytest.approx((1 / 5 + 2 / 6) / 2)
    assert f1_max(np.ones(6), y) == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))


def test_undefined_cases_are_nan_and_bad_input_raises() -> None:
    assert np.isnan(roc_auc([0.1, 0.2], [1, 1])) and np.isnan(average_precision([0.1, 0.2], [0, 0]))
    with pytest.raises(ValueError):
        roc_auc([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2, 0.3], [0, 1])


def test_segmentation_metrics_on_maps() -> None:
    gts = np.zeros((3, 8, 8), np.uint8)
    gts[0, 2:4, 2:4] = 1
    gts[1, 5:7, 1:3] = 1
    maps = gts.astype(np.float32) * 0.9 + 0.05  # a perfect segmenter
    m = segmentation_metrics(maps, gts, np.array([1, 1, 0]))
    assert m == {"pixel_auroc": 1.0, "pixel_ap": 1.0, "f1_max": 1.0, "image_auroc": 1.0}
    assert image_score(np.arange(100.0), 0.05) == pytest.approx(97.0)


def test_iou_psnr() -> None:
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[:2], b[1:3] = 1, 1
    assert iou(a, b) == pytest.approx(4 / 12) and iou(np.zeros(3), np.zeros(3)) == 1.0
    img = np.full((4, 4, 3), 100, np.uint8)
    other = img.copy()
    other[0, 0] = 110
    assert psnr(img, img) == PSNR_CAP
    assert psnr(img, other) == pytest.approx(10 * np.log10(255**2 / (100 * 3 / 48)))
    assert psnr(img, other, where=np.arange(16).reshape(4, 4) > 0) == PSNR_CAP  # the changed pixel excluded


def test_f1_threshold_separates_a_perfect_ranking() -> None:
    y = np.array([0, 0, 1, 1, 0])
    s = np.array([0.1, 0.3, 0.7, 0.9, 0.2])
    t = f1_threshold(s, y)
    assert t == pytest.approx(0.7) and np.array_equal(s >= t, y.astype(bool))
    assert np.isnan(f1_threshold(s, np.zeros(5)))


def test_mean_iou_of_a_perfect_and_an_empty_prediction() -> None:
    masks = np.zeros((2, 6, 6), np.uint8)
    masks[0, 1:3, 1:4], masks[1, 4:, 4:] = 1, 1
    assert mean_iou(masks.astype(bool), masks) == 1.0
    assert mean_iou(np.zeros_like(masks), masks) == 0.0
    half = masks.copy()
    half[0] = 0
    assert mean_iou(half, masks) == pytest.approx(0.5)


def test_pairwise_and_nearest_distances() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7))
    brute = [np.sum((x[i] - x[j]) ** 2) for i in range(5) for j in range(i + 1, 5)]
    assert mean_pairwise_distance(x) == pytest.approx(np.mean(brute))
    assert mean_pairwise_distance(np.repeat(x[:1], 4, 0)) == pytest.approx(0.0, abs=1e-12)  # identical: 0
    assert np.isnan(mean_pairwise_distance(x[:1]))
    assert nearest_distance(x[:3], x) == pytest.approx(np.zeros(3), abs=1e-12)  # each row is in the bank
    far = nearest_distance(x[:2] + 10.0, x)
    assert (far > 0).all()


def test_defect_contrast_tells_a_faint_defect_from_a_visible_one() -> None:
    from downstream.evaluate import defect_contrast

    img = np.full((40, 40, 3), 120, np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[15:25, 15:25] = 1
    faint, strong = img.copy(), img.copy()
    faint[mask > 0] = 110
    strong[mask > 0] = (40, 60, 80)
    assert defect_contrast(faint, mask) == pytest.approx(10.0)
    assert defect_contrast(strong, mask) == pytest.approx((80 + 60 + 40) / 3)
    far = strong.copy()
    far[:5] = 0  # far from the ring: no effect
    assert defect_contrast(far, mask) == defect_contrast(strong, mask)
    assert defect_contrast(img, np.zeros_like(mask)) is None
    assert defect_contrast(img[:, :, 0], mask) == 0.0  # gray images too
