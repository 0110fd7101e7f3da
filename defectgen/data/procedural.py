"""The procedural datasets: defectgen's own demo and test data, since MVTec AD can't be shipped.

Three part families (`FAMILIES`): the nuts live here, the others in `defectgen.data.families`. A nut is a
shaded, streaked, slightly pointed brown nut on a dark, noisy background, rendered at 2x and shrunk with
INTER_AREA for anti-aliasing. Defects are drawn on top at 2x too, and their masks are derived from the very
alpha used to paint them, so a mask is exactly the set of pixels the defect changed.
Everything is a pure function of a numpy Generator: `make_dataset` gives each file its own child seed
(`[seed, group, index]`), so equal seeds give byte-identical files and changing one count leaves the other
groups' images unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from defectgen import DEFAULT_DEFECT_TYPES, GOOD
from defectgen.data.contact import contact_sheet
from defectgen.data.families import fabric, plate
from defectgen.data.families.common import LIGHT, Family, field, lookup, noise1d
from defectgen.data.imageio import atomic_write_text
from defectgen.data.masks import dilate, erode, random_mask
from defectgen.data.mvtec import MVTecWriter
from defectgen.errors import DataError, choice_error

MARKER = ".defectgen-procedural"  # marks a folder make-data wrote, so a rerun may replace it
INKS = np.array([[25, 35, 110], [22, 20, 24], [140, 22, 30], [80, 30, 105], [25, 80, 45]], np.float32)


def render_part(rng: np.random.Generator, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one good part: (uint8 res x res x 3 RGB image, uint8 {0,1} part mask)."""
    n = 2 * res  # supersampled; INTER_AREA below anti-aliases the silhouette and the streaks
    f32 = np.float32  # plain-float parameters keep every array float32 (numpy scalars would promote)
    yy, xx = np.mgrid[0:n, 0:n].astype(f32) + f32(0.5)
    cx, cy = (float(v) for v in n * (0.5 + rng.uniform(-0.05, 0.05, 2)))
    r0, elong, tip = n * float(rng.uniform(0.29, 0.35)), float(rng.uniform(1.0, 1.1)), float(rng.uniform(0.1, 0.2))
    phi = float(rng.uniform(0, 2 * np.pi))  # direction of the pointed tip
    c, s = float(np.cos(phi)), float(np.sin(phi))
    u, v = ((xx - cx) * c + (yy - cy) * s) / (r0 * elong), (-(xx - cx) * s + (yy - cy) * c) / r0
    theta = np.arctan2(v, u)
    w0, w1, w2 = (float(x) for x in rng.normal(0, 0.015, 3))
    outline = 1 + tip * np.maximum(np.cos(theta), 0) ** 8 + w0 * np.cos(2 * theta + w1 * 99) + w2 * np.sin(3 * theta)
    rho = np.hypot(u, v) / outline
    alpha = np.clip((1 - rho) * (r0 / 1.5), 0, 1)  # ~1.5 supersampled pixels of soft edge
    a, b = u / outline, v / outline  # point on the unit sphere (a along the axis, b across)
    z = np.sqrt(np.clip(1 - a * a - b * b, 0, 1))
    nx, ny = a * c - b * s, a * s + b * c  # normal back in image axes
    light = LIGHT + np.r_[rng.normal(0, 0.08, 2), 0]
    light /= np.linalg.norm(light)
    diffuse = np.clip(float(light[0]) * nx + float(light[1]) * ny + float(light[2]) * z, 0, 1)
    hx, hy, hz = (float(h) for h in (light + [0, 0, 1]) / np.linalg.norm(light + [0, 0, 1]))
    spec = np.clip(hx * nx + hy * ny + hz * z, 0, 1) ** f32(rng.uniform(18, 30))

    # Surface: streaks along the meridians (they converge at tip and base, like a hazelnut's shell lines),
    # mottling, grain, and a pale rough scar at the base where the nut was attached.
    meridian = np.arctan2(b, z + f32(1e-3)) * f32(60 / np.pi)
    streak = lookup(noise1d(rng, 120, 1.5), meridian) * (0.5 + 0.5 * np.abs(field(rng, (n, n), n / 25)))
    lines = np.maximum(lookup(noise1d(rng, 360, 0.7), meridian * 3) - 1.0, 0)  # fine darker veins
    mottle, grain = field(rng, (n, n), n / 18), field(rng, (n, n), 0.8)
    brown = np.array([138, 84, 44], f32) * f32(rng.uniform(0.85, 1.12)) * rng.uniform(0.95, 1.05, 3).astype(f32)
    albedo = brown * (1 + 0.1 * streak - 0.12 * lines + 0.07 * mottle + 0.05 * grain)[..., None]
    scar = np.clip((-a - 0.62 + 0.06 * field(rng, (n, n), n / 40)) / 0.12, 0, 1) * (z > 0.05)
    scar_col = np.array([172, 148, 112], f32) * (1 + 0.12 * grain + 0.06 * mottle)[..., None]
    albedo = albedo * (1 - scar[..., None]) + scar_col * scar[..., None]
    shade = 0.3 + 0.78 * diffuse + 0.16 * z  # inspection lighting is soft: the far side stays brown
    part = albedo * shade[..., None] + (255 * 0.45 * spec * (1 - scar) * (0.8 + 0.2 * mottle))[..., None]

    # Background: dark grey with slow unevenness and sensor-like noise; a soft drop shadow off the light.
    bg = np.array([34, 33, 32], f32) * f32(rng.uniform(0.8, 1.2)) \
        + (3 * field(rng, (n, n), n / 6) + 2.5 * field(rng, (n, n), 0.7))[..., None]
    shift = np.float32([[1, 0, -light[0] * n * 0.05], [0, 1, -light[1] * n * 0.05]])
    shadow = cv2.GaussianBlur(cv2.warpAffine(alpha, shift, (n, n)), (0, 0), n * 0.03)
    bg = bg * (1 - 0.5 * shadow[..., None])
    img = alpha[..., None] * part + (1 - alpha[..., None]) * bg
    small = cv2.resize(img, (res, res), interpolation=cv2.INTER_AREA)
    small += rng.normal(0, 1.2, small.shape).astype(f32)  # final-resolution sensor noise
    mask = (cv2.resize(alpha, (res, res), interpolation=cv2.INTER_AREA) > 0.5).astype(np.uint8)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8), mask


def _lit(shape: np.ndarray) -> np.ndarray:
    """-1..1 per pixel: how much a dent's wall at this point faces the light (for pits and gashes)."""
    m = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), 1.5)
    gx, gy = cv2.Sobel(m, cv2.CV_32F, 1, 0), cv2.Sobel(m, cv2.CV_32F, 0, 1)  # point into the dent
    g = np.hypot(gx, gy) + 1e-6
    # inside a dent the wall nearer the light is in shadow, the far wall is lit
    return -(gx * LIGHT[0] + gy * LIGHT[1]) / g * np.clip(g * 4, 0, 1)


def _crack(up: np.ndarray, shape: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    core, rim = shape, dilate(shape, 1) - shape
    dark = up * rng.uniform(0.15, 0.3) + [8, 5, 3]
    light = np.minimum(up * 1.35 + 20, 255)
    col = np.where(core[..., None] > 0, dark, light)
    return col, (core + rim * 0.8).astype(np.float32)


def _shading(up: np.ndarray) -> np.ndarray:
    """How lit each pixel of the shell is (about 1 on the lit side), so painted material gets the same light."""
    return np.clip(up.mean(axis=2) / 90.0, 0.25, 1.6)[..., None]


def _cut(up: np.ndarray, shape: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    depth = cv2.distanceTransform(shape, cv2.DIST_L2, 3)
    depth /= max(float(depth.max()), 1e-6)
    flesh = np.array([214, 188, 142], np.float32) * rng.uniform(0.85, 1.05)
    grain = 1 + 0.06 * field(rng, shape.shape, 0.8)
    col = flesh * ((0.7 + 0.25 * _lit(shape) + 0.15 * depth) * grain)[..., None] * np.sqrt(_shading(up))
    edge = shape - erode(shape, 1)
    col = np.where(edge[..., None] > 0, up * 0.4, col)
    return col, shape.astype(np.float32)


def _hole(up: np.ndarray, shape: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    depth = cv2.distanceTransform(shape, cv2.DIST_L2, 3)
    depth /= max(float(depth.max()), 1e-6)
    pit = np.array([40, 26, 17], np.float32) * ((1.0 - 0.8 * depth) * (1 + 0.45 * _lit(shape)))[..., None]
    rim = dilate(shape, max(1, round(np.sqrt(shape.sum()) * 0.08))) - shape
    rim_col = np.minimum(up * 1.2 + [30, 24, 16], 255)  # pale, broken shell around the pit
    col = np.where(shape[..., None] > 0, pit, rim_col)
    return col, (shape + rim * 0.7).astype(np.float32)


def _print(up: np.ndarray, shape: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ink = INKS[rng.integers(len(INKS))]
    # ink is lit like the shell under it; a little of the shell's texture shows through
    col = (0.8 * ink + 0.2 * up * (ink + 60) / 255) * _shading(up)
    alpha = shape * np.clip(rng.uniform(0.8, 0.95) + 0.08 * field(rng, shape.shape, 2.0), 0, 1)
    return col, alpha.astype(np.float32)


PAINTERS = {"crack": _crack, "cut": _cut, "hole": _hole, "print": _print}


def draw_defect(image: np.ndarray, part_mask: np.ndarray, defect_type: str,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint a `defect_type` defect on the part: (new uint8 image, uint8 {0,1} mask, non-empty).

    The shape comes from `masks.random_mask` at 2x; its colour and alpha are shrunk (premultiplied) to the
    image size, and only pixels whose alpha reaches 0.3 are painted and labelled, so pixels outside the
    mask are bit-identical to `image` and the mask has no fringe of invisible pixels.
    """
    if defect_type not in PAINTERS:
        raise DataError(choice_error("defect type", defect_type, list(PAINTERS)))
    h, w = image.shape[:2]
    up = cv2.resize(image, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    part2 = cv2.resize(part_mask, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    for _ in range(10):
        col, alpha = PAINTERS[defect_type](up, random_mask(defect_type, part2, rng, min_width=2), rng)
        alpha *= part2
        a = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA)
        premult = cv2.resize(col * alpha[..., None], (w, h), interpolation=cv2.INTER_AREA)
        mask = (a >= 0.3).astype(np.uint8)
        if mask.any():
            break
    else:  # pragma: no cover - a part too small to hold a visible defect
        msg = f"part too small to draw a {defect_type} defect at {w}x{h}"
        raise DataError(msg)
    color = premult / np.maximum(a, 1e-6)[..., None]
    blended = np.clip(np.rint(image * (1 - a[..., None]) + color * a[..., None]), 0, 255).astype(np.uint8)
    return np.where(mask[..., None] > 0, blended, image), mask


NUTS = Family("nuts", DEFAULT_DEFECT_TYPES, render_part, draw_defect)
FAMILIES: dict[str, Family] = {f.name: f for f in (NUTS, plate.FAMILY, fabric.FAMILY)}
DEFAULT_CATEGORY = "nuts"


def family(category: str) -> Family:
    """The part family named `category` (nuts, plate, fabric)."""
    if category not in FAMILIES:
        raise DataError(choice_error("category", category, list(FAMILIES)))
    return FAMILIES[category]


def _check_args(res: int, counts: dict[str, int], fam: Family) -> None:
    low = max(16, fam.min_res)
    if not isinstance(res, int) or not low <= res <= 1024:
        msg = f"res must be an integer between {low} and 1024 for category {fam.name}, got {res!r}"
        raise DataError(msg)
    for name, value in counts.items():
        if not isinstance(value, int) or value < (1 if name == "n_good" else 0):
            msg = f"{name} must be an integer >= {1 if name == 'n_good' else 0}, got {value!r}"
            raise DataError(msg)


def _prepare(out: Path, settings: dict[str, int]) -> None:
    """Create `out`; replace it only if a previous make-data wrote it (never clobber someone's data)."""
    if out.exists() and not out.is_dir():
        msg = f"output path exists and is not a folder: {out}"
        raise DataError(msg)
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            msg = f"output folder is not empty and was not written by make-data: {out}"
            raise DataError(msg)
        for sub in ("train", "test", "ground_truth"):
            shutil.rmtree(out / sub, ignore_errors=True)
    atomic_write_text(out / MARKER, json.dumps(settings, sort_keys=True) + "\n")


def make_dataset(out: str | os.PathLike[str], *, res: int = 128, n_good: int = 200, n_defect: int = 40,
                 n_test_good: int = 20, seed: int = 0, category: str = DEFAULT_CATEGORY) -> Path:
    """Write a procedural dataset in MVTec AD layout under `out`, plus `out/contact_sheet.png`.

    Args:
        out: Category folder to write (created; a folder from an earlier make-data run is replaced).
        res: Image side in pixels (16..1024; 32..1024 for plate and fabric).
        n_good: Good training images, `train/good/000.png`... (>= 1).
        n_defect: Images per defect type in `test/<type>/` with masks (the family's four types).
        n_test_good: Good test images in `test/good/`.
        seed: Everything derives from it; the same (category, seed) gives byte-identical files.
        category: Part family, one of `FAMILIES` (nuts, plate, fabric); recorded in the folder's marker file.

    Returns:
        Path of the contact sheet (a row of good parts, then one row per defect type, masks outlined).
    """
    fam = family(category)
    counts = {"n_good": n_good, "n_defect": n_defect, "n_test_good": n_test_good, "seed": seed}
    _check_args(res, counts, fam)
    out = Path(out)
    _prepare(out, {"category": fam.name, "res": res, **counts})
    writer = MVTecWriter(out)
    groups = [("train", GOOD, n_good), ("test", GOOD, n_test_good)] + [("test", t, n_defect)
                                                                       for t in fam.defect_types]
    rows: dict[str, list] = {}
    with tqdm(total=sum(g[2] for g in groups), desc=f"make-data {fam.name}", unit="img", leave=False) as bar:
        for gi, (split, kind, count) in enumerate(groups):
            for i in range(count):
                rng = np.random.default_rng([seed, gi, i])
                image, part = fam.render_part(rng, res)
                if kind == GOOD:
                    writer.write_good(split, f"{i:03d}", image)
                    mask = None
                else:
                    image, mask = fam.draw_defect(image, part, kind, rng)
                    writer.write_defect(kind, f"{i:03d}", image, mask)
                row = rows.setdefault(f"{split}/{kind}", [])
                if len(row) < 8:
                    row.append((image, mask, f"{fam.name} {kind} {i:03d}"))
                bar.update()
    sheet = [rows[k] for k in ("train/good", *(f"test/{t}" for t in fam.defect_types)) if k in rows]
    return contact_sheet(sheet, out / "contact_sheet.png")
