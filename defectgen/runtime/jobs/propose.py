"""Random targets the generator draws itself (`--mask-shape generated`): G proposes the defect *and* its mask.

Inverting G onto a borrowed shape (a real defect's mask moved to the part) asks it for a defect of a shape it
may not draw; it then spreads a faint layer over twice the target's area. A free sample of G has its own,
exact mask and the contrast of real defects, so for random targets we let G propose: draw `PROPOSAL_DRAWS`
latents of the job's type over the job's good window; among the whole defects (at least `MIN_MODEL_PX` model
pixels, not cut by the window's edge) keep the one G's own discriminator scores most real (the bundle's critic
graph: discriminator ranking, as in discriminator rejection sampling, Azadi et al. 2019; a bundle without a
critic keeps the first), and make that mask, without stray specks, the job's target. The inversion then starts
from that latent: its steps pull the appearance toward the stitched real defect and keep the mask on the target,
and the output label is exact.

Why rank: the draws D scores lowest are the fragmented, smeared or cut-off shapes that D learnt to tell from
real defects; the top-scored are whole strokes, round holes and clustered prints (docs/design.md, "Who draws the
target").

Randomness: the draws come from the job's seed and its variant number, so variants propose different defects
and a job's proposal does not depend on its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defectgen.data.masks import drop_specks
from defectgen.errors import JobError
from defectgen.runtime.backends import Backend
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.jobs.compose import MIN_PIECE_MODEL_PX, Crop, hard_composite, upsample_mask
from defectgen.runtime.jobs.invert import latents_of

PROPOSAL_DRAWS = 8  # latents drawn per job; the whole defect D scores highest among them is kept
MIN_MODEL_PX = 4  # a proposal's mask must cover at least this many model pixels


@dataclass(frozen=True)
class Proposal:
    """The kept draw: its mask at full resolution and its latent in the run's space (the inversion's start)."""

    mask: np.ndarray  # uint8 HxW {0,1}, zero outside the crop
    latent: np.ndarray  # (*latent shape) float32 in the run's space
    draw: int  # which of the draws was kept (recorded in jobs.jsonl)
    score: float | None = None  # its critic score (None: the bundle has no critic)


def whole_defects(mask_logit: np.ndarray) -> np.ndarray:
    """(B,) which drawn masks (B,1,R,R logits) are whole defects: >= `MIN_MODEL_PX` px, none on the edge."""
    m = mask_logit[:, 0] > 0
    edge = m[:, [0, -1], :].any((1, 2)) | m[:, :, [0, -1]].any((1, 2))
    return (m.sum((1, 2)) >= MIN_MODEL_PX) & ~edge


def propose_target(backend: Backend, bundle: Bundle, *, space: str, defect_type: str, good_m: np.ndarray,
                   crop: Crop, shape: tuple[int, int], rng: np.random.Generator,
                   draws: int = PROPOSAL_DRAWS) -> Proposal:
    """G's proposal for one job's window (module docstring).

    Args:
        backend, bundle: the engine and its bundle.
        space: the run's latent space (the returned latent is in it).
        defect_type: the job's defect type.
        good_m: (3,R,R) the good window at model resolution, in [-1, 1].
        crop: where the window sits in the full image.
        shape: (H, W) of the full image.
        rng: the job's proposal stream.
        draws: latents to draw (`run --proposals`).

    Raises:
        JobError: none of the draws drew a defect of at least `MIN_MODEL_PX` px.
    """
    n = draws
    z = rng.standard_normal((n, bundle.z_dim)).astype(np.float32)
    types = [defect_type] * n
    latent = latents_of(backend, bundle, space, z, types)
    onehot = bundle.type_onehot(types) if space == "z" else None
    goods = np.repeat(good_m[None], n, 0)
    image, logit = backend.synthesize(space, latent, onehot, good=goods)
    whole = whole_defects(logit)
    sizes = (logit[:, 0] > 0).sum((1, 2))
    score = None
    scores = None
    if whole.any() and bundle.has_critic:  # D judges the whole draws only: the others are never kept
        cand = np.flatnonzero(whole)
        scores = backend.critic(hard_composite(image[cand], logit[cand], goods[cand],
                                               layered=bundle.patch_design == "layered"),
                                (logit[cand] > 0).astype(np.float32), bundle.type_onehot([defect_type] * len(cand)))
        scores = np.where(np.isfinite(scores), scores, -np.inf)  # a non-finite score never wins
    if scores is not None and np.isfinite(scores).any():
        best = int(np.argmax(scores))
        pick, score = int(cand[best]), float(scores[best])
    elif whole.any():  # no critic (or no usable score): the first whole draw
        pick = int(np.argmax(whole))
    elif sizes.max() >= MIN_MODEL_PX:  # only edge-cut draws: the largest still gives a defect inside the window
        pick = int(np.argmax(sizes))
    else:
        msg = (f"the generator drew no {defect_type} defect of >= {MIN_MODEL_PX} px in {n} proposals "
               f"(use --mask-shape reference or procedural)")
        raise JobError(msg)
    full = np.zeros(shape, np.uint8)
    drawn = upsample_mask(logit[pick], crop.size).astype(np.uint8)
    crop.of(full)[...] = drop_specks(drawn, MIN_PIECE_MODEL_PX * crop.scale(bundle.resolution) ** 2)
    if not full.any():
        msg = f"the generator's {defect_type} proposal vanished at the image's resolution"
        raise JobError(msg)
    return Proposal(mask=full, latent=np.ascontiguousarray(latent[pick], np.float32), draw=pick, score=score)
