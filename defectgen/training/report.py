"""Sample grids and quality numbers written by the trainers (samples/*.png, report.json, report.png)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectgen.data.imageio import atomic_write_text, from_model, write_image


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2), computed on the [0, 1] scale."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of binary masks [B,1,H,W] (1.0 when both are empty)."""
    p, t = pred.flatten(1) > 0.5, target.flatten(1) > 0.5
    inter = (p & t).sum(1).float()
    union = (p | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def mask_rgb(mask01: torch.Tensor) -> np.ndarray:
    """[1,H,W] in [0,1] -> uint8 HxWx3 gray."""
    m = np.clip(np.rint(mask01.detach().cpu().float().numpy()[0] * 255), 0, 255).astype(np.uint8)
    return np.repeat(m[:, :, None], 3, axis=2)


def tile(rows: list[list[np.ndarray]], pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile equally sized uint8 HxWx3 cells row by row with `pad` px gutters."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), fill, np.uint8)
    for i, r in enumerate(rows):
        for j, cell in enumerate(r):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = cell
    return out


def pair_cells(images: torch.Tensor, masks01: torch.Tensor) -> list[np.ndarray]:
    """One cell per sample: image and its mask side by side (1 px gutter)."""
    cells = []
    for img, m in zip(images, masks01, strict=True):
        rgb = from_model(img.detach().cpu().float().numpy())
        gutter = np.full((rgb.shape[0], 1, 3), 255, np.uint8)
        cells.append(np.concatenate([rgb, gutter, mask_rgb(m)], axis=1))
    return cells


def write_grid(path: str | os.PathLike[str], rows: list[list[np.ndarray]], scale: int | None = None) -> Path:
    """Tile and write a grid; small cells are enlarged by a whole factor (nearest: pixels stay honest)."""
    if scale is None:
        scale = int(min(4, max(1, 128 // rows[0][0].shape[0])))
    if scale > 1:
        rows = [[c.repeat(scale, axis=0).repeat(scale, axis=1) for c in r] for r in rows]
    return write_image(path, tile(rows))


def write_json(path: str | os.PathLike[str], obj: dict[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
