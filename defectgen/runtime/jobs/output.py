"""A job's result at full resolution: the generated crop composited over the good image, and its output mask.

Pure (no files): `defectgen run` writes what this returns through its `RunFolder`, `defectgen bench` times it.
"""

from __future__ import annotations

import numpy as np

from defectgen.errors import JobError
from defectgen.runtime.jobs.compose import alpha_for, composite, detail_layer, generated_mask
from defectgen.runtime.jobs.prepare import Prepared
from defectgen.runtime.jobs.settings import RunSettings


def hard_composite(image_m: np.ndarray, mask_logit: np.ndarray, good_m: np.ndarray) -> np.ndarray:
    """A layered G's composite as its D judged it in training: G's colour where its mask is on (σ > 0.5), the
    good window elsewhere.

    The synthesis graph returns the smooth composite `a·colour + (1 − a)·good` (the inversion needs the gradient
    of `a`); where `a > 0.5` the colour is `(image − (1 − a)·good) / a`, an exact inverse with a divisor >= 0.5.
    """
    logit = np.asarray(mask_logit, np.float32)
    with np.errstate(over="ignore"):  # exp(-logit) overflows to inf far outside the mask: a = 0 there, as it should
        a = 1.0 / (1.0 + np.exp(-logit))
    colour = (np.asarray(image_m, np.float32) - (1.0 - a) * good_m) / np.maximum(a, 0.5)
    return np.where(logit > 0, colour, good_m).astype(np.float32)


def compose_output(p: Prepared, image_m: np.ndarray, mask_logit: np.ndarray, settings: RunSettings,
                   res: int, *, layered: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Composite the generated crop over the full-resolution good image; pick the output mask.

    With `mask_mode` "generated" the label is G's own mask (within the dilated target) and the composite's
    alpha follows that label; for a `layered` G (a patch bundle) the pixels are then its hard composite
    (`hard_composite`), so pixels change exactly where the label says.

    Args:
        p: the prepared job.
        image_m: float (3,R,R) generated image in [-1,1].
        mask_logit: float (1,R,R) generated mask logit.
        settings: run settings (`guide_weight`, `detail`, `mask_mode`, `feather_px`).
        res: model resolution.
        layered: the bundle's G draws a defect layer over the good window (patch mode).

    Returns:
        (the image in the input's own channels and bit depth, uint8 HxW {0,1} mask), at the input's resolution.

    Raises:
        JobError: non-finite generated pixels, or an empty generated mask in "generated" mode.
    """
    if not (np.isfinite(image_m).all() and np.isfinite(mask_logit).all()):
        msg = "generated image is not finite (NaN/inf)"
        raise JobError(msg)
    if settings.mask_mode == "generated":
        label = generated_mask(mask_logit, p.mask, p.crop, res, settings.feather_px)
        if layered:
            image_m = hard_composite(image_m, mask_logit, p.good)
    else:
        label = p.mask
    alpha = alpha_for(label, p.crop, res, settings.feather_px)
    if settings.guide_weight > 0:
        image_m = (1.0 - settings.guide_weight) * np.asarray(image_m, np.float32) + settings.guide_weight * p.stitched
    detail = detail_layer(p.guide, p.stitched) if settings.detail else None
    native = p.image if p.native is None else p.native
    return composite(native, image_m, alpha, p.crop, detail, p.fmt), label
