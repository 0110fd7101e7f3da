"""A job's result at full resolution: the generated crop composited over the good image, and its output mask.

Pure (no files): `defectgen run` writes what this returns through its `RunFolder`, `defectgen bench` times it.
"""

from __future__ import annotations

import numpy as np

from defectgen.errors import JobError
from defectgen.runtime.jobs.compose import alpha_for, composite, detail_layer, generated_mask
from defectgen.runtime.jobs.prepare import Prepared
from defectgen.runtime.jobs.settings import RunSettings


def compose_output(p: Prepared, image_m: np.ndarray, mask_logit: np.ndarray, settings: RunSettings,
                   res: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite the generated crop over the full-resolution good image; pick the output mask.

    Args:
        p: the prepared job.
        image_m: float (3,R,R) generated image in [-1,1].
        mask_logit: float (1,R,R) generated mask logit.
        settings: run settings (`guide_weight`, `detail`, `mask_mode`, `feather_px`).
        res: model resolution.

    Returns:
        (the image in the input's own channels and bit depth, uint8 HxW {0,1} mask), at the input's resolution.

    Raises:
        JobError: non-finite generated pixels, or an empty generated mask in "generated" mode.
    """
    if not (np.isfinite(image_m).all() and np.isfinite(mask_logit).all()):
        msg = "generated image is not finite (NaN/inf)"
        raise JobError(msg)
    alpha = alpha_for(p.mask, p.crop, res, settings.feather_px)
    if settings.guide_weight > 0:
        image_m = (1.0 - settings.guide_weight) * np.asarray(image_m, np.float32) + settings.guide_weight * p.stitched
    detail = detail_layer(p.guide, p.stitched) if settings.detail else None
    native = p.image if p.native is None else p.native
    final = composite(native, image_m, alpha, p.crop, detail, p.fmt)
    if settings.mask_mode == "target":
        return final, p.mask
    return final, generated_mask(mask_logit, p.mask, p.crop, res, settings.feather_px)
