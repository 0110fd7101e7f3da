"""Ranking and image metrics in plain numpy (no sklearn): AUROC, AP, F1-max, IoU, PSNR, and the distances
behind diversity and memorisation.

Conventions follow scikit-learn so numbers compare with published tables: AUROC is the Mann-Whitney
statistic with ties counted half; AP is the step-wise sum `Σ (R_k − R_{k−1}) P_k` over distinct score
thresholds (no interpolation); F1-max is the best F1 over those same thresholds.
"""

from __future__ import annotations

import numpy as np

from defectgen import GOOD


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in size")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    return s, y


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    s, y = _check(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # average ranks over ties (1-based), the Mann-Whitney U way
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size, np.float64)
    ranks[order] = np.repeat(avg_rank, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at every distinct score, highest threshold first."""
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each run of equal scores
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1) - tp
    n_pos = max(int(y.sum()), 1)
    return tp / (tp + fp), tp / n_pos, s[last]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision (area under the step PR curve); NaN without positives."""
    _, y = _check(scores, labels)
    if not y.any():
        return float("nan")
    precision, recall, _ = pr_curve(scores, labels)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best F1 over all thresholds; NaN without positives."""
    _, y = _check(scores, labels)
    if not y.any():
        return float("nan")
    precision, recall, _ = pr_curve(scores, labels)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(f1.max())


def image_score(anomaly_map: np.ndarray, top_fraction: float = 0.01) -> float:
    """Image-level anomaly score: mean of the top `top_fraction` of a pixel map (at least one pixel)."""
    flat = np.asarray(anomaly_map, np.float64).ravel()
    k = max(1, int(round(flat.size * top_fraction)))
    return float(np.partition(flat, flat.size - k)[-k:].mean())


def segmentation_metrics(maps: np.ndarray, gts: np.ndarray, image_labels: np.ndarray) -> dict[str, float]:
    """The four headline numbers of the downstream table.

    Args:
        maps: (N, H, W) float pixel anomaly scores.
        gts: (N, H, W) {0,1} ground truth masks (all zero for good images).
        image_labels: (N,) 1 for defective images, 0 for good ones.
    """
    img = np.array([image_score(m) for m in maps])
    return {"pixel_auroc": roc_auc(maps, gts), "pixel_ap": average_precision(maps, gts),
            "f1_max": f1_max(maps, gts), "image_auroc": roc_auc(img, image_labels)}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum() / union)


PSNR_CAP = 100.0  # dB reported for a bit-exact background (the true value is infinite)


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB of two uint8 images, over the pixels where `where` is true; capped at `PSNR_CAP`."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if where is not None:
        d = d[np.asarray(where) > 0]
    if d.size == 0:
        return float("nan")
    mse = float(np.mean(d * d))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * np.log10(255.0**2 / mse))


def f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold of the best F1 (predict positive where score >= it); NaN without positives."""
    _, y = _check(scores, labels)
    if not y.any():
        return float("nan")
    precision, recall, thresholds = pr_curve(scores, labels)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def mean_iou(predictions: np.ndarray, masks: np.ndarray) -> float:
    """Mean over images of the IoU of a binary prediction (N,H,W) with its label mask (N,H,W)."""
    return float(np.mean([iou(p, m) for p, m in zip(predictions, masks, strict=True)])) if len(masks) else float("nan")


def sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of `a` (N,D) and `b` (M,D), clipped at 0 (round-off)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0.0)


def mean_pairwise_distance(emb: np.ndarray) -> float:
    """Mean distance over all pairs of rows (the diversity of a set); NaN for fewer than two rows."""
    if len(emb) < 2:
        return float("nan")
    iu = np.triu_indices(len(emb), 1)
    return float(sq_distances(emb, emb)[iu].mean())


def nearest_distance(emb: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Per row of `emb`, the distance to its nearest row of `bank` (memorisation: 0 = an exact copy)."""
    return sq_distances(emb, bank).min(1)


def per_type_ap(maps: np.ndarray, masks: np.ndarray, types: np.ndarray) -> dict[str, float]:
    """Pixel AP per defect type, over the pixels of that type's images and of all good images."""
    good = types == GOOD
    return {str(t): average_precision(maps[(types == t) | good], masks[(types == t) | good])
            for t in sorted(set(types.tolist()) - {GOOD})}
