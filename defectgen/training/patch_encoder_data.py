"""Windows for `defectgen train patch-encoder`: (window x, mask m, good window under it, type), real or drawn by G.

The patch G composites a defect layer over a good window, so every training or test pair needs the good window
*under* the defect. For a G sample that is the window G drew on. For a real defect window it is the same window
with the defect inpainted (OpenCV Telea, mask grown by `DILATE` px), equal to the real window outside the grown
mask: what the runtime has (the good image under a stitched reference), so the pixel loss measures only the
defect and a random good window's unrelated surface does not dominate it.

Held-out real windows come from the defective images the patch GAN did *not* see (its `held_in` lists the ones
it did); held-out G samples are fresh z drawn on test/good windows (the GAN and the trainer saw train/good).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from defectgen.data.imageio import from_model
from defectgen.errors import DataError
from defectgen.nets.patch import PatchGenerator
from defectgen.training.dataset import open_category
from defectgen.training.losses import onehot
from defectgen.training.patch_data import MIN_DEFECT_PX, defect_windows, good_windows

DILATE = 1  # px the mask grows before inpainting, so the defect's anti-aliased rim is replaced too
INPAINT_RADIUS = 3  # px


@dataclass
class Windows:
    """images [N,3,P,P] in [-1,1], masks [N,1,P,P] in {0,1}, goods [N,3,P,P] (the good window under each),
    types [N] (defect type ids).
    """

    images: torch.Tensor
    masks: torch.Tensor
    goods: torch.Tensor
    types: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx: torch.Tensor | list[int]) -> Windows:
        idx = torch.as_tensor(idx, dtype=torch.int64)
        return Windows(self.images[idx], self.masks[idx], self.goods[idx], self.types[idx])


def inpaint_goods(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The good window under each real defect window: inpainted inside the grown mask, the window elsewhere."""
    kernel = np.ones((2 * DILATE + 1, 2 * DILATE + 1), np.uint8)
    out = images.clone()
    for i, (img, m) in enumerate(zip(images, masks, strict=True)):
        grown = cv2.dilate((m[0].numpy() > 0.5).astype(np.uint8), kernel)
        if not grown.any():
            continue
        filled = cv2.inpaint(from_model(img.numpy()), grown, INPAINT_RADIUS, cv2.INPAINT_TELEA)
        filled_t = torch.from_numpy(filled.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
        sel = torch.from_numpy(grown.astype(bool))[None].expand(3, -1, -1)
        out[i][sel] = filled_t[sel]
    return out


def held_out_names(root: str | os.PathLike[str], held_in: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per type, the defective image names of `root` that are not in `held_in` (sorted)."""
    cat = open_category(root)
    out = {}
    for name, seen in held_in.items():
        items = cat.defective_items([name])
        if not items:
            msg = f"--data {root} has no defective images of type {name!r}, which the patch run trained on"
            raise DataError(msg)
        have = {it.image_path.name for it in items}
        if not set(seen) <= have:
            msg = f"--data {root} lacks the patch run's held-in {name!r} images {sorted(set(seen) - have)}"
            raise DataError(msg)
        out[name] = sorted(have - set(seen))
    return out


def real_windows(root: str | os.PathLike[str], names: dict[str, list[str]], type_names: list[str], *, window: int,
                 scale: float, per_image: int, seed: int) -> Windows:
    """`per_image` windows around the defect of each named image (patch_data's cutter), with inpainted goods."""
    cat = open_category(root)
    rng = np.random.default_rng([seed, 0x0E7C])
    images, masks, types = [], [], []
    for t, name in enumerate(type_names):
        chosen = set(names.get(name, []))
        for it in sorted(cat.defective_items([name]), key=lambda i: i.image_path.name):
            if it.image_path.name not in chosen:
                continue
            image, mask = it.load()
            for img, m in defect_windows(image, mask, rng, window=window, scale=scale, count=per_image):
                images.append(img)
                masks.append(m)
                types.append(t)
    if not images:
        p = window
        empty = torch.zeros(0, 3, p, p)
        return Windows(empty, torch.zeros(0, 1, p, p), empty.clone(), torch.zeros(0, dtype=torch.int64))
    x, m = torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))
    return Windows(x, m, inpaint_goods(x, m), torch.tensor(types, dtype=torch.int64))


def eval_good_windows(root: str | os.PathLike[str], *, window: int, scale: float, per_image: int,
                      seed: int) -> torch.Tensor:
    """Good windows on the part from test/good (train/good when a category has no good test images)."""
    cat = open_category(root)
    items = cat.test_items(["good"]) or cat.train_good()
    rng = np.random.default_rng([seed, 0x7E57])
    wins = [g for it in items for g in good_windows(it.load()[0], rng, window=window, scale=scale, count=per_image)]
    return torch.from_numpy(np.stack(wins))


@torch.no_grad()
def g_samples(G: PatchGenerator, goods: torch.Tensor, types: torch.Tensor,
              z: torch.Tensor) -> tuple[Windows, torch.Tensor]:
    """G's composite + hard mask on `goods` (const noise, as the runtime), and the w+ [B, L, W] that drew them."""
    wp = G.wplus(z, onehot(types, G.cfg.n_types))
    colour, logit = G.synthesis(wp, goods, noise_mode="const")
    image, _ = G.compose(goods, colour, logit, hard=True)
    return Windows(image, (logit > 0).float(), goods, types), wp


@torch.no_grad()
def held_out_g_samples(G: PatchGenerator, goods: torch.Tensor, n: int, seed: int) -> tuple[Windows, torch.Tensor]:
    """`n` G samples (types in turn, fresh z, good windows drawn from `goods`) whose mask has >= MIN_DEFECT_PX px:
    the runtime never asks for an empty target.
    """
    gen = torch.Generator().manual_seed(seed)
    keep: list[tuple[Windows, torch.Tensor]] = []
    have, tries = 0, 0
    while have < n and tries < 20:
        types = torch.arange(n) % G.cfg.n_types
        z = torch.randn(n, G.cfg.z_dim, generator=gen)
        idx = torch.randint(len(goods), (n,), generator=gen)
        win, wp = g_samples(G, goods[idx], types, z)
        ok = torch.nonzero(win.masks.flatten(1).sum(1) >= MIN_DEFECT_PX)[:, 0][: n - have]
        keep.append((win.subset(ok), wp[ok]))
        have, tries = have + len(ok), tries + 1
    parts = [w for w, _ in keep]
    return (Windows(*(torch.cat([getattr(w, f) for w in parts]) for f in ("images", "masks", "goods", "types"))),
            torch.cat([wp for _, wp in keep]))
