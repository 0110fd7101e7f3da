"""Patch-mode training data: windows of P model px around held-in defects, and good windows on the part.

Few-shot protocol (docs/design.md "Measuring defect quality"): per defect type, only the *held-in* images (the
first third by sorted file name, or `held_in` per type) may be seen; the rest is the test. Windows keep the
data's native pixel scale (`scale` data px per model px), so a 10 px crack stays 10 px; the window is centred
on a random pixel of the defect's mask, jittered, and augmented once here (flips, rot90, +-10 % scale,
brightness/contrast). Good windows come from train/good, centred on the part (`part_mask`), because the
layered G composites onto them and a window of pure background teaches nothing. Everything is drawn from
`seed` once and held in memory (a few thousand windows), so the data is a pure function of the options and a
resumed run sees the same windows.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

from defectgen.data.masks import part_mask
from defectgen.data.mvtec import Item
from defectgen.errors import DataError
from defectgen.training.dataset import open_category

MIN_DEFECT_PX = 2  # a defect window must hold at least this many mask px (model scale)
SCALE_JITTER = 0.1  # +-10 % zoom: defects vary in size, but the native scale must stay the anchor


@dataclass
class PatchData:
    """Defect windows [N,3,P,P] in [-1,1] + masks [N,1,P,P] in {0,1} + type ids [N]; good windows [M,3,P,P]."""

    defects: torch.Tensor
    masks: torch.Tensor
    types: torch.Tensor
    goods: torch.Tensor
    type_names: list[str]  # defect types only, id order
    held_in: dict[str, list[str]]  # type -> image file names the windows came from

    def to(self, device: str) -> PatchData:
        """The same windows on `device` (a GPU run keeps the whole set there: a few hundred MB at most)."""
        return replace(self, defects=self.defects.to(device), masks=self.masks.to(device),
                       types=self.types.to(device), goods=self.goods.to(device))


def held_in_items(items: list[Item], n: int | None) -> list[Item]:
    """The first `n` items by sorted file name (default ceil(len / 3): the protocol's first third)."""
    items = sorted(items, key=lambda it: it.image_path.name)
    k = math.ceil(len(items) / 3) if n is None else n
    if not 1 <= k <= len(items):
        msg = f"--held-in {n} must be in [1, {len(items)}] (defect images of type {items[0].defect_type!r})"
        raise DataError(msg)
    return items[:k]


def _crop(img: np.ndarray, cy: int, cx: int, side: int) -> np.ndarray:
    """Crop side x side px centred at (cy, cx); outside the image: reflection (images) or zeros (masks)."""
    pad = side
    mode = cv2.BORDER_REFLECT_101 if img.ndim == 3 else cv2.BORDER_CONSTANT
    big = cv2.copyMakeBorder(img, pad, pad, pad, pad, mode, value=0)
    y0, x0 = cy - side // 2 + pad, cx - side // 2 + pad
    return big[y0:y0 + side, x0:x0 + side]


def _window(image: np.ndarray, mask: np.ndarray, cy: int, cx: int, side: int,
            window: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop `side` data px and resize to `window` model px (mask: linear + threshold, stays binary)."""
    img, m = _crop(image, cy, cx, side), _crop(mask.astype(np.float32), cy, cx, side)
    if side != window:
        interp = cv2.INTER_AREA if side > window else cv2.INTER_LINEAR
        img = cv2.resize(img, (window, window), interpolation=interp)
        m = cv2.resize(m, (window, window), interpolation=cv2.INTER_LINEAR)
    return img, (m > 0.5).astype(np.float32)


def _augment(img: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """rot90 + flip (same for image and mask) and a mild brightness/contrast change (image only), in [-1, 1]."""
    k = int(rng.integers(4))
    img, m = np.rot90(img, k), np.rot90(m, k)
    if rng.random() < 0.5:
        img, m = img[:, ::-1], m[:, ::-1]
    x = img.astype(np.float32) / 127.5 - 1.0
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.9, 1.1) + mean + rng.uniform(-0.05, 0.05)
    return np.clip(x, -1, 1).transpose(2, 0, 1).copy(), m[None].copy()


def _side(window: int, scale: float, rng: np.random.Generator) -> int:
    return max(4, round(window * scale * rng.uniform(1 - SCALE_JITTER, 1 + SCALE_JITTER)))


def defect_windows(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, window: int,
                   scale: float, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` augmented windows centred near random defect pixels, each holding >= MIN_DEFECT_PX of mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return []
    out = []
    while len(out) < count:
        for tries in range(20):
            side = _side(window, scale, rng)
            i, j = int(rng.integers(ys.size)), side // 4
            jy, jx = (0, 0) if tries == 19 else rng.integers(-j, j + 1, 2)  # last try: no jitter
            img, m = _window(image, mask, int(ys[i] + jy), int(xs[i] + jx), side, window)
            if m.sum() >= MIN_DEFECT_PX or tries == 19:
                break
        out.append(_augment(img, m, rng))
    return out


def good_windows(image: np.ndarray, rng: np.random.Generator, *, window: int, scale: float,
                 count: int) -> list[np.ndarray]:
    """`count` augmented windows whose centre lies on the part."""
    ys, xs = np.nonzero(part_mask(image))
    empty = np.zeros(image.shape[:2], np.uint8)
    out = []
    for _ in range(count):
        i = int(rng.integers(ys.size))
        img, m = _window(image, empty, int(ys[i]), int(xs[i]), _side(window, scale, rng), window)
        out.append(_augment(img, m, rng)[0])
    return out


def load_patch_data(root: str | os.PathLike[str], *, window: int, scale: float = 1.0, held_in: int | None = None,
                    per_defect: int = 64, per_good: int = 8, seed: int = 0) -> PatchData:
    """Windows for `defectgen train patch` (see the module docstring).

    Raises:
        DataError: bad folder, no defect types, or `held_in` outside [1, images of a type].
    """
    cat = open_category(root)
    types = cat.defect_types
    if not types:
        msg = f"no defect types under {cat.root / 'test'}: patch mode trains on defective images"
        raise DataError(msg)
    rng = np.random.default_rng([seed, 0x9A7C])
    defects, masks, ids, names = [], [], [], {}
    for t, name in enumerate(types):
        chosen = held_in_items(cat.defective_items([name]), held_in)
        names[name] = [it.image_path.name for it in chosen]
        for it in chosen:
            image, mask = it.load()
            for img, m in defect_windows(image, mask, rng, window=window, scale=scale, count=per_defect):
                defects.append(img)
                masks.append(m)
                ids.append(t)
    goods = [g for it in cat.train_good()
             for g in good_windows(it.load()[0], rng, window=window, scale=scale, count=per_good)]
    return PatchData(torch.from_numpy(np.stack(defects)), torch.from_numpy(np.stack(masks)),
                     torch.tensor(ids, dtype=torch.int64), torch.from_numpy(np.stack(goods)), types, names)
