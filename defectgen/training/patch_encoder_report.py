"""Scores and report of `train patch-encoder`: does E's w+ make the patch G draw the target mask with its look?

For each held-out set (`g_samples`: fresh z on test/good windows; `real`: windows of the defective images the
patch GAN did not see, over their inpainted good windows) and each inversion start

    encoder   c0 = E(x, m)  (with `type_start`: E(x, m) - E.w_avg + G.w_avg[type])
    w_avg     c0 = the type's mean w broadcast to w+ (the runtime's start without an encoder)

it scores G(c0, good) against (x, m):

    mask_iou        IoU of G's hard mask (logit > 0) with m: does the start put the defect where the target is
    psnr_db         PSNR of the composite (smooth alpha, as exported) vs x over the window
    psnr_mask_db    PSNR inside m only: the defect's look
    latent_mse      (G samples only) mean (c0 - w+)², w+ being the latent that drew the sample
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectgen.nets.encoder import Encoder
from defectgen.nets.patch import PatchGenerator
from defectgen.training.patch_encoder_data import Windows
from defectgen.training.report import iou, pair_cells, psnr, tile

INITS = ("encoder", "w_avg")
METRICS = ("mask_iou", "psnr_db", "psnr_mask_db")


def encoder_start(E: Encoder, G: PatchGenerator, win: Windows, type_start: bool) -> torch.Tensor:
    """E's inversion start w+ [B, L, W]: E(x, m), or with `type_start` E(x, m) - E.w_avg + G.w_avg[type]."""
    wp = E(win.images, win.masks)
    if type_start:
        wp = wp + (G.w_avg[win.types] - E.w_avg)[:, None]
    return wp


def start_latent(E: Encoder, G: PatchGenerator, win: Windows, init: str, type_start: bool = False) -> torch.Tensor:
    """w+ [B, L, W] an inversion of `win` would start from (`init`: "encoder" or "w_avg", the type's mean w)."""
    if init == "encoder":
        return encoder_start(E, G, win, type_start)
    return G.w_avg[win.types][:, None].expand(-1, G.num_ws, -1)


def psnr_in_mask(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB, [0,1] scale) over the pixels where m is 1."""
    se = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).square().mul(m).flatten(1).sum(1)
    mse = se / (3 * m.flatten(1).sum(1)).clamp_min(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def scores(G: PatchGenerator, latent: torch.Tensor, win: Windows) -> dict[str, torch.Tensor]:
    colour, logit = G.synthesis(latent, win.goods, noise_mode="const")
    image, _ = G.compose(win.goods, colour, logit)  # smooth alpha: the exported synthesis' composite
    return {"mask_iou": iou((logit > 0).float(), win.masks), "psnr_db": psnr(image, win.images),
            "psnr_mask_db": psnr_in_mask(image, win.images, win.masks)}


def _means(per: dict[str, torch.Tensor], sel: torch.Tensor | None = None) -> dict[str, float]:
    return {k: round(float(v[sel].mean() if sel is not None else v.mean()), 4) for k, v in per.items()}


@torch.no_grad()
def evaluate(E: Encoder, G: PatchGenerator, sets: dict[str, tuple[Windows, torch.Tensor | None]],
             type_names: list[str], type_start: bool = False, batch: int = 64) -> dict[str, Any]:
    """{set: {n, per init: means (+ per type)}}; `sets` maps a name to (windows, known w+ or None)."""
    out: dict[str, Any] = {}
    for name, (win, wp) in sets.items():
        if len(win) == 0:
            out[name] = {"n": 0}
            continue
        entry: dict[str, Any] = {"n": len(win)}
        for init in INITS:
            parts: dict[str, list[torch.Tensor]] = {}
            for i in range(0, len(win), batch):
                chunk = win.subset(list(range(i, min(i + batch, len(win)))))
                c0 = start_latent(E, G, chunk, init, type_start)
                for k, v in scores(G, c0, chunk).items():
                    parts.setdefault(k, []).append(v)
                if wp is not None:
                    err = (c0 - wp[i:i + batch]).square().flatten(1).mean(1)
                    parts.setdefault("latent_mse", []).append(err)
            per = {k: torch.cat(v) for k, v in parts.items()}
            res = _means(per)
            res["per_type"] = {t: {"n": int((win.types == k).sum()), **_means(per, win.types == k)}
                               for k, t in enumerate(type_names) if (win.types == k).any()}
            entry[init] = res
        out[name] = entry
    return out


@torch.no_grad()
def example_rows(E: Encoder, G: PatchGenerator, win: Windows, n: int, type_start: bool = False,
                 ) -> list[list[np.ndarray]]:
    """Rows of (input | mask), (G(E) | its mask), (G(w_avg) | its mask) for `n` windows spread over `win`."""
    idx = torch.linspace(0, len(win) - 1, min(n, len(win))).long().tolist()
    sel = win.subset(idx)
    cols = [pair_cells(sel.images, sel.masks)]
    for init in INITS:
        colour, logit = G.synthesis(start_latent(E, G, sel, init, type_start), sel.goods, noise_mode="const")
        cols.append(pair_cells(G.compose(sel.goods, colour, logit)[0], (logit > 0).float()))
    return [list(row) for row in zip(*cols, strict=True)]


def plot_report(rep: dict[str, Any], grids: dict[str, list[list[np.ndarray]]], png: Path) -> Path:
    """report.png: mask IoU and in-mask PSNR per held-out set and start (bars), then example windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in rep["held_out"].items() if v.get("n")]
    fig = plt.figure(figsize=(12, 4 + 2.2 * len(grids)))
    gs = fig.add_gridspec(1 + len(grids), 2, height_ratios=[1.2] + [1.0] * len(grids))
    for j, metric in enumerate(("mask_iou", "psnr_mask_db")):
        ax = fig.add_subplot(gs[0, j])
        x = np.arange(len(names))
        for k, init in enumerate(INITS):
            vals = [rep["held_out"][s][init][metric] for s in names]
            bars = ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=init)
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_xticks(x, [f"{s} (n={rep['held_out'][s]['n']})" for s in names])
        ax.set_title(f"{metric} of G(start, good) vs the target (step {rep['step']})")
        ax.legend()
    for i, (title, rows) in enumerate(grids.items()):
        ax = fig.add_subplot(gs[1 + i, :])
        big = [[c.repeat(3, 0).repeat(3, 1) for c in r] for r in rows]
        ax.imshow(tile([list(col) for col in zip(*big, strict=True)]))
        ax.set_title(f"{title}: rows = input | G(E(x)) | G(w_avg) (image, mask)", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png
