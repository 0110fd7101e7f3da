"""A real defect moved into a target mask: the box warp, the fill of what it misses, and the stitched guide.

The runtime's guide image `S` is a real defect warped into the target mask and pasted (docs/design.md "The
method"); copy-paste moves a real defect with its own mask onto a part (`place_reference`). Same conventions as
`data.masks`: uint8 HxWx3 images, uint8 HxW {0,1} masks. numpy/opencv only.
"""

from __future__ import annotations

import cv2
import numpy as np

from defectgen.data.colour_match import defect_core, match_colour
from defectgen.data.grain import match_grain
from defectgen.data.masks import bbox, dilate, feather
from defectgen.errors import DataError


def _fit_affine(src: tuple[int, int, int, int], dst: tuple[int, int, int, int], flip_x: bool, flip_y: bool,
                transpose: bool) -> np.ndarray:
    """2x3 affine mapping box `src` onto box `dst`, optionally flipped/transposed (keeps boxes axis-aligned)."""
    sx0, sy0, sx1, sy1 = src
    corners = np.float32([[sx0, sy0], [sx1, sy0], [sx0, sy1]])
    dx0, dy0, dx1, dy1 = dst
    uv = np.float32([[0, 0], [1, 0], [0, 1]])
    if transpose:
        uv = uv[:, ::-1]
    uv = np.abs(uv - np.float32([flip_x, flip_y]))
    targets = np.float32([dx0, dy0]) + uv * np.float32([dx1 - dx0, dy1 - dy0])
    return cv2.getAffineTransform(corners, targets)


def warp_defect(ref_img: np.ndarray, ref_mask: np.ndarray, target_mask: np.ndarray,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Warp a reference defect so its mask's bounding box fills the target mask's bounding box.

    The reference is transposed when the two boxes disagree in aspect (a long vertical crack then fits a
    long horizontal target without squashing); with `rng` it is also mirrored at random horizontally and/or
    vertically, so together the variants cover the 90-degree rotations and mirrors. Free rotations are left
    out on purpose: they would no longer fill the box. Outside the reference image the warp reflects, so a
    feather band around the target still sees surface texture.

    Returns:
        (uint8 image, {0,1} mask), both of the target mask's size.
    """
    src, dst = bbox(ref_mask), bbox(target_mask)
    src_tall = (src[3] - src[1]) > (src[2] - src[0])
    dst_tall = (dst[3] - dst[1]) > (dst[2] - dst[0])
    transpose = src_tall != dst_tall
    flip_x = flip_y = False
    if rng is not None:
        flip_x, flip_y = bool(rng.integers(2)), bool(rng.integers(2))
    a = _fit_affine(src, dst, flip_x, flip_y, transpose)
    h, w = target_mask.shape[:2]
    img = cv2.warpAffine(ref_img, a, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    soft = cv2.warpAffine((ref_mask > 0).astype(np.float32), a, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    m = (soft >= 0.5).astype(np.uint8)
    return img, m if m.any() else (soft > 0).astype(np.uint8)


def fill_from_defect(warped: np.ndarray, wmask: np.ndarray, target_mask: np.ndarray,
                     source: np.ndarray | None = None) -> np.ndarray:
    """Give every target pixel the warped reference's *defect* look: pixels of `target_mask` outside the warped
    defect `wmask` copy their nearest pixel of `source` (default `wmask`; Voronoi fill,
    `cv2.distanceTransformWithLabels`).

    Why: fitting boxes aligns a reference crack with a target crack only roughly, so without this most of a thin
    target mask would show the reference's intact surface under a "defect" label (label noise that teaches a
    segmenter to ignore the label), while fragments of the real crack fall outside the target and are cut off.
    """
    hole = (target_mask > 0) & (wmask == 0)
    source = wmask if source is None else source
    if not hole.any() or not source.any():
        return warped
    _, labels = cv2.distanceTransformWithLabels((source == 0).astype(np.uint8), cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(source)  # DIST_LABEL_PIXEL numbers the zero pixels 1.. in row-major scan order
    lut_y, lut_x = np.zeros(ys.size + 1, np.intp), np.zeros(xs.size + 1, np.intp)
    lut_y[1:], lut_x[1:] = ys, xs
    out = warped.copy()
    lab = labels[hole]
    out[hole] = warped[lut_y[lab], lut_x[lab]]
    return out


def place_reference(good: np.ndarray, part: np.ndarray, ref_img: np.ndarray, ref_mask: np.ndarray,
                    rng: np.random.Generator, *, margin: int = 4, scale_jitter: tuple[float, float] | None = None,
                    tries: int = 30, ref_scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A real defect moved onto the part, with its own mask as the label: the geometry of copy-paste.

    The reference is cropped around its mask (plus `margin` px of context for the colour match), mirrored and
    transposed at random, rescaled when its image size differs from `good`'s, or by `ref_scale` when given (a
    native-resolution crop: its size says nothing about the part's), times a random factor in `scale_jitter`
    if given, then moved so that at least 95 % of the defect lands on the part (best of
    `tries` spots). Real masks give real label geometry: how thick a crack is, how ragged a hole's rim.

    Returns:
        (`good` with the moved reference crop pasted in, unblended, uint8 HxWx3; its {0,1} mask on the part).
        `stitch(good, moved, target, target, ...)` then blends it (its box warp is the identity).
    """
    h, w = good.shape[:2]
    x0, y0, x1, y1 = bbox(ref_mask)
    rh, rw = ref_mask.shape
    cx0, cy0, cx1, cy1 = max(0, x0 - margin), max(0, y0 - margin), min(rw, x1 + margin), min(rh, y1 + margin)
    img, msk = ref_img[cy0:cy1, cx0:cx1], (ref_mask[cy0:cy1, cx0:cx1] > 0).astype(np.uint8)
    if rng.integers(2):
        img, msk = img[:, ::-1], msk[:, ::-1]
    if rng.integers(2):
        img, msk = img[::-1], msk[::-1]
    if rng.integers(2):
        img, msk = img.transpose(1, 0, 2), msk.T
    base = min(h / rh, w / rw) if ref_scale is None else ref_scale
    scale = base * (rng.uniform(*scale_jitter) if scale_jitter else 1.0)
    scale = min(scale, 0.9 * h / img.shape[0], 0.9 * w / img.shape[1])
    if abs(scale - 1.0) > 1e-6:
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        # area averaging when shrinking; when enlarging it repeats pixels (blocks), so interpolate linearly then
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        img = cv2.resize(np.ascontiguousarray(img), size, interpolation=interp)
        msk = (cv2.resize(msk.astype(np.float32), size, interpolation=interp) >= 0.5).astype(np.uint8)
        if not msk.any():
            msk[msk.shape[0] // 2, msk.shape[1] // 2] = 1
    ch, cw = msk.shape
    on_part = part > 0
    best, best_frac = (0, 0), -1.0
    for _ in range(tries):
        tx, ty = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        frac = float((msk & on_part[ty:ty + ch, tx:tx + cw]).sum()) / float(msk.sum())
        if frac > best_frac:
            best, best_frac = (tx, ty), frac
            if frac >= 0.95:
                break
    tx, ty = best
    moved = good.copy()
    moved[ty:ty + ch, tx:tx + cw] = img
    target = np.zeros((h, w), np.uint8)
    target[ty:ty + ch, tx:tx + cw] = msk
    if (target & on_part).sum() >= 1:
        target &= on_part.astype(np.uint8)
    return moved, target


def stitch(good: np.ndarray, ref_img: np.ndarray, ref_mask: np.ndarray, target_mask: np.ndarray,
           feather_px: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """The guide image `S`: `good` with a real defect warped into `target_mask` and pasted, feathered.

    Target pixels the warped defect misses take the look of its nearest defect pixel (`fill_from_defect`), so
    everything under the target mask looks defective: of its core (`defect_core`), not of its label's margin,
    which shows the surface (a thin crack's generous label filled the misses with surface-coloured patches).

    Colour match (`match_colour`): the warped reference's colours are moved per channel so that its median
    colour in a ring just around the (target and warped) defect equals the good image's median colour there (a
    median: the ring may reach past the reference part), by an offset, or by a gain where an offset would push
    the defect past black or white. The defect keeps its contrast while the pasted surface blends in.
    Where the warp enlarged the defect past the grain of `good`, the missing grain is added (`match_grain`).
    Pixels outside `dilate(target_mask, feather_px)` are returned unchanged.

    Returns:
        uint8 HxWx3, same size as `good`.
    """
    if good.shape[:2] != target_mask.shape[:2]:
        (mh, mw), (h, w) = target_mask.shape[:2], good.shape[:2]
        msg = f"target mask size {mw}x{mh} != image size {w}x{h}"
        raise DataError(msg)
    warped, wmask = warp_defect(ref_img, ref_mask, target_mask, rng)
    both = ((target_mask > 0) | (wmask > 0)).astype(np.uint8)
    ring = (dilate(both, max(2, feather_px + 2)) & (1 - both)).astype(bool)
    ref_surface = np.median(warped[ring], axis=0) if ring.any() else None
    look = wmask if ref_surface is None else defect_core(warped, wmask, ref_surface).astype(np.uint8)
    warped = fill_from_defect(warped, wmask, target_mask, look).astype(np.float32)
    if ref_surface is not None:
        warped = match_colour(warped, ref_surface, np.median(good[ring], axis=0), both > 0)
    alpha = feather(target_mask, feather_px)[:, :, None]
    warped = match_grain(warped, (alpha[:, :, 0] > 0).astype(np.uint8), good,
                         rng if rng is not None else np.random.default_rng(0))
    blended = np.clip(np.rint(good + alpha * (warped - good)), 0, 255).astype(np.uint8)
    return np.where(alpha > 0, blended, good)
