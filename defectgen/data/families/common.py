"""What the procedural part families share: noise fields, the supersampled canvas, and the one way a defect is
composited so that its mask is exactly the set of pixels it changed.

Parts and defects are drawn at 2x and shrunk with INTER_AREA (anti-aliasing). A family's defect painter returns
the change it makes at 2x (float, RGB grey levels); `paint` shrinks it, keeps the pixels on the part whose change
reaches `MIN_CHANGE` grey levels in some channel, and labels exactly the pixels whose 8-bit value moved, so a
soft stain's label follows where it is visible, not a box, and nothing outside the mask is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from defectgen.errors import DataError, choice_error

MIN_CHANGE = 3.0  # grey levels: a pixel changed less than this is left alone and not labelled
# Light comes from the upper left (image y points down), as for the nuts.
LIGHT = np.array([-0.45, -0.55, 0.70]) / np.linalg.norm([-0.45, -0.55, 0.70])

Painter = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Family:
    """One procedural part family: how a good part is rendered and how each of its defect types is painted."""

    name: str
    defect_types: tuple[str, ...]
    render_part: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]
    draw_defect: Callable[[np.ndarray, np.ndarray, str, np.random.Generator], tuple[np.ndarray, np.ndarray]]
    min_res: int = 16  # below this the finest detail (a weave, a scratch) no longer resolves


# ---- noise ----------------------------------------------------------------------------------------------------


def noise1d(rng: np.random.Generator, n: int, smooth: float) -> np.ndarray:
    """Periodic smooth 1-D noise table of length n (unit variance), sampled by `lookup`."""
    v = rng.standard_normal(n)
    k = np.exp(-0.5 * (np.arange(-3 * smooth, 3 * smooth + 1) / max(smooth, 1e-3)) ** 2)
    v = np.convolve(np.concatenate([v, v, v]), k / k.sum(), mode="same")[n:2 * n]
    return (v - v.mean()) / (v.std() + 1e-6)


def lookup(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`table` sampled at real positions `x` (wrapping around, linear in between)."""
    n = table.size
    return np.interp(np.mod(x, n), np.arange(n + 1), np.append(table, table[0])).astype(np.float32)


def field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise with unit std: grain (small sigma) or mottling (large sigma)."""
    f = max(1, int(sigma / 2))  # smooth fields are drawn small and enlarged: same look, far cheaper
    small = rng.standard_normal((-(-shape[0] // f), -(-shape[1] // f))).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), sigma / f)
    if f > 1:
        small = cv2.resize(small, (small.shape[1] * f, small.shape[0] * f), interpolation=cv2.INTER_LINEAR)
    out = small[:shape[0], :shape[1]]
    return (out - out.mean()) / (out.std() + 1e-6)


def streaks(rng: np.random.Generator, shape: tuple[int, int], along: float, across: float,
            angle: float = 0.0) -> np.ndarray:
    """Unit-std noise stretched `along` px in the direction `angle` (radians from x) and `across` px across it:
    the grain of brushed metal. Drawn axis-aligned at reduced x resolution, then rotated about the centre.
    """
    h, w = shape
    side = int(np.ceil(np.hypot(h, w))) + 2  # big enough that the rotated square covers the frame
    f = max(1, int(along / 4))
    small = rng.standard_normal((side, -(-side // f))).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=along / f, sigmaY=across)
    big = cv2.resize(small, (small.shape[1] * f, side), interpolation=cv2.INTER_LINEAR)[:, :side]
    rot = cv2.getRotationMatrix2D((side / 2, side / 2), -np.degrees(angle), 1.0)
    rot[:, 2] -= [(side - w) / 2, (side - h) / 2]
    out = cv2.warpAffine(big, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return (out - out.mean()) / (out.std() + 1e-6)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 below edge0, 1 above edge1, a smooth cubic in between (edges may be given in either order)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0, 1)
    return (t * t * (3 - 2 * t)).astype(np.float32)


# ---- canvas and geometry --------------------------------------------------------------------------------------


def grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (yy, xx) of an n x n canvas, float32."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + np.float32(0.5)
    return yy, xx


def finish(img2: np.ndarray, alpha2: np.ndarray, res: int, rng: np.random.Generator,
           noise: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Shrink a 2x render to `res` (INTER_AREA), add sensor noise: (uint8 RGB image, uint8 {0,1} part mask)."""
    small = cv2.resize(img2.astype(np.float32), (res, res), interpolation=cv2.INTER_AREA)
    small += rng.normal(0, noise, small.shape).astype(np.float32)
    mask = (cv2.resize(alpha2.astype(np.float32), (res, res), interpolation=cv2.INTER_AREA) > 0.5)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8), mask.astype(np.uint8)


def drop_shadow(alpha2: np.ndarray, reach: float, blur: float) -> np.ndarray:
    """Soft shadow of the part cast away from the light: float HxW in [0, 1]."""
    n = alpha2.shape[0]
    shift = np.float32([[1, 0, -LIGHT[0] * reach], [0, 1, -LIGHT[1] * reach]])
    return cv2.GaussianBlur(cv2.warpAffine(alpha2.astype(np.float32), shift, (n, n)), (0, 0), blur)


def centre_in(region: np.ndarray, rng: np.random.Generator, fallback: np.ndarray) -> np.ndarray:
    """A random pixel centre (x, y) of `region`, or of `fallback` when `region` is empty."""
    ys, xs = np.nonzero(region if region.any() else fallback)
    i = rng.integers(ys.size)
    return np.array([xs[i] + 0.5, ys[i] + 0.5])


def inner(part2: np.ndarray, frac: float) -> np.ndarray:
    """The part shrunk by `frac` of its size (sqrt of its area): where a defect's centre may go.

    A distance transform rather than `masks.erode`: at 1024 px the disk would be hundreds of pixels wide.
    """
    depth = cv2.distanceTransform((part2 > 0).astype(np.uint8), cv2.DIST_L2, 5)
    return (depth > size_of(part2) * frac).astype(np.uint8)


def size_of(part2: np.ndarray) -> float:
    """The part's size in canvas pixels (square root of its area): every defect dimension is a fraction of it."""
    return float(np.sqrt(max(1, int(part2.sum()))))


def polyline_alpha(shape: tuple[int, int], pts: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased stroke along `pts` (x, y), `width` px wide: float HxW in [0, 1]."""
    canvas = np.zeros(shape, np.uint8)
    thick = max(1, round(width))
    fixed = np.round(np.asarray(pts) * 16).astype(np.int32)  # 4 fractional bits
    cv2.polylines(canvas, [fixed], False, 255, thickness=thick, lineType=cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


def walk(start: np.ndarray, angle: float, length: float, steps: int, wiggle: float,
         rng: np.random.Generator) -> np.ndarray:
    """A random-walk polyline (steps + 1 points) from `start`, heading `angle`, of total `length`."""
    pts = [np.asarray(start, float)]
    for _ in range(steps):
        angle += rng.normal(0.0, wiggle)
        pts.append(pts[-1] + length / steps * np.array([np.cos(angle), np.sin(angle)]))
    return np.array(pts)


# ---- compositing ---------------------------------------------------------------------------------------------


def paint(image: np.ndarray, part: np.ndarray, delta2: np.ndarray,
          threshold: float = MIN_CHANGE) -> tuple[np.ndarray, np.ndarray]:
    """Apply a change drawn at 2x to `image`: (new uint8 image, uint8 {0,1} mask of exactly the changed pixels).

    Only pixels on `part` whose shrunk change reaches `threshold` in some channel are painted, so the mask
    lies on the part and everything outside it is bit-identical to `image`.
    """
    h, w = image.shape[:2]
    delta2 = np.ascontiguousarray(np.broadcast_to(delta2, (*delta2.shape[:2], 3)), np.float32)  # grey: all channels
    delta = cv2.resize(delta2, (w, h), interpolation=cv2.INTER_AREA)
    on = (np.abs(delta).max(axis=2) >= threshold) & (part > 0)
    new = np.clip(np.rint(image.astype(np.float32) + delta), 0, 255).astype(np.uint8)
    out = np.where(on[..., None], new, image)
    return out, (out != image).any(axis=2).astype(np.uint8)


def draw_with(painters: dict[str, Painter], image: np.ndarray, part_mask: np.ndarray, defect_type: str,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint a `defect_type` defect with its family's painter: (new uint8 image, non-empty uint8 {0,1} mask).

    The painter sees the image enlarged to 2x (float) and the part at 2x and returns its change there;
    a draw too faint to change any pixel (possible on tiny images) is redrawn.
    """
    if defect_type not in painters:
        raise DataError(choice_error("defect type", defect_type, list(painters)))
    h, w = image.shape[:2]
    up = cv2.resize(image, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    part2 = cv2.resize(part_mask, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    if not part2.any():
        msg = "part mask is empty: nowhere to put a defect"
        raise DataError(msg)
    for _ in range(10):
        out, mask = paint(image, part_mask, painters[defect_type](up, part2, rng))
        if mask.any():
            return out, mask
    msg = f"part too small to draw a {defect_type} defect at {w}x{h}"  # pragma: no cover
    raise DataError(msg)  # pragma: no cover
