"""Contact sheets: one PNG grid to eyeball a dataset or a run (make-data, run and demo all write one).

Each cell is an image with its mask drawn as a red outline (the image itself stays visible under the label)
and a short label underneath.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from defectgen.data.imageio import write_image

Cell = tuple[np.ndarray, "np.ndarray | None", str]

_GAP = 2
_LABEL_H = 14
_BG = (24, 24, 24)
_RED = (255, 40, 40)


def _fit(img: np.ndarray, tile: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Letterbox `img` into a tile x tile square; returns (tile image, (x0, y0, width, height) of the image)."""
    h, w = img.shape[:2]
    scale = tile / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    # nearest when enlarging: a sheet is for inspecting pixels, not for pretty interpolation
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    out = np.full((tile, tile, 3), _BG, np.uint8)
    x0, y0 = (tile - nw) // 2, (tile - nh) // 2
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(img, (nw, nh), interpolation=interp)
    return out, (x0, y0, nw, nh)


def _cell(img: np.ndarray, mask: np.ndarray | None, label: str, tile: int) -> np.ndarray:
    rgb = img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)
    out, (x0, y0, nw, nh) = _fit(rgb.astype(np.uint8), tile)
    if mask is not None and np.any(mask):
        big = cv2.resize((mask > 0).astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
        big = cv2.dilate(big, np.ones((3, 3), np.uint8))  # outline just outside, so thin defects stay visible
        contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, _RED, 1, offset=(x0, y0))
    strip = np.full((_LABEL_H, tile, 3), _BG, np.uint8)
    text, font, fs = label, cv2.FONT_HERSHEY_SIMPLEX, 0.33
    while text and cv2.getTextSize(text, font, fs, 1)[0][0] > tile - 4:
        text = text[:-1]
    cv2.putText(strip, text, (2, _LABEL_H - 4), font, fs, (230, 230, 230), 1, cv2.LINE_AA)
    return np.concatenate([out, strip], axis=0)


def contact_sheet(rows: list[list[Cell]], path: str | os.PathLike[str], tile: int | None = None) -> Path:
    """Write a grid PNG: one row per list, each cell `(uint8 image, {0,1} mask or None, label)`.

    Args:
        rows: Rows of cells; rows may differ in length (short rows are padded with background).
        path: Output PNG, written atomically.
        tile: Cell side in pixels; default: the largest image side, enlarged by a whole factor to at least
            96 so small images stay readable, and at most 256 so big ones keep the sheet small.

    Returns:
        `path`.
    """
    cells = [c for r in rows for c in r]
    if tile is None:
        biggest = max((max(c[0].shape[:2]) for c in cells), default=96)
        # small images are enlarged by a whole factor so every source pixel stays the same size
        tile = biggest * -(-96 // biggest) if biggest < 96 else min(biggest, 256)
    ncol = max((len(r) for r in rows), default=1)
    cell_h = tile + _LABEL_H
    sheet = np.full((_GAP + max(1, len(rows)) * (cell_h + _GAP), _GAP + ncol * (tile + _GAP), 3), _BG, np.uint8)
    for i, row in enumerate(rows):
        for j, (img, mask, label) in enumerate(row):
            y, x = _GAP + i * (cell_h + _GAP), _GAP + j * (tile + _GAP)
            sheet[y:y + cell_h, x:x + tile] = _cell(img, mask, label, tile)
    return write_image(Path(path), sheet)
