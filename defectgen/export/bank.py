"""Real data for a bundle: the defect bank (crops for stitching), real inputs for the parity check, and the
training parts' size a patch bundle records (`with_part_size`).

The bank holds, per defect type, up to `per_type` real defects from the dataset's defective test images,
each cropped around its mask's bounding box with a margin (so the stitcher's colour match sees surface around
the defect) and shrunk when its longer side exceeds `max_side`. Picks are spread evenly over the sorted item
list, so the same dataset always gives the same bank.

Patch-mode bundles (`held_in` given, `max_side` None): the crops come only from the run's held-in images and
keep the data's native pixel scale (never shrunk, never resized to the window), and the parity check's real
inputs are windows of `window * scale` data px around real defects (`real_windows`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from defectgen import GOOD
from defectgen.data.imageio import mask_to_model, to_model, write_image, write_mask
from defectgen.data.masks import bbox
from defectgen.data.mvtec import Item, MVTecCategory, list_images
from defectgen.data.part_size import PART_SIZE_RULE, median_part_size
from defectgen.data.stitching import stitch
from defectgen.errors import DataError
from defectgen.runtime.bundle.sections import PatchInfo

log = logging.getLogger("defectgen.export")

BANK_DIR = "defect_bank"


def _spread(items: list[Item], n: int) -> list[Item]:
    """Up to n items spread evenly over the list (deterministic)."""
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


def crop_defect(image: np.ndarray, mask: np.ndarray, *, margin: float = 0.25, min_margin: int = 4,
                max_side: int | None = 256) -> tuple[np.ndarray, np.ndarray]:
    """Crop an image and its {0,1} mask around the mask's bounding box.

    Args:
        image: uint8 HxWx3.
        mask: {0,1} HxW, non-empty.
        margin: margin on each side as a fraction of the box's longer side.
        min_margin: margin floor in pixels.
        max_side: crops with a longer side are shrunk to it (INTER_AREA; mask nearest); None: native size.

    Returns:
        (uint8 crop, {0,1} uint8 mask crop).
    """
    x0, y0, x1, y1 = bbox(mask)
    pad = max(min_margin, int(round(margin * max(x1 - x0, y1 - y0))))
    h, w = mask.shape
    x0, y0, x1, y1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
    img, msk = image[y0:y1, x0:x1], (mask[y0:y1, x0:x1] > 0).astype(np.uint8)
    scale = 1.0 if max_side is None else max_side / max(img.shape[:2])
    if scale < 1:
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        shrunk = cv2.resize(msk, size, interpolation=cv2.INTER_NEAREST)
        msk = shrunk if shrunk.any() else (cv2.resize(msk.astype(np.float32), size) > 0).astype(np.uint8)
    return np.ascontiguousarray(img), msk


def build_defect_bank(data_root: str | os.PathLike[str], types: list[str], out_dir: str | os.PathLike[str], *,
                      per_type: int = 6, max_side: int | None = 256,
                      held_in: dict[str, list[str]] | None = None) -> dict[str, list[dict[str, str]]]:
    """Write `defect_bank/<type>_<NNN>.png` + `_mask.png` crops into a bundle folder.

    Args:
        data_root: MVTec-layout category folder.
        types: the bundle's defect types (id order; "good" is skipped).
        out_dir: the bundle folder (the bank goes to `out_dir/defect_bank/`).
        per_type: crops per type at most.
        max_side: longest crop side in pixels (None: native size).
        held_in: type -> the image file names that may be used (a patch run's held-in list); None: all.

    Returns:
        The manifest's `defect_bank` mapping: type -> [{"image": rel path, "mask": rel path, "source": the
        image it was cut from, relative to `data_root`}, ...]; types the dataset has no defective images of
        are left out.

    Raises:
        DataError: unreadable dataset or files.
    """
    cat = MVTecCategory(data_root)
    folder = Path(out_dir) / BANK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    bank: dict[str, list[dict[str, str]]] = {}
    present = set(cat.defect_types)
    for t in types:
        if t == GOOD or t not in present:
            continue
        entries = []
        for i, item in enumerate(_spread(_allowed(cat, t, held_in), per_type)):
            image, mask = item.load()
            if not mask.any():
                continue
            img, msk = crop_defect(image, mask, max_side=max_side)
            stem = f"{BANK_DIR}/{t}_{i:03d}"
            write_image(Path(out_dir) / f"{stem}.png", img)
            write_mask(Path(out_dir) / f"{stem}_mask.png", msk)
            entries.append({"image": f"{stem}.png", "mask": f"{stem}_mask.png", "source": _source(cat, item)})
        if entries:
            bank[t] = entries
    return bank


def _source(cat: MVTecCategory, item: Item) -> str:
    """The crop's source image, relative to the dataset (provenance: which defect a bank crop shows)."""
    try:
        return item.image_path.relative_to(cat.root).as_posix()
    except ValueError:
        return item.image_path.name


def _allowed(cat: MVTecCategory, t: str, held_in: dict[str, list[str]] | None) -> list[Item]:
    """The defective items of type `t`, restricted to the held-in file names when given."""
    items = cat.defective_items([t])
    if held_in is None:
        return items
    names = set(held_in.get(t, []))
    chosen = [it for it in items if it.image_path.name in names]
    missing = sorted(names - {it.image_path.name for it in chosen})
    if missing:
        msg = (f"{cat.root}: held-in {t} images {', '.join(missing[:5])} are not in test/{t}/ "
               f"(is this the data the patch run trained on?)")
        raise DataError(msg)
    return chosen


@dataclass
class RealInputs:
    """Real model inputs for the parity check, all float32 at model resolution.

    `defective`/`mask` are real defective images and their masks; `good` are real good images; `stitched`
    is `good` with another real defect of the same type stitched into `mask` (as the runtime builds S).
    """

    good: np.ndarray  # (N, 3, R, R) in [-1, 1]
    mask: np.ndarray  # (N, 1, R, R) in {0, 1}
    stitched: np.ndarray  # (N, 3, R, R)
    defective: np.ndarray  # (N, 3, R, R)
    type_onehot: np.ndarray  # (N, T)

    def take(self, batch: int) -> RealInputs:
        """The first `batch` samples, cycling when there are fewer."""
        idx = np.arange(batch) % len(self.good)
        return RealInputs(self.good[idx], self.mask[idx], self.stitched[idx], self.defective[idx],
                          self.type_onehot[idx])


def real_inputs(data_root: str | os.PathLike[str], types: list[str], res: int, *, n: int = 8,
                seed: int = 0, feather_px: int = 3, window_scale: float | None = None,
                held_in: dict[str, list[str]] | None = None) -> RealInputs:
    """Load `n` real jobs from a dataset: good image, real target mask, stitched reference, real defect.

    Args:
        data_root: MVTec-layout category folder.
        types: the model's type list (id order, "good" first).
        res: model resolution (the window P in patch mode).
        n: samples (types taken round-robin).
        seed: picks and stitch flips.
        feather_px: feather of the stitch, in model pixels.
        window_scale: patch mode: cut windows of `res * window_scale` data px (centred on the defect's box;
            the good window at the same place) instead of resizing whole images.
        held_in: type -> allowed defective file names (a patch run's held-in list); None: all.

    Returns:
        The inputs.

    Raises:
        DataError: the dataset has no defective images of any of `types`.
    """
    cat = MVTecCategory(data_root)
    rng = np.random.default_rng(seed)
    by_type = {t: _allowed(cat, t, held_in) for t in types[1:] if t in set(cat.defect_types)}
    by_type = {t: v for t, v in by_type.items() if v}
    if not by_type:
        msg = f"{data_root} has no defective images of types {types[1:]}"
        raise DataError(msg)
    goods = cat.train_good()
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("good", "mask", "stitched", "defective", "onehot")}
    names = sorted(by_type)
    for i in range(n):
        t = names[i % len(names)]
        items = by_type[t]
        target, ref = items[rng.integers(len(items))], items[rng.integers(len(items))]
        good_full = goods[rng.integers(len(goods))].load()[0]
        if window_scale is None:
            good_img = _resized(good_full, res)
            d_img, d_mask = (_resized(a, res, nearest=k == 1) for k, a in enumerate(target.load()))
            r_img, r_mask = (_resized(a, res, nearest=k == 1) for k, a in enumerate(ref.load()))
        else:
            side = max(4, round(res * window_scale))
            t_img, t_mask = target.load()
            (d_img, d_mask), (cy, cx) = _window_at_defect(t_img, t_mask, side, res)
            # the good window at the same relative place (a good image may have another size)
            gy, gx = cy * good_full.shape[0] // t_img.shape[0], cx * good_full.shape[1] // t_img.shape[1]
            good_img = _window(good_full, gy, gx, side, res)
            (r_img, r_mask), _ = _window_at_defect(*ref.load(), side, res)
        if not d_mask.any() or not r_mask.any():
            continue
        s_img = stitch(good_img, r_img, r_mask, d_mask, feather_px, rng)
        rows["good"].append(to_model(good_img, res))
        rows["mask"].append(mask_to_model(d_mask, res))
        rows["stitched"].append(to_model(s_img, res))
        rows["defective"].append(to_model(d_img, res))
        rows["onehot"].append(np.eye(len(types), dtype=np.float32)[types.index(t)])
    if not rows["good"]:
        msg = f"no usable defect masks at {res} px in {data_root}"
        raise DataError(msg)
    return RealInputs(*(np.stack(rows[k]).astype(np.float32)
                        for k in ("good", "mask", "stitched", "defective", "onehot")))


def _resized(a: np.ndarray, res: int, nearest: bool = False) -> np.ndarray:
    if a.shape[:2] == (res, res):
        return a
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(a, (res, res), interpolation=interp)


def _window(a: np.ndarray, cy: int, cx: int, side: int, res: int) -> np.ndarray:
    """`side` x `side` data px centred at (cy, cx), brought to `res` px; outside the image: reflection (images)
    or zeros (masks).
    """
    border = cv2.BORDER_REFLECT_101 if a.ndim == 3 else cv2.BORDER_CONSTANT
    big = cv2.copyMakeBorder(a, side, side, side, side, border, value=0)
    y0, x0 = cy - side // 2 + side, cx - side // 2 + side
    return _resized(np.ascontiguousarray(big[y0:y0 + side, x0:x0 + side]), res, nearest=a.ndim == 2)


def _window_at_defect(image: np.ndarray, mask: np.ndarray, side: int,
                      res: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[int, int]]:
    """The window around the centre of a defect's bounding box: ((image, mask) at `res` px, centre)."""
    x0, y0, x1, y1 = bbox(mask) if mask.any() else (0, 0, mask.shape[1], mask.shape[0])
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    return (_window(image, cy, cx, side, res), _window(mask, cy, cx, side, res)), (cy, cx)


def with_part_size(patch: PatchInfo, data_root: str | os.PathLike[str] | None) -> PatchInfo:
    """The patch section with the training parts' median size (`data.part_size`, on `data_root/train/good`):
    what `run --scale auto` compares each image's part with. Without such images the section stays as it is
    (a warning), and `run` then keeps the bundle's scale.
    """
    if data_root is None:
        log.warning("no dataset: the bundle records no training part size (run --scale auto keeps its scale)")
        return patch
    try:
        size = median_part_size(list_images(Path(data_root) / "train" / GOOD))
    except DataError as e:
        log.warning("the bundle records no training part size (run --scale auto keeps its scale): %s", e)
        return patch
    log.info("training parts: median size %.1f px (%s)", size, PART_SIZE_RULE)
    return dataclasses.replace(patch, part_size_px=round(size, 2), part_size_rule=PART_SIZE_RULE)
