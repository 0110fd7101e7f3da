"""Mask utilities: where the part is, random defect-shaped target masks, feathering.

The runtime needs target masks when the user gives none (`--random-masks N`); `data.stitching` pastes real
defects into them. All functions take uint8 HxWx3 images and uint8 HxW {0,1} masks of any size and return the
same conventions.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from defectgen.errors import DataError

# (height/width, centre xy, size in px ~ part diameter, rng, minimum stroke width in px) -> {0,1} mask
Shape = Callable[[tuple[int, int], np.ndarray, float, np.random.Generator, int], np.ndarray]


def _disk(px: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Grow a {0,1} mask by `px` pixels (round structuring element); px <= 0 returns a copy."""
    m = (mask > 0).astype(np.uint8)
    return cv2.dilate(m, _disk(int(px))) if px > 0 else m


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    """Shrink a {0,1} mask by `px` pixels; px <= 0 returns a copy."""
    m = (mask > 0).astype(np.uint8)
    return cv2.erode(m, _disk(int(px))) if px > 0 else m


def drop_specks(mask: np.ndarray, min_px: float) -> np.ndarray:
    """The {0,1} mask without its 8-connected pieces smaller than `min_px` pixels (stray specks of a drawn mask).

    When every piece is smaller, the largest one stays, so a non-empty mask stays non-empty.
    """
    m = (mask > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 2:
        return m
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= min_px) + 1
    if not len(keep):
        keep = np.array([int(np.argmax(areas)) + 1])
    return np.isin(labels, keep).astype(np.uint8)


def feather(mask: np.ndarray, px: int) -> np.ndarray:
    """Soft alpha for compositing: 1 on the whole mask, easing to 0 at `px` pixels outside it.

    The ramp lies outside the mask (not across its edge) so thin defects such as 1-px cracks stay fully
    opaque; beyond `dilate(mask, px)` the alpha is exactly 0, so the background there stays bit-exact.

    Returns:
        float32 HxW in [0, 1], non-increasing with the distance from the mask.
    """
    m = (mask > 0).astype(np.uint8)
    if px <= 0 or not m.any():
        return m.astype(np.float32)
    dist = cv2.distanceTransform(1 - m, cv2.DIST_L2, 5)  # distance to the nearest mask pixel
    t = np.clip(1.0 - dist / (px + 1.0), 0.0, 1.0)
    alpha = t * t * (3.0 - 2.0 * t)  # smoothstep: no visible kink where the ramp starts
    return (alpha * dilate(m, px)).astype(np.float32)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box `(x0, y0, x1, y1)` of a non-empty mask, with x1/y1 exclusive (slice-ready)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        msg = "bbox of an empty mask"
        raise DataError(msg)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _fill_holes(m: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(m)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out


def _open(m: np.ndarray, k: int) -> np.ndarray:
    return cv2.morphologyEx(m, cv2.MORPH_OPEN, _disk(max(1, k // 2)))


def _largest(m: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a {0,1} mask (all zeros stays all zeros)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    return (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8) if n > 1 else m


def _centred_ellipse(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (w // 2, h // 2), (max(1, int(w * 0.35)), max(1, int(h * 0.35))), 0, 0, 360, 1, -1)
    return m


_SRGB_TO_LINEAR = np.where((c := np.arange(256) / 255) <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
_RGB_TO_XYZ_D65 = np.float32([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                              [0.019334, 0.119193, 0.950227]]) / np.float32([[0.950456], [1.0], [1.088754]])


def rgb_to_lab8(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab of a uint8 sRGB image on OpenCV's 8-bit scale (L·255/100, a+128, b+128), float32, unrounded.

    Why not `cv2.cvtColor(..., COLOR_RGB2LAB)`: its first call in a process builds OpenCV's Lab tables, 0.15-0.3 s
    measured here, a sixth of `defectgen run`'s whole cold start; this is ~10 ms for a 256 px image and agrees
    with OpenCV to its 8-bit rounding (max 2.1, mean 0.4 on a procedural part).
    """
    xyz = _SRGB_TO_LINEAR.astype(np.float32)[rgb] @ _RGB_TO_XYZ_D65.T
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    out = np.empty(rgb.shape, np.float32)
    out[..., 0] = np.where(xyz[..., 1] > 0.008856, 116 * f[..., 1] - 16, 903.3 * xyz[..., 1]) * (255 / 100)
    out[..., 1] = 500 * (f[..., 0] - f[..., 1]) + 128
    out[..., 2] = 200 * (f[..., 1] - f[..., 2]) + 128
    return out


def part_mask(image_rgb: np.ndarray) -> np.ndarray:
    """Estimate the object region of a good image, so random masks land on the part (also for real MVTec).

    Thresholds the colour distance (Lab, blurred) of every pixel to the median border colour (see the
    comments for how), keeps the largest connected component and fills its holes. Works for dark or bright,
    plain backgrounds; if that gives something implausible (under 3 % or over 92 % of the image, as for
    texture categories where the "part" is the whole frame), falls back to a centred ellipse.
    """
    h, w = image_rgb.shape[:2]
    lab = rgb_to_lab8(image_rgb)
    k = max(3, (min(h, w) // 48) | 1)
    lab = cv2.GaussianBlur(lab, (k, k), 0)
    b = max(1, min(h, w) // 32)
    border = np.concatenate([lab[:b].reshape(-1, 3), lab[-b:].reshape(-1, 3),
                             lab[:, :b].reshape(-1, 3), lab[:, -b:].reshape(-1, 3)])
    dist = np.linalg.norm(lab - np.median(border, axis=0), axis=2)
    dist8 = np.clip(dist * (255.0 / max(float(dist.max()), 1e-6)), 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(dist8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Otsu alone splits a shaded part into its lit and its shadowed half. Cut a fifth of the way from the
    # border's level up to the level of Otsu's brighter class instead: that keeps the shadowed side, and
    # errs on the side of missing dim bits of the part rather than taking in a drop shadow, because a random
    # defect placed off the part is worse than one never placed on a dim rim.
    ring = np.concatenate([dist8[:b].ravel(), dist8[-b:].ravel(), dist8[:, :b].ravel(), dist8[:, -b:].ravel()])
    bg_level = float(np.median(ring))
    hi = dist8[dist8 > otsu]
    fg_level = float(np.median(hi)) if hi.size else 255.0
    core = (dist8 > bg_level + 0.2 * (fg_level - bg_level)).astype(np.uint8)
    core = _fill_holes(_largest(_open(core, k)))
    frac = float(core.mean())
    return core if 0.03 <= frac <= 0.92 else _centred_ellipse(h, w)


# ---- random target masks: one small drawing function per defect shape -------------------------------------


def _walk(start: np.ndarray, angle: float, length: float, steps: int, wiggle: float,
          rng: np.random.Generator) -> np.ndarray:
    """A random-walk polyline (steps+1 points) starting at `start`, heading `angle`, of total `length`."""
    pts = [start]
    for _ in range(steps):
        angle += rng.normal(0.0, wiggle)
        pts.append(pts[-1] + length / steps * np.array([np.cos(angle), np.sin(angle)]))
    return np.array(pts)


def _poly(m: np.ndarray, pts: np.ndarray, thickness: int) -> None:
    cv2.polylines(m, [np.round(pts).astype(np.int32)], False, 1, thickness=max(1, thickness))


def _crack(hw: tuple[int, int], c: np.ndarray, s: float, rng: np.random.Generator, min_w: int) -> np.ndarray:
    m = np.zeros(hw, np.uint8)
    length, a, t = s * rng.uniform(0.25, 0.45), rng.uniform(0, 2 * np.pi), max(min_w, round(s * 0.016))
    # grow both ways from the centre so the crack is centred on the sampled point
    trunk = np.concatenate([_walk(c, a + np.pi, length / 2, 5, 0.3, rng)[::-1], _walk(c, a, length / 2, 5, 0.3, rng)])
    _poly(m, trunk, t)
    for _ in range(rng.integers(1, 4)):
        i = rng.integers(2, len(trunk) - 2)
        d = trunk[i + 1] - trunk[i]
        heading = np.arctan2(d[1], d[0]) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        _poly(m, _walk(trunk[i], heading, length * rng.uniform(0.2, 0.45), 4, 0.35, rng), max(min_w, t - 1))
    return m


def _cut(hw: tuple[int, int], c: np.ndarray, s: float, rng: np.random.Generator, min_w: int) -> np.ndarray:
    m = np.zeros(hw, np.uint8)
    length, a = s * rng.uniform(0.16, 0.3), rng.uniform(0, 2 * np.pi)
    half_w, bend = max(min_w / 2 + 0.5, s * rng.uniform(0.016, 0.032)), rng.uniform(-0.08, 0.08) * length
    t = np.linspace(-0.5, 0.5, 24)
    along, across = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    centre = c + np.outer(t * length, along) + np.outer(bend * (1 - 4 * t**2), across)
    offset = np.outer(half_w * np.cos(np.pi * t) ** 0.6, across)  # lens-shaped: pointed at both ends
    cv2.fillPoly(m, [np.round(np.concatenate([centre + offset, (centre - offset)[::-1]])).astype(np.int32)], 1)
    return m


def _blob(c: np.ndarray, r: float, aspect: float, jitter: float, hw: tuple[int, int],
          rng: np.random.Generator) -> np.ndarray:
    m = np.zeros(hw, np.uint8)
    th = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    rr = r * (1 + jitter * rng.standard_normal(th.size))
    rot = rng.uniform(0, np.pi)
    x, y = rr * np.cos(th) * aspect, rr * np.sin(th) / aspect
    pts = c + np.stack([x * np.cos(rot) - y * np.sin(rot), x * np.sin(rot) + y * np.cos(rot)], 1)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m


def _hole(hw: tuple[int, int], c: np.ndarray, s: float, rng: np.random.Generator, min_w: int) -> np.ndarray:
    return _blob(c, max(min_w + 0.5, s * rng.uniform(0.035, 0.07)), rng.uniform(0.85, 1.15), 0.06, hw, rng)


def _print(hw: tuple[int, int], c: np.ndarray, s: float, rng: np.random.Generator, min_w: int) -> np.ndarray:
    """A short line of glyph-like ink strokes, as left by a stamp or a printer on the wrong part."""
    m = np.zeros(hw, np.uint8)
    g, t = s * rng.uniform(0.07, 0.11), max(min_w, round(s * rng.uniform(0.012, 0.018)))
    k, a = int(rng.integers(2, 5)), rng.uniform(0, 2 * np.pi)
    along, up = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    for j in range(k):  # one glyph per cell: 1-3 strokes between random points of the cell
        cell = c + (j - (k - 1) / 2) * 1.25 * g * along
        pts = [cell + rng.uniform(-0.5, 0.5) * g * along + rng.uniform(-0.7, 0.7) * g * up
               for _ in range(rng.integers(2, 5))]
        _poly(m, np.array(pts), t)
    return m


def _generic(hw: tuple[int, int], c: np.ndarray, s: float, rng: np.random.Generator, min_w: int) -> np.ndarray:
    return _blob(c, max(min_w + 0.5, s * rng.uniform(0.05, 0.1)), rng.uniform(0.6, 1.6), 0.12, hw, rng)


SHAPES: dict[str, Shape] = {"crack": _crack, "cut": _cut, "hole": _hole, "print": _print}
# Real MVTec categories name their types differently; pick the closest shape family by keyword.
_KEYWORDS = {"crack": "crack", "cut": "cut", "scratch": "cut", "hole": "hole", "print": "print",
             "color": "print", "contamination": "print"}


def shape_for(defect_type: str) -> Shape:
    """The mask drawing function for a defect type (by keyword; unknown types get an irregular blob)."""
    for key, shape in _KEYWORDS.items():
        if key in defect_type.lower():
            return SHAPES[shape]
    return _generic


def random_mask(defect_type: str, part_mask: np.ndarray, rng: np.random.Generator, scale: float = 1.0,
                min_width: int = 1) -> np.ndarray:
    """A random, plausibly shaped defect mask of `defect_type`, non-empty and inside `part_mask`.

    Args:
        defect_type: "crack", "cut", "hole", "print"; other names map by keyword (e.g. "scratch" -> cut),
            anything else gets an irregular blob.
        part_mask: {0,1} HxW region the defect must lie in (see `part_mask()`); any resolution.
        rng: Source of randomness (the same generator state gives the same mask).
        scale: Multiplies the defect size (1.0 = sized relative to the part, MVTec-like).
        min_width: Thinnest stroke in pixels (cracks, cuts, print); raise it when drawing supersampled.

    Returns:
        uint8 HxW {0,1}, a subset of `part_mask`.
    """
    part = (part_mask > 0).astype(np.uint8)
    if not part.any():
        msg = "part mask is empty: nowhere to put a defect"
        raise DataError(msg)
    hw = part.shape
    ys, xs = np.nonzero(part)
    s = float(np.sqrt(part.sum()) * 1.2 * scale)  # ~ the part's diameter: defects scale with the part
    inner = erode(part, int(s * 0.12))  # sample centres away from the rim so the shape fits
    cy, cx = np.nonzero(inner) if inner.any() else (ys, xs)
    draw = shape_for(defect_type)
    best, best_frac = None, 0.0
    for _ in range(20):  # redraw shapes that stick out of the part rather than clipping them hard
        i = rng.integers(cy.size)
        raw = draw(hw, np.array([cx[i], cy[i]], float), s, rng, max(1, int(min_width)))
        m = raw & part
        frac = float(m.sum()) / max(1, int(raw.sum()))
        if frac >= 0.95:
            return m
        if m.any() and frac > best_frac:
            best, best_frac = m, frac
    if best is not None:
        return best
    i = rng.integers(ys.size)  # degenerate part (a few pixels): one pixel is still a valid defect
    m = np.zeros(hw, np.uint8)
    m[ys[i], xs[i]] = 1
    return m
