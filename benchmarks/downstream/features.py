"""Figures beyond AP, in one fixed feature space: the trunk of a segmenter trained on the real held-in defects.

No pretrained perceptual network (LPIPS, VGG) exists in this project, so the space is the down path of the
protocol's own U-Net trained once per run (segmenter seed 0) on good images + the held-in real defects: its
features are the ones that tell a defect from intact surface on this data.

- **crop**: a `CROP` px window of the image at the segmenter's resolution, centred on the defect mask's
  bounding box (clipped inside the image), holding the defect's pixels relative to the surface just around it
  (`defect_crop`) on flat grey. A fixed window, not a resize, so a defect is seen at the scale the trunk was
  trained on; the surface is left out so that the figures compare defects, not the parts they sit on.
- **distance** between two crops: the trunk's activations at each level, unit-normalised over channels at each
  pixel, then `(1/L) Σ_l mean_pixels ||f_l(a) − f_l(b)||²` (LPIPS with uniform weights; 0 for identical crops,
  at most 4). `embed` turns a crop into a vector whose squared Euclidean distances are exactly this.
- **diversity**: mean distance over all pairs of crops within a type (first `PER_TYPE` of each), averaged over
  types.
- **memorisation**: mean over crops of the distance to the nearest held-in real crop (any type, any of its 8
  mirror/transpose variants, since copy-paste and the stitch mirror and transpose): 0 = a copy of a held-in
  defect.
- **alignment**: mean over samples of the IoU between the sample's label and the real-trained segmenter's
  prediction on the sample, thresholded at the F1-max threshold of that segmenter on its own training data
  (the held-in defects + the good images `threshold_set` takes): does the label cover what looks like a defect?
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from .metrics import f1_threshold, mean_iou, mean_pairwise_distance, nearest_distance
from .segmenter import UNet, _to_tensor, predict

CROP = 40  # px at the segmenter's resolution (the procedural defects at 128 px: median 11-27 px, max 48)
PER_TYPE = 64  # crops per type for diversity and memorisation
RING = 2  # px of surface around a defect that set its reference colour


def defect_crop(image: np.ndarray, mask: np.ndarray, side: int = CROP) -> np.ndarray:
    """The defect alone, relative to its surface, in a `side` px window centred on the mask's bounding box.

    The window is shifted to stay inside the image (the whole image where that is smaller, so all crops of one
    resolution stack). Inside the mask: pixel − the median colour of a `RING` px ring around the mask + 128;
    outside: 128. Without this, the surface around a defect dominates the distance (a pasted copy on another
    part is as far from its source as a new real defect), and the RGB offset of copy-paste's colour match
    would make a copy look new.
    """
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    side = min(side, h, w)
    cy, cx = (ys.min() + ys.max() + 1) // 2, (xs.min() + xs.max() + 1) // 2
    y0 = int(np.clip(cy - side // 2, 0, max(0, h - side)))
    x0 = int(np.clip(cx - side // 2, 0, max(0, w - side)))
    crop = image[y0:y0 + side, x0:x0 + side].astype(np.float32)
    m = (mask[y0:y0 + side, x0:x0 + side] > 0).astype(np.uint8)
    ring = (cv2.dilate(m, np.ones((3, 3), np.uint8), iterations=RING) > 0) & (m == 0)
    surface = np.median(crop[ring], 0) if ring.any() else crop.mean((0, 1))
    out = np.where(m[..., None] > 0, crop - surface + 128.0, 128.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def dihedral(crop: np.ndarray) -> list[np.ndarray]:
    """The 8 mirror / 90-degree-turn variants of a square crop."""
    turns = [np.rot90(crop, k) for k in range(4)]
    return [np.ascontiguousarray(c) for t in turns for c in (t, t[:, ::-1])]


@torch.no_grad()
def embed(net: UNet, crops: np.ndarray) -> np.ndarray:
    """(N, D) vectors whose squared distances are the trunk distance of the module docstring."""
    if len(crops) == 0:
        return np.zeros((0, 0))
    net.eval()
    x, parts = _to_tensor(np.asarray(crops)), []
    for i, block in enumerate(net.down):
        x = block(x if i == 0 else torch.nn.functional.max_pool2d(x, 2))
        unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-10)
        parts.append(unit.flatten(1) / np.sqrt(x.shape[2] * x.shape[3] * len(net.down)))
    return torch.cat(parts, 1).double().numpy()


def crops_by_type(images: np.ndarray, masks: np.ndarray, types: Sequence[str],
                  per_type: int = PER_TYPE) -> dict[str, np.ndarray]:
    """Defect crops of the first `per_type` non-empty samples of each type."""
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for img, m, t in zip(images, masks, types, strict=True):
        if m.any() and len(out[t]) < per_type:
            out[t].append(defect_crop(img, m))
    return {t: np.stack(v) for t, v in sorted(out.items())}


def diversity(net: UNet, crops: dict[str, np.ndarray]) -> tuple[float, dict[str, float]]:
    """Mean pairwise trunk distance within each type; (mean over types, per type)."""
    per = {t: mean_pairwise_distance(embed(net, c)) for t, c in crops.items()}
    vals = [v for v in per.values() if np.isfinite(v)]
    return (float(np.mean(vals)) if vals else float("nan")), per


def bank_embedding(net: UNet, bank: dict[str, np.ndarray]) -> np.ndarray:
    """Embeddings of the held-in real crops in all 8 mirror / transpose variants."""
    return embed(net, np.stack([v for c in np.concatenate(list(bank.values())) for v in dihedral(c)]))


def memorisation(net: UNet, crops: dict[str, np.ndarray], bank: np.ndarray) -> float:
    """Mean distance of each crop to its nearest held-in real crop (`bank_embedding`)."""
    if not crops:
        return float("nan")
    return float(nearest_distance(embed(net, np.concatenate(list(crops.values()))), bank).mean())


def threshold_set(held_in: tuple[np.ndarray, np.ndarray], good: np.ndarray, n_good: int = 20) -> tuple[
        np.ndarray, np.ndarray]:
    """The images the alignment threshold is chosen on: held-in defects + the first `n_good` good images."""
    g = good[:n_good]
    return np.concatenate([held_in[0], g]), np.concatenate([held_in[1], np.zeros(g.shape[:3], np.uint8)])


def alignment_threshold(net: UNet, images: np.ndarray, masks: np.ndarray) -> float:
    return f1_threshold(predict(net, images), masks)


def alignment(net: UNet, images: np.ndarray, masks: np.ndarray, threshold: float) -> float:
    """Mean IoU of each sample's label with the real-trained segmenter's thresholded prediction."""
    keep = masks.reshape(len(masks), -1).any(1)
    if not keep.any():
        return float("nan")
    return mean_iou(predict(net, images[keep]) >= threshold, masks[keep])
