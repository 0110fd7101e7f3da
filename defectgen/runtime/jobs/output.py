"""A job's result at full resolution: the generated crop composited over the good image, and its output mask.

Pure (no files): `defectgen run` writes what this returns through its `RunFolder`, `defectgen bench` times it.
"""

from __future__ import annotations

import numpy as np

from defectgen.errors import JobError
from defectgen.runtime.jobs.compose import (
    LAYER_PASTE_MIN_SCALE,
    MIN_PIECE_MODEL_PX,
    alpha_for,
    composite,
    defect_colour,
    detail_layer,
    generated_mask,
    hard_composite,
    model_pixels,
    on_part,
    visible_label,
)
from defectgen.runtime.jobs.prepare import Prepared
from defectgen.runtime.jobs.settings import RunSettings


def compose_output(p: Prepared, image_m: np.ndarray, mask_logit: np.ndarray, settings: RunSettings,
                   res: int, *, patch_design: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Composite the generated crop over the full-resolution good image; pick the output mask.

    With `mask_mode` "generated" the label is G's own mask (within the dilated target) and the composite's
    alpha follows that label. For a patch G the pixels are then its hard composite (`hard_composite`), so
    pixels change where the label says; where the window is enlarged `LAYER_PASTE_MIN_SCALE` times or more,
    the label's pixels get G's defect colour (`defect_colour`) and every other pixel stays the input's, so the
    defect's edge is the label's smooth full-resolution one, not the model's pixel grid. With `min_change` > 0
    the label then keeps only the pixels G visibly changes (`visible_label`).

    A target the run drew (`p.part` set: a random target or G's proposal) stays on the part: its label is cut to
    the part (`on_part`) and the composite's alpha is zero off the part, so no background pixel changes. A
    given mask is the user's: its label and composite are left as they are.

    Args:
        p: the prepared job.
        image_m: float (3,R,R) generated image in [-1,1].
        mask_logit: float (1,R,R) generated mask logit.
        settings: run settings (`guide_weight`, `detail`, `detail_from`, `mask_mode`, `feather_px`, `min_change`).
        res: model resolution.
        patch_design: None for a whole-part bundle, else its patch G's design (`Bundle.patch_design`).

    Returns:
        (the image in the input's own channels and bit depth, uint8 HxW {0,1} mask), at the input's resolution.

    Raises:
        JobError: non-finite generated pixels, an empty (or, with `min_change`, invisible) generated label, or
            a drawn label wholly off the part.
    """
    if not (np.isfinite(image_m).all() and np.isfinite(mask_logit).all()):
        msg = "generated image is not finite (NaN/inf)"
        raise JobError(msg)
    generated = settings.mask_mode == "generated"
    # a patch G's defect enlarged past LAYER_PASTE_MIN_SCALE: its colour pasted along its own label
    layer_only = generated and patch_design is not None and p.crop.scale(res) >= LAYER_PASTE_MIN_SCALE
    if generated:
        label = generated_mask(mask_logit, p.mask, p.crop, res, settings.feather_px)
        if layer_only:
            image_m = defect_colour(image_m, mask_logit, p.good, layered=patch_design == "layered")
        elif patch_design is not None:
            image_m = hard_composite(image_m, mask_logit, p.good, layered=patch_design == "layered")
    else:
        label = p.mask
    if p.part is not None:  # a target the run drew: never on the background
        label = on_part(label, p.part)
    if settings.guide_weight > 0:
        image_m = (1.0 - settings.guide_weight) * np.asarray(image_m, np.float32) + settings.guide_weight * p.stitched
    # the detail's source: the guide (good crop + stitched real defect) or the good crop alone (its grain only)
    source = (p.guide, p.stitched) if settings.detail_from == "reference" else (p.crop.of(p.image), p.good)
    pixels = model_pixels(image_m, p.crop, detail_layer(*source) if settings.detail else None)
    if generated and settings.min_change > 0:
        label = visible_label(label, pixels, p.image, p.crop, settings.min_change,
                              MIN_PIECE_MODEL_PX * p.crop.scale(res) ** 2)
    alpha = label.astype(np.float32) if layer_only else alpha_for(label, p.crop, res, settings.feather_px)
    if p.part is not None:  # the feathered band too
        alpha *= p.part
    native = p.image if p.native is None else p.native
    return composite(native, pixels, alpha, p.crop, p.fmt), label
