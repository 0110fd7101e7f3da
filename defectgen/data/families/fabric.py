"""The `fabric` family: a round, hemmed patch of woven cloth (plain or twill weave, one of a few yarn colours)
on a dark table.

Its defects: `tear` (a ragged rip showing the table, with frayed thread ends; strong contrast), `thread` (a
thin foreign thread of another colour lying on the cloth, 1-2 px at 128 px), `spot` (a soft stain, often
with a darker tide line; medium to faint) and `fold` (a long, faint shading band where the cloth was creased,
a few grey levels). The part region is the disc of cloth, hem included.
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
    walk,
)
from defectgen.data.masks import dilate

DEFECT_TYPES = ("tear", "thread", "spot", "fold")
f32 = np.float32
# (warp, weft) yarn colours: linen, grey, olive canvas, light blue
YARNS = np.array([[[196, 181, 152], [184, 168, 140]], [[150, 150, 154], [136, 137, 143]],
                  [[128, 131, 96], [116, 120, 86]], [[150, 168, 192], [138, 156, 182]]], np.float32)
THREADS = np.array([[190, 36, 40], [36, 60, 170], [28, 28, 30], [240, 238, 230], [40, 130, 60]], np.float32)
TABLE = np.array([30, 31, 34], np.float32)


def render_part(rng: np.random.Generator, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one good patch of cloth: (uint8 res x res x 3 RGB image, uint8 {0,1} part mask)."""
    n = 2 * res
    yy, xx = grid(n)
    cx, cy = (float(v) for v in n * (0.5 + rng.uniform(-0.03, 0.03, 2)))
    radius = n * float(rng.uniform(0.38, 0.43))
    dx, dy = xx - f32(cx), yy - f32(cy)
    theta, r = np.arctan2(dy, dx), np.hypot(dx, dy)
    edge = f32(radius) * (1 + 0.008 * lookup(noise1d(rng, 96, 2.0), theta * f32(96 / (2 * np.pi))))
    alpha = np.clip(0.5 - (r - edge) / 1.5, 0, 1)

    # The weave: threads of pitch p in a slightly rotated frame, bent a little by slow distortion.
    p, angle = n * float(rng.uniform(0.034, 0.044)), float(rng.uniform(-0.35, 0.35))
    c, s = f32(np.cos(angle)), f32(np.sin(angle))
    u = (dx * c + dy * s + f32(p * 0.3) * field(rng, (n, n), n / 8)) / f32(p)
    v = (-dx * s + dy * c + f32(p * 0.3) * field(rng, (n, n), n / 8)) / f32(p)
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    twill = rng.random() < 0.35
    warp_on_top = np.mod(i + j, 3) < 2 if twill else np.mod(i + j, 2) == 0
    across_warp, across_weft = (np.clip(np.sin(np.pi * f), 0, 1) for f in (fu, fv))  # float32 can overshoot pi
    warp = across_warp ** 0.6 * (0.78 + 0.22 * across_weft)  # warp threads run along v
    weft = across_weft ** 0.6 * (0.78 + 0.22 * across_warp)
    relief = np.where(warp_on_top, np.maximum(warp, 0.5 * weft), np.maximum(weft, 0.5 * warp))
    tones = rng.normal(0, 1, (2, 4096)).astype(f32)  # each thread its own shade
    tone = np.where(warp_on_top, tones[0][np.mod(i, 4096).astype(int)], tones[1][np.mod(j, 4096).astype(int)])
    fibre = np.where(warp_on_top, lookup(noise1d(rng, 512, 0.6), u * 9), lookup(noise1d(rng, 512, 0.6), v * 9))
    yarn = YARNS[rng.integers(len(YARNS))] * f32(rng.uniform(0.88, 1.1))
    albedo = np.where(warp_on_top[..., None], yarn[0], yarn[1]) * (1 + 0.035 * tone + 0.04 * fibre)[..., None]

    # Hem: the rim is folded under (a little darker), with a line of stitches in a slightly darker yarn.
    hem = smoothstep(0.9, 0.925, r / edge)
    stitch_r = 0.95 * edge
    dash = (np.sin(theta * radius / f32(p * 0.9)) > -0.2).astype(f32)
    stitch = np.exp(-(((r - stitch_r) / f32(p * 0.2)) ** 2)) * dash
    ramp = -(LIGHT[0] * dx + LIGHT[1] * dy) / f32(n)
    shade = (0.6 + 0.4 * relief) * (0.92 + 0.35 * ramp + 0.03 * field(rng, (n, n), n / 12)) * (1 - 0.1 * hem)
    cloth = albedo * shade[..., None]
    cloth = cloth * (1 - 0.6 * stitch[..., None]) + (0.6 * stitch)[..., None] * yarn[1] * 0.6 * shade[..., None]

    bg = TABLE * f32(rng.uniform(0.8, 1.2)) + (3 * field(rng, (n, n), n / 6) + 2.5 * field(rng, (n, n), 0.7))[..., None]
    bg = bg * (1 - 0.4 * drop_shadow(alpha, n * 0.012, n * 0.01)[..., None])
    img = alpha[..., None] * cloth + (1 - alpha[..., None]) * bg
    return finish(img, alpha, res, rng)


def _surface_colour(up: np.ndarray, part2: np.ndarray) -> np.ndarray:
    return np.median(up[part2 > 0], axis=0).astype(f32)


def _tear(up: np.ndarray, part2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A ragged rip through the cloth: the dark table shows through, loose thread ends stick into it."""
    s, hw = size_of(part2), part2.shape
    c = centre_in(inner(part2, 0.15), rng, part2)
    length, angle = s * float(rng.uniform(0.08, 0.26)), float(rng.uniform(0, np.pi))
    half_w = length * float(rng.uniform(0.12, 0.35))
    t = np.linspace(-0.5, 0.5, 32)
    along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    centre = c + np.outer(t * length, along) + np.outer(rng.normal(0, 0.03, t.size).cumsum() * length, across)
    width = half_w * (1 - (2 * t) ** 2) ** 0.6
    sides = [centre + np.outer(sign * width * np.clip(1 + 0.3 * rng.standard_normal(t.size), 0.4, 1.6), across)
             for sign in (1, -1)]
    canvas = np.zeros(hw, np.uint8)
    poly = np.round(np.concatenate([sides[0], sides[1][::-1]]) * 16).astype(np.int32)
    cv2.fillPoly(canvas, [poly], 255, lineType=cv2.LINE_AA, shift=4)
    hole = canvas.astype(f32) / 255
    # through the rip: the table, in the cloth's shadow near the edges
    depth = cv2.GaussianBlur(hole, (0, 0), max(1.0, half_w * 0.4))
    table = TABLE * (0.6 + 0.4 * depth)[..., None] * (1 + 0.08 * field(rng, hw, 0.8))[..., None]
    delta = hole[..., None] * (table - up)
    # frayed rim: pulled, lighter fibres, and a few loose ends reaching into the rip
    rim = (dilate((hole > 0.5).astype(np.uint8), max(1, round(s * 0.012))) - (hole > 0.5)).astype(f32)
    delta += (rim * 0.15 * (0.5 + 0.5 * field(rng, hw, 1.0)))[..., None] * up
    yarn = _surface_colour(up, part2) * 1.08
    ys, xs = np.nonzero(rim)
    for _ in range(int(rng.integers(2, 6)) if ys.size else 0):
        k = rng.integers(ys.size)
        start = np.array([xs[k], ys[k]], float)
        heading = float(np.arctan2(*(c - start)[::-1])) + rng.normal(0, 0.5)
        end = walk(start, heading, half_w * float(rng.uniform(0.5, 1.3)), 3, 0.3, rng)
        loose = polyline_alpha(hw, end, max(1.0, s * 0.008))
        delta += loose[..., None] * (yarn - up - delta)
    return delta * part2[..., None]


def _thread(up: np.ndarray, part2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A loose thread of another colour lying on the cloth, curling gently, with a faint shadow."""
    s, hw = size_of(part2), part2.shape
    c = centre_in(inner(part2, 0.2), rng, part2)
    length, angle = s * float(rng.uniform(0.25, 0.6)), float(rng.uniform(0, 2 * np.pi))
    pts = np.concatenate([walk(c, angle + np.pi, length / 2, 6, 0.22, rng)[::-1],
                          walk(c, angle, length / 2, 6, 0.22, rng)[1:]])
    width = s * float(rng.uniform(0.008, 0.015))
    core = polyline_alpha(hw, pts, width)
    shadow = polyline_alpha(hw, pts - LIGHT[:2] * width * 1.2, width * 1.3)
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(0.8, width * 0.5))
    colour = THREADS[rng.integers(len(THREADS))] * f32(rng.uniform(0.85, 1.05))
    lit = np.sqrt(np.clip(up.mean(axis=2) / max(1.0, float(np.median(up[part2 > 0]))), 0.5, 1.4))
    col = colour * (lit * (0.92 + 0.08 * field(rng, hw, 0.8)))[..., None]
    delta = (shadow * 0.3)[..., None] * -up
    delta += core[..., None] * (col - up - delta)
    return delta * part2[..., None]


def _spot(up: np.ndarray, part2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A soft stain soaked into the cloth (water, oil, coffee): darker, often with a darker tide line."""
    s, hw = size_of(part2), part2.shape
    c = centre_in(inner(part2, 0.15), rng, part2)
    radius = s * np.sqrt(float(rng.uniform(0.015, 0.12)) / np.pi)
    yy, xx = grid(hw[0])
    dx, dy = xx - f32(c[0]), yy - f32(c[1])
    outline = 1 + 0.15 * lookup(noise1d(rng, 40, 2.0), np.arctan2(dy, dx) * f32(40 / (2 * np.pi)))
    d = np.hypot(dx, dy) / (f32(radius) * outline) + 0.06 * field(rng, hw, s * 0.03)
    body = smoothstep(1.25, 0.7, d)
    ring = np.exp(-(((d - 0.97) / 0.07) ** 2)) * float(rng.random() < 0.6)
    strength = float(rng.uniform(0.04, 0.14))
    tint = np.array([[0.85, 1.0, 1.2], [1.0, 1.0, 1.0], [0.7, 1.0, 1.45]], f32)[rng.integers(3)]
    darken = (strength * (0.75 * body + 0.5 * ring) * part2)[..., None]
    return -darken * up * tint


def _fold(up: np.ndarray, part2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crease: a long, faint shading band, sharp on the fold's side and soft on the other."""
    s, hw = size_of(part2), part2.shape
    c = centre_in(inner(part2, 0.2), rng, part2)
    angle, length = float(rng.uniform(0, np.pi)), s * float(rng.uniform(0.5, 1.0))
    w = s * float(rng.uniform(0.03, 0.06))
    yy, xx = grid(hw[0])
    dx, dy = xx - f32(c[0]), yy - f32(c[1])
    along = (dx * f32(np.cos(angle)) + dy * f32(np.sin(angle))) / f32(length / 2)
    across = -dx * f32(np.sin(angle)) + dy * f32(np.cos(angle))
    across = across + f32(w * 0.8) * lookup(noise1d(rng, 64, 4.0), along * 8)  # not ruler-straight
    narrow = np.sqrt(np.clip(1 - along ** 2, 0.05, 1))  # the crease runs out at both ends
    profile = np.exp(-0.5 * (across / (narrow * np.where(across > 0, f32(w * 1.4), f32(w * 0.4)))) ** 2)
    taper = smoothstep(1.0, 0.55, np.abs(along))
    level = float(rng.uniform(6.0, 14.0)) * (-1 if rng.random() < 0.7 else 1)
    grey = up.mean(axis=2, keepdims=True)
    relative = 0.5 + 0.5 * grey / max(1.0, float(np.median(grey[part2 > 0])))  # the weave shows through
    return (profile * taper * part2)[..., None] * f32(level) * relative


PAINTERS = {"tear": _tear, "thread": _thread, "spot": _spot, "fold": _fold}


def draw_defect(image: np.ndarray, part_mask: np.ndarray, defect_type: str,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint a fabric defect: (new uint8 image, uint8 {0,1} mask of exactly the changed pixels, on the part)."""
    return draw_with(PAINTERS, image, part_mask, defect_type, rng)


FAMILY = Family("fabric", DEFECT_TYPES, render_part, draw_defect, min_res=32)
