"""The `plate` family: a brushed-metal plate with rounded corners, a lit chamfer and (mostly) four mounting
holes, on a dark table.

Its defects differ in character from the nuts' gashes and blobs: `scratch` (one thin stroke, 1-3 px at
128 px, bright or dark, medium to strong contrast), `pit` (a cluster of small dark round pits), `stain` (a large,
faint, soft-edged discoloration, 4-40 % of the part, a few grey levels) and `burr` (a bright specular glint on
the rim). The part region is the plate without its holes.
"""

from __future__ import annotations

import cv2
import numpy as np

from defectgen.data.families.common import (
    LIGHT,
    Family,
    centre_in,
    draw_with,
    drop_shadow,
    field,
    finish,
    grid,
    inner,
    lookup,
    noise1d,
    polyline_alpha,
    size_of,
    smoothstep,
    streaks,
    walk,
)

DEFECT_TYPES = ("scratch", "pit", "stain", "burr")
f32 = np.float32


def _rounded_rect(u: np.ndarray, v: np.ndarray, half_w: float, half_h: float, corner: float) -> np.ndarray:
    """Signed distance to a rounded rectangle centred at the origin (negative inside)."""
    qx, qy = np.abs(u) - f32(half_w - corner), np.abs(v) - f32(half_h - corner)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - f32(corner)


def render_part(rng: np.random.Generator, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one good plate: (uint8 res x res x 3 RGB image, uint8 {0,1} part mask, holes excluded)."""
    n = 2 * res
    yy, xx = grid(n)
    cx, cy = (float(v) for v in n * (0.5 + rng.uniform(-0.04, 0.04, 2)))
    half_w, half_h = n * float(rng.uniform(0.34, 0.40)), n * float(rng.uniform(0.24, 0.30))
    corner, angle = n * float(rng.uniform(0.035, 0.075)), float(rng.uniform(-0.12, 0.12))
    c, s = f32(np.cos(angle)), f32(np.sin(angle))
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    sd = _rounded_rect(u, v, half_w, half_h, corner)
    hole_r = n * float(rng.uniform(0.016, 0.026))
    if rng.random() < 0.75:  # four mounting holes near the corners
        inset = corner + 2.2 * hole_r
        for hx in (-1, 1):
            for hy in (-1, 1):
                d = np.hypot(u - f32(hx * (half_w - inset)), v - f32(hy * (half_h - inset))) - f32(hole_r)
                sd = np.maximum(sd, -d)
    alpha = np.clip(0.5 - sd / 1.5, 0, 1)

    # Chamfer: a band along every edge that tilts toward the outside, lit where it faces the light.
    bevel_w = n * 0.012
    gy, gx = np.gradient(sd)
    g = np.hypot(gx, gy) + 1e-6
    facing = -(gx * LIGHT[0] + gy * LIGHT[1]) / g  # outward normal toward the light: > 0
    bevel = np.clip(1 + sd / f32(bevel_w), 0, 1) ** 0.7

    # Brushed metal: fine grain along the plate's long side, a broad sheen band across it, slow unevenness.
    grain = 0.65 * streaks(rng, (n, n), n / 10, 0.6, angle) + 0.45 * streaks(rng, (n, n), n / 40, 0.45, angle)
    mottle = field(rng, (n, n), n / 10)
    u0, width = float(rng.uniform(-0.5, 0.5)) * half_w, float(rng.uniform(0.3, 0.7)) * half_w
    sheen = np.exp(-(((u - f32(u0)) / f32(width)) ** 2)) * (0.9 + 0.1 * lookup(noise1d(rng, 64, 2.0), v / n * 64))
    ramp = -(LIGHT[0] * (xx - cx) + LIGHT[1] * (yy - cy)) / f32(n)  # brighter toward the light
    metal = np.array([150, 153, 158], f32) * f32(rng.uniform(0.82, 1.1)) * rng.uniform(0.97, 1.03, 3).astype(f32)
    shade = 0.72 + 0.5 * ramp + 0.28 * sheen * f32(rng.uniform(0.6, 1.0)) + 0.025 * mottle
    shade = shade * (1 + 0.035 * grain) * (1 - bevel) + bevel * (0.75 + 0.55 * facing)
    part = metal * shade[..., None]

    bg = np.array([30, 31, 34], f32) * f32(rng.uniform(0.8, 1.2)) \
        + (3 * field(rng, (n, n), n / 6) + 2.5 * field(rng, (n, n), 0.7))[..., None]
    bg = bg * (1 - 0.55 * drop_shadow(alpha, n * 0.03, n * 0.015)[..., None])
    img = alpha[..., None] * part + (1 - alpha[..., None]) * bg
    return finish(img, alpha, res, rng)


def _scratch(up: np.ndarray, part2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One thin, nearly straight stroke that fades at both ends: bright where its wall catches the light."""
    s, hw = size_of(part2), part2.shape
    c = centre_in(inner(part2, 0.12), rng, part2)
    length, angle = s * float(rng.uniform(0.2, 0.55)), float(rng.uniform(0, np.pi))
    half = walk(c, angle, length / 2, 4, 0.04, rng)
    pts = np.concatenate([walk(c, angle + np.pi, length / 2, 4, 0.04, rng)[::-1], half[1:]])
    width = s * float(rng.uniform(0.01, 0.024))
    alpha = cv2.GaussianBlur(polyline_alpha(hw, pts, width), (0, 0), max(0.5, width * 0.2))
    yy, xx = grid(hw[0])
    t = ((xx - f32(c[0])) * f32(np.cos(angle)) + (yy - f32(c[1])) * f32(np.sin(angle))) / f32(length / 2)
    fade = np.clip(1 - np.abs(t) ** 4, 0, 1) ** 0.5 * (0.8 + 0.2 * field(rng, hw, max(2.0, width)))
    level = float(rng.uniform(22, 70)) * (1 if rng.random() < 0.5 else -1)
    grey = up.mean(axis=2, keepdims=True)
    target = np.clip(grey + level, 8, 250)  # a scratch is achromatic: bare metal or a shadowed groove
    return (alpha * fade * part2)[..., None] * (target - up)


def _pit(up: np.ndarray, part2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two to seven small round pits in a loose cluster: dark, with the wall away from the light lit."""
    s, hw = size_of(part2), part2.shape
    room = inner(part2, 0.06)
    c = centre_in(inner(part2, 0.15), rng, part2)
    spread = s * float(rng.uniform(0.04, 0.16))
    delta = np.zeros_like(up)
    for k in range(int(rng.integers(2, 8))):
        r = s * float(rng.uniform(0.009, 0.022))
        p = c + (rng.normal(0, spread, 2) if k else 0)  # the first pit sits at the cluster's centre
        x, y = int(np.clip(p[0], 0, hw[1] - 1)), int(np.clip(p[1], 0, hw[0] - 1))
        if not room[y, x]:
            continue
        x0, y0, x1, y1 = max(0, int(p[0] - r) - 3), max(0, int(p[1] - r) - 3), int(p[0] + r) + 4, int(p[1] + r) + 4
        win = (slice(y0, y1), slice(x0, x1))  # a pit is small: work in its window only
        yy, xx = np.mgrid[win].astype(f32) + f32(0.5)
        dx, dy = xx - f32(p[0]), yy - f32(p[1])
        rho = np.hypot(dx, dy) / f32(r)
        alpha = np.clip((1 - rho) * f32(r / 1.2) + 0.5, 0, 1)  # ~1 px soft edge at 2x
        wall = np.clip(-(dx * LIGHT[0] + dy * LIGHT[1]) / f32(r), 0, 1) * np.clip(rho, 0, 1)
        depth = float(rng.uniform(0.18, 0.35))
        col = up[win] * (depth + 0.25 * rho ** 2)[..., None] + (70 * wall ** 2)[..., None]
        delta[win] += alpha[..., None] * (col - up[win] - delta[win])
    return delta * part2[..., None]


def _stain(up: np.ndarray, part2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A large, faint, soft-edged discoloration with a wobbly outline (oil, residue, oxidation)."""
    s, hw = size_of(part2), part2.shape
    c = centre_in(inner(part2, 0.18), rng, part2)
    frac = float(rng.uniform(0.04, 0.38))  # of the part's area, roughly: the labelled part varies with amp
    radius = s * np.sqrt(frac / np.pi)
    yy, xx = grid(hw[0])
    dx, dy = xx - f32(c[0]), yy - f32(c[1])
    outline = 1 + 0.22 * lookup(noise1d(rng, 48, 2.5), np.arctan2(dy, dx) * f32(48 / (2 * np.pi)))
    d = np.hypot(dx, dy) / (f32(radius) * outline) + 0.12 * field(rng, hw, s * 0.06)
    soft = float(rng.uniform(0.2, 0.45))
    body = smoothstep(1 + soft, 1 - soft, d) * (0.85 + 0.15 * field(rng, hw, s * 0.03))
    amp = float(rng.uniform(4.5, 11.0))
    tints = np.array([[-0.8, -1.0, -1.2], [-0.55, -1.0, -1.45], [-1.0, -1.0, -1.0], [0.9, 1.0, 1.1]], f32)
    tint = tints[rng.integers(len(tints))]
    return (body * part2)[..., None] * f32(amp) * tint


def _burr(up: np.ndarray, part2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small burr on the plate's rim that throws a specular glint: a near-white streak along the edge with a
    soft bloom around it, clipped to the plate.
    """
    s, hw = size_of(part2), part2.shape
    rim = part2 - inner(part2, 0.025)
    p = centre_in(rim, rng, part2)
    smooth = cv2.GaussianBlur(part2.astype(np.float32), (0, 0), max(1.0, s * 0.02))
    gx, gy = cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    x, y = int(p[0]), int(p[1])
    normal = np.array([gx[y, x], gy[y, x]]) + 1e-6  # points into the plate
    normal /= np.linalg.norm(normal)
    tangent = np.array([-normal[1], normal[0]])
    yy, xx = grid(hw[0])
    dx, dy = xx - f32(p[0]), yy - f32(p[1])
    along, across = dx * f32(tangent[0]) + dy * f32(tangent[1]), dx * f32(normal[0]) + dy * f32(normal[1])
    length, width = s * float(rng.uniform(0.02, 0.06)), s * float(rng.uniform(0.007, 0.015))
    core = np.exp(-0.5 * ((along / f32(length)) ** 2 + (across / f32(width)) ** 2))
    bloom = np.exp(-0.5 * (along ** 2 + across ** 2) / f32(length * 0.9) ** 2)
    white = np.array([252, 252, 248], f32)
    glow = np.clip(1.4 * core + 0.25 * float(rng.uniform(0.5, 1.0)) * bloom, 0, 1)
    return (glow * part2)[..., None] * (white - up)


PAINTERS = {"scratch": _scratch, "pit": _pit, "stain": _stain, "burr": _burr}


def draw_defect(image: np.ndarray, part_mask: np.ndarray, defect_type: str,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint a plate defect: (new uint8 image, uint8 {0,1} mask of exactly the changed pixels, on the part)."""
    return draw_with(PAINTERS, image, part_mask, defect_type, rng)


FAMILY = Family("plate", DEFECT_TYPES, render_part, draw_defect, min_res=32)
