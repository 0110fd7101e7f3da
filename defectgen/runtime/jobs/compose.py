"""Crop -> model -> paste: the resolution bridge between full-resolution parts and the model's R x R.

A job's target region is a `Crop` of the full-resolution good image: the whole image for a whole-part model
(`Crop.full`), a square window around the target mask at the bundle's pixel scale for a patch-mode model
(`Crop.around`, docs/design.md "Resolution and patch mode"). Either way the crop is resized to the model, the
generated crop is resized back to the crop's own size, and composited over the *original* image with a
feathered alpha, so every pixel outside the
feathered band is bit-exact the input.

Detail above the model's resolution: a R x R model cannot carry the finer detail of a larger crop, so its
upsampled output is smooth (no surface grain, soft defect edges), a give-away a downstream detector learns.
`detail_layer` is the part of the full-resolution guide (the good crop with the real defect stitched in) that
the model's resolution drops: the guide minus its own round trip through the model's resize. Added to the
upsampled model image, it restores the grain and the defect's fine structure while the model keeps everything
coarser (shape, shading, colour). Where the crop is no larger than the model, the layer is zero. Detail never
pushes a pixel past black or white (`Detail.add_to`): added plainly, the detail of a real defect's dark core drove
G's darker core below 0, and the clipped pixels came out as flat black blocks. Near black and white G's colour and
the sum bend smoothly instead, keeping the pixels' order, so the grain survives on G's darkest cores too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from defectgen.data.imageio import RGB8, PixelFormat, mask_to_model, to_model
from defectgen.data.masks import dilate, drop_specks, feather
from defectgen.data.stitching import fill_from_defect
from defectgen.errors import JobError

WINDOW_FILL = 0.75  # a target's box may fill this share of a patch window; the rest is surface context


@dataclass(frozen=True)
class Crop:
    """An axis-aligned box `[y0, y1) x [x0, x1)` of a full-resolution image."""

    y0: int
    x0: int
    y1: int
    x1: int

    @classmethod
    def full(cls, shape: tuple[int, ...]) -> Crop:
        """The crop covering a whole image of `shape` (H, W, ...)."""
        return cls(0, 0, int(shape[0]), int(shape[1]))

    @classmethod
    def around(cls, mask: np.ndarray, side: int, *, fill: float = WINDOW_FILL) -> tuple[Crop, bool]:
        """A square window of `side` px centred on the target mask's box, moved inside the image.

        A target whose box exceeds `fill` of the window gets a larger window (the model then sees it at a coarser
        scale); a window larger than the image is cut to the image (then it may not be square).

        Returns:
            (the crop, whether it had to be enlarged beyond `side`).
        """
        ys, xs = np.nonzero(mask)
        h, w = mask.shape[:2]
        by0, by1, bx0, bx1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        need = math.ceil(max(by1 - by0, bx1 - bx0) / fill)
        size = max(side, need)
        y0 = min(max((by0 + by1 - size) // 2, 0), max(h - size, 0))
        x0 = min(max((bx0 + bx1 - size) // 2, 0), max(w - size, 0))
        return cls(y0, x0, min(y0 + size, h), min(x0 + size, w)), size > side

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.y1 - self.y0, self.x1 - self.x0

    def of(self, array: np.ndarray) -> np.ndarray:
        """The view of `array` (HxW or HxWxC) inside the crop."""
        return array[self.y0:self.y1, self.x0:self.x1]

    def scale(self, res: int) -> float:
        """Full-resolution pixels per model pixel (the larger side decides)."""
        return max(self.size) / float(res)


def model_inputs(image: np.ndarray, mask: np.ndarray, crop: Crop, res: int) -> tuple[np.ndarray, np.ndarray]:
    """The crop of `image` and `mask` at model resolution: float32 (3,R,R) in [-1,1] and (1,R,R) in {0,1}.

    Raises:
        JobError: the target mask vanishes when shrunk to the model (`model_mask`).
    """
    return to_model(crop.of(image), res), model_mask(mask, crop, res)


def model_mask(mask: np.ndarray, crop: Crop, res: int) -> np.ndarray:
    """The crop of `mask` at model resolution, (1,R,R) in {0,1}, covering every target pixel.

    The model mask must *cover* the target: wherever the model is told "background" it reproduces the good
    image, and the composite would paste that over a defect pixel. A nearest-neighbour shrink samples one pixel
    per model cell (OpenCV: the cell's top-left one) and can drop thin cracks, so the mask is first grown by
    `ceil(sqrt 2 * scale)` pixels: every target pixel is then within reach of its cell's sample point (at most
    `scale` apart along each axis). The cost is up to about one model pixel of extra margin.

    Raises:
        JobError: the target mask vanishes when shrunk to the model (cannot happen for a non-empty mask).
    """
    scale = crop.scale(res)
    grow = math.ceil(math.sqrt(2.0) * scale) if scale > 1.0 else 0
    mask_m = mask_to_model(dilate(crop.of(mask), grow), res)
    if not mask_m.any():
        msg = f"target mask ({int(crop.of(mask).sum())} px) is empty at the model's {res}x{res} resolution"
        raise JobError(msg)
    return mask_m


def upsample(chw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Model output, float (C,R,R) -> float32 HxWxC at `size` (H, W), bicubic when enlarging, area when shrinking."""
    hwc = np.ascontiguousarray(np.asarray(chw, np.float32).transpose(1, 2, 0))
    h, w = size
    if hwc.shape[:2] == (h, w):
        return hwc
    interp = cv2.INTER_CUBIC if h >= hwc.shape[0] and w >= hwc.shape[1] else cv2.INTER_AREA
    out = cv2.resize(hwc, (w, h), interpolation=interp)
    return out[:, :, None] if out.ndim == 2 else out


def upsample_mask(mask_logit: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """G's mask (logits, (1,R,R) or (R,R)) at `size` (H, W): bool, logit > 0 after a bicubic resize, kept within
    one model pixel of a pixel G drew (logit > 0 at its own resolution).

    Bicubic like the image, so a stroke's label is as wide as the stroke it labels: a bilinear resize thins thin
    strokes (G's print labels at 0.87 of its drawn area times the scale squared; this resize 1.03). The
    restriction drops what the cubic kernel adds on its own: beside a steep logit edge (the part's rim, where G's
    logit falls from about -0.1 over the background to -30 on the surface) its overshoot crosses 0 and drew thin
    stray label pieces, far from anything G drew (benchmarks/findings.md).
    """
    logit = np.ascontiguousarray(np.asarray(mask_logit, np.float32).reshape(mask_logit.shape[-2:]))
    h, w = size
    if logit.shape == (h, w):
        return logit > 0
    if h < logit.shape[0] or w < logit.shape[1]:
        return cv2.resize(logit, (w, h), interpolation=cv2.INTER_AREA) > 0
    near = cv2.dilate((logit > 0).astype(np.uint8), np.ones((3, 3), np.uint8))
    near = cv2.resize(near, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return (cv2.resize(logit, (w, h), interpolation=cv2.INTER_CUBIC) > 0) & near


DETAIL_KNEE = 16.0  # grey levels: the least room the bend toward black / white leaves


def soft_range(y: np.ndarray, k_lo: np.ndarray | float, k_hi: np.ndarray | float, peak: float) -> np.ndarray:
    """`y` bent smoothly into (0, peak): below a knee `k_lo` it becomes `k_lo · exp((y − k_lo) / k_lo)` (slope 1
    at the knee, toward 0 far below), mirrored toward `peak` with `k_hi`; the order of the values is kept.
    """
    k_lo = np.clip(k_lo, 1e-3, None)
    y = np.where(y < k_lo, k_lo * np.exp(np.minimum(y - k_lo, 0.0) / k_lo), y)
    k_hi = np.clip(k_hi, 1e-3, None)
    top = peak - y
    return np.where(top < k_hi, peak - k_hi * np.exp(np.minimum(top - k_hi, 0.0) / k_hi), y)


@dataclass(frozen=True)
class Detail:
    """The guide's detail above the model's resolution (`detail_layer`), float32 HxWx3 in pixel units."""

    delta: np.ndarray  # guide - low
    low: np.ndarray  # the guide through the model's resolution and back, 0..255

    def add_to(self, gen: np.ndarray, peak: float = 255.0) -> np.ndarray:
        """`gen + delta`, bent smoothly near black and white (`soft_range`), so it never leaves [0, peak] and the
        detail's grain survives on G's darkest colours.

        Two bends, each keeping the pixels' order:
        - G's coarse colour first, below `min(DETAIL_KNEE, low)`: a core G draws at pure black where the guide
          is grey is lifted a few levels, enough room for the grain. Bent with the sum alone, grain of ±2 levels
          over G at 2 shrank below one level and the core rounded to flat 2x2 blocks.
        - Then the sum, below `min(max(DETAIL_KNEE, gen), guide)`: a darkening detail `delta < 0` comes out as
          `gen · exp(delta / gen)`, nearly `gen + delta` where `|delta| ≪ gen`, in proportion to G's level where
          the detail is as deep as G is dark (a real thin crack's −60 over G's crack at 38 is a stroke at 6-11
          with its grain, not a row of 1s); mirrored toward white.
        A G equal to `low` gets the guide back exactly (neither bend reaches it).
        """
        guide = self.low + self.delta
        gen = soft_range(gen, np.minimum(DETAIL_KNEE, self.low), np.minimum(DETAIL_KNEE, peak - self.low), peak)
        k_lo = np.minimum(np.maximum(DETAIL_KNEE, gen), guide)
        k_hi = np.minimum(np.maximum(DETAIL_KNEE, peak - gen), peak - guide)
        return soft_range(gen + self.delta, k_lo, k_hi, peak).astype(np.float32)


def detail_layer(guide: np.ndarray, guide_m: np.ndarray) -> Detail:
    """`guide − up(guide_m)`: what the model's resolution cannot hold, in pixel units (0..255).

    `guide` is a uint8 HxWx3 crop and `guide_m = to_model(guide, R)` its model-resolution copy (the job's `S`,
    already made for the inversion); `up` is the resize the model's output takes (`upsample`), so a model that
    reproduced `guide_m` exactly would, plus this layer, give the guide back.
    """
    low = np.clip((upsample(guide_m, guide.shape[:2]) + 1.0) * 127.5, 0.0, 255.0)
    return Detail(guide.astype(np.float32) - low, low)


DETAIL_SOURCES = ("reference", "surface")  # `--detail-from`: the guide with the real defect, or the good crop alone

MIN_PIECE_MODEL_PX = 2  # generated labels drop pieces smaller than this (model pixels)
# From this many data px per model px on, a patch G's defect is pasted along its full-resolution label
# (`defect_colour`): enlarged further, the hard composite's edge shows the model's pixel grid as a staircase;
# at the training scale (1.5) its soft, upsampled edge trained the better detector (1.1 AP over 3 seeds).
LAYER_PASTE_MIN_SCALE = 3.0


def feather_px(crop: Crop, res: int, model_px: float) -> int:
    """A feather width given in model pixels, in full-resolution pixels of `crop` (at least 1)."""
    return max(1, round(model_px * crop.scale(res)))


def model_pixels(generated: np.ndarray, crop: Crop, detail: Detail | None = None) -> np.ndarray:
    """The model's image of the crop at the crop's full resolution: float32 HxWx3 RGB in pixel units (0..255).

    `generated` is the float (3,R,R) model image in [-1,1]; `detail`, an optional `detail_layer` of the crop,
    is added to it (`Detail.add_to`).
    """
    gen = (upsample(generated, crop.size) + 1.0) * 127.5  # [-1,1] -> [0,255], float RGB
    return gen if detail is None else detail.add_to(gen)


def composite(good: np.ndarray, pixels: np.ndarray, alpha: np.ndarray, crop: Crop,
              fmt: PixelFormat = RGB8) -> np.ndarray:
    """`alpha ⊙ P + (1 − alpha) ⊙ I` inside the crop; every pixel with alpha 0 is copied from `good` unchanged.

    The blend happens in float at the input's own format (`fmt`): a gray input gets the luma of P, a 16-bit one
    P scaled to 16 bits, an alpha channel is left as it was; so outside the feathered band the output equals the
    input bit for bit, at any depth.

    Args:
        good: the full-resolution good image `I` as read (`read_native`): uint8/uint16, HxW, HxWx3 or HxWx4.
        pixels: the model's image of the crop at full resolution `P` (`model_pixels`), float RGB 0..255.
        alpha: float32 HxW feathered target mask at full resolution (`feather(mask, px)`).
        crop: where the model image goes.
        fmt: the format of `good` (default: 8-bit RGB).

    Returns:
        A new array of `good`'s dtype and layout.
    """
    out = good.copy()
    a = crop.of(alpha)
    band = a > 0
    if not band.any():
        return out
    region = crop.of(out)
    pixels_in = region[band]  # (n,) gray or (n, C)
    cc = fmt.colour_channels
    src = pixels_in.reshape(len(pixels_in), -1)[:, :cc].astype(np.float32)
    wa = a[band][:, None]
    blended = np.clip(np.rint(wa * fmt.from_rgb(pixels[band]) + (1.0 - wa) * src), 0, fmt.peak).astype(good.dtype)
    if pixels_in.ndim == 1:
        region[band] = blended[:, 0]
    else:
        pixels_in[:, :cc] = blended  # the alpha channel (RGBA) keeps the input's values
        region[band] = pixels_in
    return out


def alpha_for(mask: np.ndarray, crop: Crop, res: int, model_px: float) -> np.ndarray:
    """Feathered compositing alpha at full resolution for a target mask (zero outside the crop)."""
    alpha = np.zeros(mask.shape, np.float32)
    region = crop.of(alpha)
    region[...] = feather(crop.of(mask), feather_px(crop, res, model_px))
    return alpha


def generated_mask(mask_logit: np.ndarray, target: np.ndarray, crop: Crop, res: int, model_px: float) -> np.ndarray:
    """`--mask-mode generated`: σ(G_mask) > 0.5 at full resolution, kept only within the dilated target mask,
    without specks smaller than `MIN_PIECE_MODEL_PX` model pixels (stray single pixels of G's mask head: with the
    composite following the label, their pixels then stay as they were).

    Raises:
        JobError: nothing of the generated mask lies within the dilated target (the model drew no defect).
    """
    drawn = upsample_mask(np.asarray(mask_logit).reshape(1, res, res), crop.size)
    out = np.zeros(target.shape, np.uint8)
    region = crop.of(out)
    region[...] = drawn.astype(np.uint8) & dilate(crop.of(target), feather_px(crop, res, model_px))
    if not out.any():
        msg = ("generated mask is empty within the target region: G's mask left it during the steps "
               "(try --mask-mode target or other --steps)")
        raise JobError(msg)
    region[...] = drop_specks(region, MIN_PIECE_MODEL_PX * crop.scale(res) ** 2)
    return out


def on_part(label: np.ndarray, part: np.ndarray) -> np.ndarray:
    """A label the run drew (random target or G's proposal), cut to the part: a defect on the background is
    no defect of the part, and a label there teaches a detector to flag the background.

    Raises:
        JobError: nothing of the label lies on the part.
    """
    out = label & part
    if not out.any():
        msg = "the label lies wholly off the part (on the background): nothing of it is kept"
        raise JobError(msg)
    return out


def visible_label(label: np.ndarray, pixels: np.ndarray, image: np.ndarray, crop: Crop, min_change: float,
                  min_piece_px: float) -> np.ndarray:
    """G's label kept only where its pixels visibly change the image: some channel by >= `min_change` levels.

    A pixel that G's mask calls defect but whose colour is within a few grey levels of the surface is no
    visible defect: labelled, it teaches a detector to call plain surface defective. Dropped from the label,
    the composite (whose alpha follows the label) leaves it as it was. Pieces smaller than `min_piece_px`
    full-resolution pixels that the cut leaves behind go too.

    Args:
        label: uint8 HxW generated label (`generated_mask`), zero outside the crop.
        pixels: the model's image of the crop at full resolution (`model_pixels`), float RGB 0..255.
        image: the full-resolution good image, uint8 HxWx3 RGB.

    Raises:
        JobError: no pixel of the label changes by `min_change` (G drew no visible defect).
    """
    out = label.copy()
    region = crop.of(out)
    change = np.abs(pixels - crop.of(image).astype(np.float32)).max(axis=2)
    region &= (change >= min_change).astype(np.uint8)
    region[...] = drop_specks(region, min_piece_px)
    if not out.any():
        msg = (f"generated defect is invisible: no pixel of G's mask changes the image by {min_change:g} grey "
               "levels (try another --seed, or --min-change 0)")
        raise JobError(msg)
    return out


def hard_composite(image_m: np.ndarray, mask_logit: np.ndarray, good_m: np.ndarray, *,
                   layered: bool = True) -> np.ndarray:
    """A patch G's composite as its D judged it in training: G's colour where its mask is on (σ > 0.5), the
    good window elsewhere. Shapes broadcast: one window (3,R,R) or a batch (B,3,R,R).

    A layered G's synthesis graph returns the smooth composite `a·colour + (1 − a)·good` (the inversion needs the
    gradient of `a`); where `a > 0.5` the colour is `(image − (1 − a)·good) / a`, an exact inverse with a divisor
    >= 0.5. A full G (`layered=False`) returns its own window, whose pixels are the colour.
    """
    logit = np.asarray(mask_logit, np.float32)
    if not layered:
        return np.where(logit > 0, np.asarray(image_m, np.float32), good_m).astype(np.float32)
    with np.errstate(over="ignore"):  # exp(-logit) overflows to inf far outside the mask: a = 0 there, as it should
        a = 1.0 / (1.0 + np.exp(-logit))
    colour = (np.asarray(image_m, np.float32) - (1.0 - a) * good_m) / np.maximum(a, 0.5)
    return np.where(logit > 0, colour, good_m).astype(np.float32)


def defect_colour(image_m: np.ndarray, mask_logit: np.ndarray, good_m: np.ndarray, *,
                  layered: bool = True) -> np.ndarray:
    """A patch G's defect colour (its `hard_composite` where its mask is on), continued past the mask by the
    nearest on-pixel: float (3,R,R).

    The colour is then upsampled on its own and taken inside the full-resolution label, whose edge follows G's
    smoothly resized mask. Upsampled together with the good window, the hard composite's edge was the model's
    pixel grid: at 6x (a 512 px part) its staircase of 6 px steps showed around every defect, and the label's
    edge pixels got G's colour blended with the blurred good window.
    """
    hard = hard_composite(image_m, mask_logit, good_m, layered=layered)
    on = (np.asarray(mask_logit).reshape(hard.shape[-2:]) > 0).astype(np.uint8)
    if not on.any():
        return hard
    every = np.ones_like(on)
    return np.ascontiguousarray(fill_from_defect(hard.transpose(1, 2, 0), on, every).transpose(2, 0, 1))
