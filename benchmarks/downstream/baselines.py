"""The three baselines defectgen is measured against, each a pure function of (good image, part mask, rng).

- **CutPaste** (Li et al., CVPR 2021): a patch of the image itself, colour-jittered, pasted elsewhere;
  "patch" = a rectangle of 2-15 % of the image area, "scar" = a thin rotated strip (sizes from the paper at
  256 px, scaled to the image).
- **DRAEM-style** (Zavrtanik et al., ICCV 2021): a thresholded Perlin-noise mask filled with an augmented
  texture, `(1 − β)·texture + β·image` with β ~ U(0, 0.8); the texture is another good image of the set
  (default) or an image from a user texture folder (DRAEM used DTD).
- **copy-paste**: a held-in real defect, mirrored/transposed at random, moved to a random spot on the part
  and pasted with its own mask (`data.stitching.stitch`: colour-matched to the new surroundings).

All masks are intersected with the part (`data.masks.part_mask`), as the generated defects are, and every
function changes pixels only inside the mask it returns.
"""

from __future__ import annotations

import cv2
import numpy as np

from defectgen.data.masks import erode
from defectgen.data.stitching import place_reference, stitch

MIN_PIXELS = 4  # a synthetic defect smaller than this is redrawn (it would be invisible at 128 px)


# ---- colour and texture augmentations ----------------------------------------------------------------------


def color_jitter(img: np.ndarray, rng: np.random.Generator, strength: float = 0.1) -> np.ndarray:
    """torchvision-like ColorJitter(b, c, s, h = strength): brightness, contrast, saturation, hue."""
    x = img.astype(np.float32)
    x *= rng.uniform(1 - strength, 1 + strength)  # brightness
    gray = x.mean()
    x = gray + (x - gray) * rng.uniform(1 - strength, 1 + strength)  # contrast
    lum = x @ np.float32([0.299, 0.587, 0.114])
    x = lum[..., None] + (x - lum[..., None]) * rng.uniform(1 - strength, 1 + strength)  # saturation
    hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(rng.uniform(-strength, strength) * 180))) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _gamma(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = rng.uniform(0.5, 2.0, 3)
    return np.clip(255.0 * (x / 255.0) ** g, 0, 255)


def _brightness(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30), 0, 255)


def _hue_sat(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(x.astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + rng.integers(-25, 26)) % 180  # ±50 on imgaug's 0..360 scale
    hsv[..., 1] = np.clip(hsv[..., 1] + rng.integers(-50, 51), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)


def _solarize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(32, 128)
    return np.where(x >= t, 255 - x, x)


def _posterize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    bits = int(rng.integers(1, 5))
    step = 2 ** (8 - bits)
    return np.floor(x / step) * step


def _invert(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 255 - x


def _autocontrast(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
    return (x - lo) * (255.0 / np.maximum(hi - lo, 1))


def _equalize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u8 = x.astype(np.uint8)
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(u8[..., c])) for c in range(3)], -1).astype(np.float32)


def _rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    a = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-45, 45), 1.0)
    return cv2.warpAffine(x, a, (w, h), borderMode=cv2.BORDER_REFLECT_101)


TEXTURE_OPS = (_gamma, _brightness, _hue_sat, _solarize, _posterize, _invert, _autocontrast, _equalize, _rotate)


def augment_texture(img: np.ndarray, rng: np.random.Generator, n_ops: int = 3) -> np.ndarray:
    """DRAEM's anomaly-source augmentation: 3 distinct ops drawn from its list, applied in random order."""
    x = img.astype(np.float32)
    for i in rng.choice(len(TEXTURE_OPS), size=n_ops, replace=False):
        x = np.clip(TEXTURE_OPS[int(i)](x, rng), 0, 255)  # float round-off (255.00002) would make gamma NaN
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---- Perlin noise masks (DRAEM) ----------------------------------------------------------------------------


def perlin_noise(shape: tuple[int, int], cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of `shape` with `cells` lattice cells per axis; values about in [-1, 1]."""
    h, w = shape
    cy, cx = cells
    ys, xs = np.linspace(0, cy, h, endpoint=False), np.linspace(0, cx, w, endpoint=False)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    iy, ix = gy.astype(int), gx.astype(int)
    fy, fx = gy - iy, gx - ix
    angles = rng.uniform(0, 2 * np.pi, (cy + 1, cx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], -1)

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grads[iy + dy, ix + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    top = corner(0, 0) + ux * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + ux * (corner(1, 1) - corner(1, 0))
    return np.sqrt(2) * (top + uy * (bottom - top))


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator, threshold: float = 0.5) -> np.ndarray:
    """DRAEM's mask: Perlin noise with 2^k cells per axis (k random per axis), rotated, thresholded.

    DRAEM draws k in [0, 6) at 256 px; here the cell count is capped so a cell stays >= 8 px.
    """
    h, w = shape
    k_max = max(1, min(6, int(np.log2(max(2, min(h, w) // 8))) + 1))
    cells = (2 ** int(rng.integers(0, k_max)), 2 ** int(rng.integers(0, k_max)))
    noise = perlin_noise((h, w), cells, rng).astype(np.float32)
    a = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-90, 90), 1.0)
    noise = cv2.warpAffine(noise, a, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    return (noise > threshold).astype(np.uint8)


def draem(good: np.ndarray, part: np.ndarray, texture: np.ndarray,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A DRAEM-style anomaly: Perlin mask (inside the part) blended with an augmented texture."""
    h, w = good.shape[:2]
    tex = cv2.resize(texture, (w, h), interpolation=cv2.INTER_AREA) if texture.shape[:2] != (h, w) else texture
    tex = augment_texture(tex, rng).astype(np.float32)
    best = np.zeros((h, w), np.uint8)
    for _ in range(30):  # redraw masks that miss the part
        m = perlin_mask((h, w), rng) & (part > 0)
        if m.sum() >= max(MIN_PIXELS, 0.002 * h * w):
            best = m
            break
        if m.sum() > best.sum():
            best = m
    if not best.any():
        best = _fallback_blob(part, rng)
    beta = rng.uniform(0.0, 0.8)
    blended = (1 - beta) * tex + beta * good.astype(np.float32)
    out = np.where(best[..., None] > 0, np.clip(np.rint(blended), 0, 255).astype(np.uint8), good)
    return out, best.astype(np.uint8)


def _fallback_blob(part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small disc inside the part (only when every random draw missed it: degenerate parts)."""
    ys, xs = np.nonzero(part)
    i = rng.integers(ys.size)
    m = np.zeros(part.shape, np.uint8)
    cv2.circle(m, (int(xs[i]), int(ys[i])), max(1, min(part.shape) // 32), 1, -1)
    m &= part > 0
    m[ys[i], xs[i]] = 1
    return m


# ---- CutPaste ----------------------------------------------------------------------------------------------


def _centres(part: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    inner = erode(part, margin)
    ys, xs = np.nonzero(inner if inner.any() else part)
    return ys, xs


def _paste_patch(good: np.ndarray, part: np.ndarray, size: tuple[int, int], angle: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cut a (w, h) patch anywhere in `good`, jitter its colour, paste it rotated by `angle` on the part."""
    h, w = good.shape[:2]
    pw, ph = min(size[0], w - 1), min(size[1], h - 1)
    ys, xs = _centres(part, min(pw, ph) // 2)
    best_img, best_mask, best_frac = good, np.zeros((h, w), np.uint8), -1.0
    for _ in range(20):
        sx, sy = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
        patch = color_jitter(good[sy:sy + ph, sx:sx + pw], rng)
        i = rng.integers(ys.size)
        a = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
        a[:, 2] += np.array([xs[i] - pw / 2, ys[i] - ph / 2])  # patch centre onto the sampled point
        moved = cv2.warpAffine(patch, a, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        foot = cv2.warpAffine(np.ones((ph, pw), np.uint8), a, (w, h), flags=cv2.INTER_NEAREST)
        mask = (foot > 0) & (part > 0)
        frac = mask.sum() / max(1, int(foot.sum()))
        if mask.sum() >= MIN_PIXELS and frac > best_frac:
            best_img, best_mask, best_frac = np.where(mask[..., None], moved, good), mask.astype(np.uint8), frac
            if frac >= 0.9:
                break
    if not best_mask.any():
        best_mask = _fallback_blob(part, rng)
        best_img = np.where(best_mask[..., None] > 0, 255 - good, good)
    return best_img, best_mask


def cutpaste_patch(good: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste "normal": area ratio U(0.02, 0.15), aspect ratio log-uniform in (0.3, 1/0.3), no rotation."""
    h, w = good.shape[:2]
    area = rng.uniform(0.02, 0.15) * h * w
    aspect = np.exp(rng.uniform(np.log(0.3), -np.log(0.3)))
    pw, ph = max(2, int(round(np.sqrt(area * aspect)))), max(2, int(round(np.sqrt(area / aspect))))
    return _paste_patch(good, part, (pw, ph), 0.0, rng)


def cutpaste_scar(good: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste "scar": width U(2, 16), length U(10, 25) at 256 px (scaled), rotated U(-45, 45) degrees."""
    s = min(good.shape[:2]) / 256.0
    pw = max(1, int(round(rng.uniform(2, 16) * s)))
    ph = max(3, int(round(rng.uniform(10, 25) * s)))
    return _paste_patch(good, part, (pw, ph), rng.uniform(-45, 45), rng)


# ---- copy-paste of real defects ----------------------------------------------------------------------------


def copy_paste(good: np.ndarray, part: np.ndarray, ref_img: np.ndarray, ref_mask: np.ndarray,
               rng: np.random.Generator, margin: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Paste a real defect (its pixels inside its own mask) at a random spot of the part.

    `place_reference` moves it (random mirror/transpose, rescaled to `good`'s size, >= 95 % on the part);
    `stitch` with no feather does the paste: the target mask equals the moved reference mask, so its warp is
    the identity and exactly the pixels under the returned mask change.
    """
    moved, target = place_reference(good, part, ref_img, ref_mask, rng, margin=margin)
    out = stitch(good, moved, target, target, feather_px=0, rng=None)
    return out, target
