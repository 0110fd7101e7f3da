"""Loading images at the segmenter's resolution, the evaluation set, per-type AP, and the pixel-level
generation measures of a source: change IoU, background PSNR and defect contrast (the feature-space figures are in
`features.py`, the ranking metrics in `metrics.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from defectgen.data.imageio import read_image, read_mask
from defectgen.data.masks import dilate

from .metrics import iou, psnr
from .sources import Sample
from .split import Split

CHANGE_THRESHOLD = 10  # a pixel "changed" when some channel moved by more than this (of 255)
RING_PX = 3  # the surface a defect's contrast is measured against: this wide a ring around its label


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


def eval_set(split: Split, res: int) -> dict[str, np.ndarray]:
    """Held-out real defects + good test images: images, masks, image labels and each image's type."""
    items = [i for t in split.types for i in split.held_out[t]] + list(split.test_good)
    images, masks = load_pairs([(i.image_path, i.mask_path) for i in items], res)
    labels = np.array([i.mask_path is not None for i in items], np.uint8)
    return {"images": images, "masks": masks, "labels": labels, "types": np.array([i.defect_type for i in items])}


def source_set(samples: Sequence[Sample], res: int) -> tuple[np.ndarray, np.ndarray]:
    return load_pairs([(Path(s.image), Path(s.mask)) for s in samples], res)


def defect_contrast(img: np.ndarray, mask: np.ndarray) -> float | None:
    """|mean colour inside the label − mean colour of the ring around it|, mean over channels (pixel units).

    How visible a defect is against its own surface: a faint generated defect scores far below a real one.
    """
    inside = mask > 0
    ring = (dilate(inside.astype(np.uint8), RING_PX) > 0) & ~inside
    if not inside.any() or not ring.any():
        return None
    x = img.reshape(*img.shape[:2], -1).astype(np.float64)
    return float(np.abs(x[inside].mean(0) - x[ring].mean(0)).mean())


def generation_quality(samples: Sequence[Sample]) -> dict[str, object]:
    """Change IoU and background PSNR (outside the mask, full resolution) of a source made on good images, and
    the defect contrast of every sample (also of the real defects), overall and per type."""
    change, bg, contrast = [], [], {}
    for s in samples:
        img = read_image(s.image)
        mask = read_mask(s.mask, img.shape[:2])
        if (c := defect_contrast(img, mask)) is not None:
            contrast.setdefault(s.type, []).append(c)
        if s.good is None:
            continue
        good = read_image(s.good)
        if good.shape != img.shape:  # cannot happen for the sources here; guard against a wrong `good`
            continue
        changed = np.abs(img.astype(np.int16) - good.astype(np.int16)).max(-1) > CHANGE_THRESHOLD
        change.append(iou(changed, mask))
        bg.append(psnr(img, good, mask == 0))
    per_type = {t: float(np.mean(v)) for t, v in sorted(contrast.items())}
    return {"change_iou": float(np.mean(change)) if change else None,
            "bg_psnr_db": float(np.mean(bg)) if bg else None,
            "contrast": float(np.mean(list(per_type.values()))) if per_type else None,
            "contrast_per_type": per_type}
