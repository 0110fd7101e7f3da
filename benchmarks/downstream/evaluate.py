"""Loading images at the segmenter's resolution, and the generation-side measures of a source:
change IoU, background PSNR and diversity (the segmentation metrics live in `metrics.py`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from defectgen.data.imageio import read_image, read_mask
from defectgen.data.masks import bbox

from .metrics import diversity, iou, psnr
from .sources import Sample
from .split import Split

CHANGE_THRESHOLD = 10  # a pixel "changed" when some channel moved by more than this (of 255)
DIVERSITY_CROP = 32  # defect crops are compared at this size


def resize_image(img: np.ndarray, res: int) -> np.ndarray:
    if img.shape[:2] == (res, res):
        return img
    shrink = img.shape[0] >= res and img.shape[1] >= res
    return cv2.resize(img, (res, res), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, res: int) -> np.ndarray:
    """{0,1} mask to res x res: area coverage >= 0.5, or > 0 where that would erase a thin defect entirely."""
    if mask.shape == (res, res):
        return (mask > 0).astype(np.uint8)
    cover = cv2.resize((mask > 0).astype(np.float32), (res, res), interpolation=cv2.INTER_AREA)
    out = (cover >= 0.5).astype(np.uint8)
    return out if out.any() or not mask.any() else (cover > 0).astype(np.uint8)


def load_pairs(pairs: Sequence[tuple[Path, Path | None]], res: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N,res,res,3), {0,1} (N,res,res)) for (image, mask or None) path pairs."""
    imgs, masks = [], []
    for img_p, mask_p in pairs:
        img = read_image(img_p)
        mask = read_mask(mask_p, img.shape[:2]) if mask_p is not None else np.zeros(img.shape[:2], np.uint8)
        imgs.append(resize_image(img, res))
        masks.append(resize_mask(mask, res))
    return np.stack(imgs), np.stack(masks)


def eval_set(split: Split, res: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out real defects + good test images: (images, masks, image labels)."""
    items = [i for t in split.types for i in split.held_out[t]] + list(split.test_good)
    images, masks = load_pairs([(i.image_path, i.mask_path) for i in items], res)
    labels = np.array([i.mask_path is not None for i in items], np.uint8)
    return images, masks, labels


def source_set(samples: Sequence[Sample], res: int) -> tuple[np.ndarray, np.ndarray]:
    return load_pairs([(Path(s.image), Path(s.mask)) for s in samples], res)


def _crop(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Square crop around the defect (25 % margin, >= 8 px), resized to DIVERSITY_CROP, float in [0, 1]."""
    x0, y0, x1, y1 = bbox(mask)
    side = max(8, int(1.25 * max(x1 - x0, y1 - y0)))
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    h, w = mask.shape
    xa, ya = min(max(0, cx - side // 2), max(0, w - side)), min(max(0, cy - side // 2), max(0, h - side))
    crop = img[ya:ya + side, xa:xa + side]
    return cv2.resize(crop, (DIVERSITY_CROP, DIVERSITY_CROP), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def diversity_by_type(pairs: Sequence[tuple[np.ndarray, np.ndarray, str]], per_type: int = 64) -> dict[str, float]:
    """Mean pairwise RMS distance of defect crops within each type (first `per_type` of each)."""
    crops: dict[str, list[np.ndarray]] = defaultdict(list)
    for img, mask, t in pairs:
        if len(crops[t]) < per_type and mask.any():
            crops[t].append(_crop(img, mask))
    return {t: diversity(c) for t, c in sorted(crops.items())}


def generation_quality(samples: Sequence[Sample], per_type: int = 64) -> dict[str, object]:
    """Change IoU, background PSNR (outside the mask, full resolution) and diversity of a source."""
    change, bg, pairs = [], [], []
    for s in samples:
        img = read_image(s.image)
        mask = read_mask(s.mask, img.shape[:2])
        good = read_image(s.good)
        if good.shape != img.shape:  # cannot happen for the sources here; guard against a wrong `good`
            continue
        changed = np.abs(img.astype(np.int16) - good.astype(np.int16)).max(-1) > CHANGE_THRESHOLD
        change.append(iou(changed, mask))
        bg.append(psnr(img, good, mask == 0))
        pairs.append((img, mask, s.type))
    div = diversity_by_type(pairs, per_type)
    vals = [v for v in div.values() if np.isfinite(v)]
    return {"change_iou": float(np.mean(change)) if change else None,
            "bg_psnr_db": float(np.mean(bg)) if bg else None,
            "diversity": float(np.mean(vals)) if vals else None, "diversity_by_type": div}


def real_diversity(split: Split, per_type: int = 64) -> dict[str, object]:
    """The same diversity on the held-out real defects: what a realistic source should come close to."""
    pairs = []
    for t in split.types:
        for item in split.held_out[t][:per_type]:
            img, mask = item.load()
            pairs.append((img, mask, t))
    div = diversity_by_type(pairs, per_type)
    vals = [v for v in div.values() if np.isfinite(v)]
    return {"diversity": float(np.mean(vals)) if vals else None, "diversity_by_type": div}
