"""Sensor grain: how noisy an image is, and the grain a paste lacks when it was enlarged into a larger image.

numpy/opencv only, like the rest of `defectgen.data`.
"""

from __future__ import annotations

import cv2
import numpy as np

_NOISE_KERNEL = np.float32([[1, -2, 1], [-2, 4, -2], [1, -2, 1]])  # Immerkaer: blind to planes and ramps
MIN_NOISE_PX = 64  # fewer pixels than this give no usable noise estimate


def noise_sigma(image: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """Per-channel standard deviation of the image's pixel noise (sensor grain), in pixel units.

    Immerkaer's fast estimator made robust: the image through a kernel that cancels smooth shading (its
    response to white noise of std s has std 6 s), and 1.4826 x the median absolute response instead of the
    mean, so edges and texture inflate it little. `where` (HxW) restricts it to those pixels (eroded by one, so
    the kernel does not straddle the region's border); too few pixels give NaN.
    """
    img = np.asarray(image, np.float32)
    img = img[:, :, None] if img.ndim == 2 else img
    resp = np.abs(np.stack([cv2.filter2D(img[:, :, c], -1, _NOISE_KERNEL, borderType=cv2.BORDER_REFLECT)
                            for c in range(img.shape[2])], -1))
    sel = (np.ones(img.shape[:2], bool) if where is None
           else cv2.erode((where > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    sel[[0, -1], :] = sel[:, [0, -1]] = False
    if sel.sum() < MIN_NOISE_PX:
        return np.full(img.shape[2], np.nan, np.float32)
    return (1.4826 * np.median(resp[sel], axis=0) / 6.0).astype(np.float32)


def match_grain(pasted: np.ndarray, region: np.ndarray, reference: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """Add the white noise `pasted` lacks inside `region` to match the grain of `reference` (float HxWx3).

    A defect cut from a lower-resolution image and enlarged into a larger one (a 128 px bank crop on a 1024 px
    part) is smooth where the part has sensor grain: its dark cores quantise into flat 8-bit blocks and a
    detector learns "no grain" instead of the defect. Per channel the added std is sqrt(s_ref^2 - s_pasted^2),
    so a paste that already has the grain (the same scale) gets next to nothing.
    """
    want, have = noise_sigma(reference), noise_sigma(pasted, region)
    add = np.sqrt(np.clip(want**2 - have**2, 0.0, None))
    if not np.isfinite(add).all() or not (add > 0).any():
        return pasted
    noise = rng.standard_normal(pasted.shape).astype(np.float32) * add
    return pasted + noise * (region > 0)[:, :, None]
