"""The patch GAN's outputs: the learning-curve grids, the real windows it is shown against, the loss curves and
the run report (`defectgen train patch`; the trainer is `patch_gan.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectgen.data.imageio import from_model
from defectgen.measure import colour_modes as colour
from defectgen.nets.patch import PatchGenerator
from defectgen.nets.stylegan import count_params
from defectgen.training.colour_range import colour_ranges
from defectgen.training.losses import onehot
from defectgen.training.patch_data import PatchData
from defectgen.training.report import mask_rgb, pair_cells, write_json


def fixed_goods(data: PatchData, n: int, seed: int) -> torch.Tensor:
    """`n` good windows picked by `seed` alone: the same ones in every grid of a run, so grids compare."""
    gen = torch.Generator().manual_seed(seed)
    return data.goods[torch.randperm(len(data.goods), generator=gen)[:n]]


@torch.no_grad()
def sample_grid(G: PatchGenerator, goods: torch.Tensor, types: list[str], seed: int) -> list[list[np.ndarray]]:
    """One row per type: cells (good window | composite | mask), fixed z and good windows across the run."""
    n = goods.shape[0]
    z = torch.randn(n, G.cfg.z_dim, generator=torch.Generator().manual_seed(seed)).to(goods.device)
    rows = []
    for t in range(len(types)):
        c = onehot(torch.full((n,), t, dtype=torch.int64, device=goods.device), len(types))
        image, alpha, _, _ = (v.cpu() for v in G(z, c, goods))
        cells = []
        for g, x, a in zip(goods.cpu(), image, alpha, strict=True):
            gutter = np.full((g.shape[-1], 1, 3), 255, np.uint8)
            parts = [from_model(g.numpy()), gutter, from_model(x.numpy()), gutter, mask_rgb(a)]
            cells.append(np.concatenate(parts, axis=1))
        rows.append(cells)
    return rows


def real_grid(data: PatchData, per_type: int) -> list[list[np.ndarray]]:
    """Rows of real defect windows per type (image | mask), what the samples should look like."""
    rows = []
    for t in range(len(data.type_names)):
        idx = torch.nonzero(data.types == t)[:, 0]
        idx = idx[torch.linspace(0, len(idx) - 1, per_type).long()]
        rows.append(pair_cells(data.defects[idx], data.masks[idx]))
    return rows


def plot_curves(log_path: Path, png: Path) -> None:
    """report.png: the log's loss and diversity curves against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [json.loads(s) for s in log_path.read_text().splitlines() if s.strip()]
    groups = (["loss_D", "loss_G", "loss_R1", "shape_loss_D", "loss_G_shape"],
              ["D_real", "D_fake", "shape_D_real", "shape_D_fake", "D_real_sign", "ada_p"],
              ["ms_ratio", "mask_fake", "mask_real"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, group in zip(axes, groups, strict=True):
        for k in group:
            pts = [(r["step"], r[k]) for r in lines if k in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=k, lw=1)
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)


def _share_in_mask(flag: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of the mask's pixels (mask [B,1,P,P] > 0.5) where `flag` [B,P,P] is set; NaN for an empty mask."""
    inside = mask[:, 0] > 0.5
    return float(flag[inside].float().mean()) if inside.any() else float("nan")


BLACK_LEVELS = 5  # 8-bit values at or below this, in every channel, count as drawn at black


def black_share(image: torch.Tensor, mask: torch.Tensor, levels: int = BLACK_LEVELS) -> float:
    """Share of the mask's pixels at black (every channel <= `levels` of 255) in model images [B,3,P,P] in [-1,1].

    A defect core drawn at the 8-bit floor has no texture left, and upscaled into a larger part it becomes flat
    blocks: real hole windows of the procedural set have 0.3-0.4 % such pixels; the number says how far G's exceed
    that. NaN for an empty mask.
    """
    eight_bit = torch.round((image.clamp(-1.0, 1.0) + 1.0) * 127.5)
    return _share_in_mask((eight_bit <= levels).all(dim=1), mask)


RANGE_TOLERANCE = 0.05  # model units (~6 of 255) beyond [-1, 1] before a pixel counts as out of range


def out_of_range_share(image: torch.Tensor, mask: torch.Tensor, tol: float = RANGE_TOLERANCE) -> float:
    """Share of the mask's pixels with a channel beyond [-1 - tol, 1 + tol], in model images [B,3,P,P].

    A linear or wide colour head can draw beyond the data's range; the runtime clips such pixels, so
    they come out as saturated colours the real defects never have (real windows: 0). NaN for an empty mask.
    """
    return _share_in_mask((image.abs() > 1.0 + tol).any(dim=1), mask)


def outside_range_share(image: torch.Tensor, mask: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> float:
    """Share of the mask's pixels with a channel outside [lo, hi] ([3] each: a type's colour range, the held-in
    defects' 1-99 % quantiles of `colour_range.colour_ranges`); the real windows have a few % by construction.
    NaN for an empty mask.
    """
    lo, hi = lo.to(image.device)[None, :, None, None], hi.to(image.device)[None, :, None, None]
    return _share_in_mask(((image < lo) | (image > hi)).any(dim=1), mask)


def mean_colours(image: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """(B, 3) float32: each model window's mean 8-bit RGB inside its mask (NaN rows for empty masks)."""
    eight_bit = ((image.clamp(-1.0, 1.0) + 1.0) * 127.5).permute(0, 2, 3, 1)
    return colour.mean_colours(eight_bit.cpu().numpy(), (mask[:, 0] > 0.5).cpu().numpy())


def write_report(st: Any, data: PatchData, out: Path, wall_s: float, kind: str) -> dict[str, Any]:
    """report.json (run summary; per type G_ema's mask coverage, black, out-of-range and outside-the-real-range
    shares and colour modes against the real windows') + report.png.

    `st` is the trainer's `PatchState` (not imported: the trainer imports this module), `kind` its checkpoint kind.
    """
    goods = fixed_goods(data, 64, st.cfg.seed + 1)
    n = goods.shape[0]
    z = torch.randn(n, st.g_cfg.z_dim, generator=torch.Generator().manual_seed(st.cfg.seed + 1)).to(goods.device)
    per_type = {}
    lo, hi = colour_ranges(data.defects.cpu(), data.masks.cpu(), data.types.cpu(), len(st.types))
    with torch.no_grad():
        for t, name in enumerate(st.types):
            c = onehot(torch.full((n,), t, dtype=torch.int64, device=goods.device), len(st.types))
            image, alpha, _, _ = st.G_ema(z, c, goods)
            real = data.types == t
            per_type[name] = {"held_in": st.held_in[name], "n_windows": int(real.sum()),
                              "sample_mask_coverage": round(float(alpha.mean()), 4),
                              "real_mask_coverage": round(float(data.masks[real].mean()), 4),
                              "sample_black_share": round(black_share(image, alpha), 4),
                              "real_black_share": round(black_share(data.defects[real], data.masks[real]), 4),
                              "sample_out_of_range_share": round(out_of_range_share(image, alpha), 4),
                              "sample_outside_real_range_share": round(outside_range_share(image, alpha, lo[t],
                                                                                           hi[t]), 4),
                              "real_outside_real_range_share": round(outside_range_share(
                                  data.defects[real], data.masks[real], lo[t], hi[t]), 4),
                              "colour_modes": colour.colour_modes(mean_colours(data.defects[real], data.masks[real]),
                                                           mean_colours(image, alpha), seed=st.cfg.seed)}
    rep = {"kind": kind, "step": st.step, "windows_seen": st.step * st.cfg.batch,
           "wall_s_this_call": round(wall_s, 1), "threads": torch.get_num_threads(),
           "device": str(goods.device), "defect_types": st.types,
           "params": {"G": count_params(st.G), "D": count_params(st.D),
                      **({"D_shape": count_params(st.D_shape)} if st.D_shape is not None else {})},
           "per_type": per_type,
           "n_good_windows": int(data.goods.shape[0]), "curves": "report.png"}
    write_json(out / "report.json", rep)
    plot_curves(out / "log.jsonl", out / "report.png")
    return rep
