"""One job's inputs: read -> target mask -> reference stitch -> model inputs (`prepare`), and a batch of prepared
jobs through `invert` (`invert_batch`). `defectgen run` and `defectgen bench` both prepare jobs here.

Per-job problems (unreadable image, mask size mismatch, empty mask, a NaN objective, ...) raise
`DefectgenError` subclasses from here; the caller records them as failed jobs and goes on. Randomness is
per job: child streams of the job's seed, so a job's result does not depend on its batch, shard or order.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np

from defectgen.data.imageio import RGB8, PixelFormat, read_image, read_mask, read_native, to_model, to_rgb8
from defectgen.data.masks import part_mask, random_mask
from defectgen.data.part_size import MEASURE_MAX_SIDE, PART_SIZE_RULE, part_size, shrink
from defectgen.data.stitching import place_reference, stitch
from defectgen.errors import JobError
from defectgen.runtime.backends import Backend
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.jobs.compose import (
    Crop,
    model_inputs,
    model_mask,
)
from defectgen.runtime.jobs.invert import InversionBatch, InversionResult, invert
from defectgen.runtime.jobs.propose import Proposal, propose_target
from defectgen.runtime.jobs.settings import AUTO_SCALE, RunSettings
from defectgen.runtime.jobs.sources import JobSpec, relpath

# part_mask + random_mask cost grows fast with size (measured: 1024 px 1.6 s, 512 px 0.14 s per job); the part's
# size (`--scale auto`) is measured on the same shrunk image
RANDOM_MASK_MAX_SIDE = MEASURE_MAX_SIDE
STITCH_FEATHER_PX = 0  # full-resolution pixels: see `prepare`

# child stream ids of a job's seed: one per random decision, so adding one never shifts the others
_RNG_MASK, _RNG_REFERENCE, _RNG_STITCH, _RNG_PROPOSAL = 0, 1, 2, 3


@dataclass
class Prepared:
    """A job's inputs, read and brought to the model: full-resolution arrays plus (C,R,R) model arrays."""

    spec: JobSpec
    image: np.ndarray  # uint8 HxWx3 RGB, full resolution: what every 8-bit step and the model see
    mask: np.ndarray  # uint8 HxW {0,1}, full resolution
    crop: Crop
    good: np.ndarray  # float32 (3,R,R) in [-1,1]
    mask_m: np.ndarray  # float32 (1,R,R) {0,1}
    stitched: np.ndarray  # float32 (3,R,R) in [-1,1]
    guide: np.ndarray  # uint8 crop-sized HxWx3: the crop with the reference stitched in at full resolution
    reference: str | None  # which real defect was stitched in (None: the bundle has none of this type)
    seconds: float = 0.0
    window: dict[str, Any] | None = None  # patch mode: the window's box, scales (and how found), enlarged
    native: np.ndarray | None = None  # the image as stored (gray / RGBA / 16 bit), what the output is made of
    fmt: PixelFormat = RGB8
    start: np.ndarray | None = None  # the inversion's start latent when G proposed the target (`propose`)
    proposal: dict[str, Any] | None = None  # G's proposal (`propose`): {"draw", "draws", "score"}, else None
    part: np.ndarray | None = None  # uint8 HxW {0,1}: the part, for a target the run drew (labels stay on it)


def job_rng(spec: JobSpec, stream: int) -> np.random.Generator:
    """The job's independent random stream number `stream`."""
    return np.random.default_rng([spec.seed, stream])


def propose(backend: Backend, bundle: Bundle, spec: JobSpec, settings: RunSettings, *, good_m: np.ndarray,
            crop: Crop, shape: tuple[int, int]) -> Proposal:
    """G's proposal for a job (`propose.propose_target`), drawn from its own stream: per job *and* variant, so
    variants propose different defects and the same job always proposes the same one.
    """
    return propose_target(backend, bundle, space=settings.inversion.space, defect_type=spec.defect_type,
                          good_m=good_m, crop=crop, shape=shape, draws=settings.proposals,
                          rng=np.random.default_rng([spec.seed, _RNG_PROPOSAL, spec.variant]))


@functools.lru_cache(maxsize=64)
def _read_reference(image: str, mask: str) -> tuple[np.ndarray, np.ndarray]:
    # the bank holds a few small crops that every job reuses: read each once
    ref_img, ref_mask = read_image(image), read_mask(mask)
    if ref_img.shape[:2] != ref_mask.shape:
        ref_mask = read_mask(mask, ref_img.shape[:2])  # raises the size-mismatch message
    if not ref_mask.any():
        msg = f"reference defect mask is empty: {mask}"
        raise JobError(msg)
    return ref_img, ref_mask


def _reference(spec: JobSpec, bundle: Bundle) -> tuple[np.ndarray, np.ndarray, str] | None:
    if spec.reference is not None:
        img, msk = spec.reference
        return (*_read_reference(str(img), str(msk)), str(img))
    bank = bundle.bank(spec.defect_type)
    if not bank:
        return None
    img, msk = bank[int(job_rng(spec, _RNG_REFERENCE).integers(len(bank)))]
    return (*_read_reference(str(img), str(msk)), relpath(img, bundle.root))


def _to_full(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A mask drawn small, at full size: linear + 0.5 threshold (smooth edges), nearest if that empties it."""
    (h, w), (mh, mw) = hw, m.shape
    if (mh, mw) == (h, w):
        return m
    up = cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
    if not up.any():  # a 1-px draw can fall between sample points: keep it, nearest
        up = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return up.astype(np.uint8)


class _PartCache:
    """The part region of the last few images, by content: random targets on one image (`--random-masks N`)
    need it once, not N times (measured: 2 ms a job at 128 px; at 512 px and up 25 ms of the 37 ms a random
    target costs).
    """

    def __init__(self, size: int = 8) -> None:
        self.size, self.parts = size, OrderedDict[tuple[Any, str, bytes], np.ndarray]()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        key = (image.shape, image.dtype.str, hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest())
        if key in self.parts:
            self.parts.move_to_end(key)
            return self.parts[key]
        part = part_mask(shrink(image, RANDOM_MASK_MAX_SIDE))
        part.setflags(write=False)  # shared between jobs: nobody may draw on it
        self.parts[key] = part
        if len(self.parts) > self.size:
            self.parts.popitem(last=False)
        return part


_part_of = _PartCache()


def _random_target(spec: JobSpec, image: np.ndarray) -> np.ndarray:
    """A random mask of the type's shape family, drawn at most `RANDOM_MASK_MAX_SIDE` px wide, scaled up.

    Defect shapes scale with the part, so drawing small gives the same geometry; only the edge detail is
    interpolated (linear, thresholded at 0.5, so edges stay smooth rather than blocky).
    """
    return _to_full(random_mask(spec.defect_type, _part_of(image), job_rng(spec, _RNG_MASK)), image.shape[:2])


def _reference_target(spec: JobSpec, image: np.ndarray, ref_img: np.ndarray, ref_mask: np.ndarray,
                      ref_scale: float | None) -> tuple[np.ndarray, np.ndarray]:
    """A random target with the reference's own (real) mask shape: `place_reference` on the part.

    `ref_scale`: a patch bundle's bank holds native-resolution crops, shown at the job's pixel scale relative
    to the bundle's (1 for images taken like the training data); None: a whole-image crop, resized to the part.

    Returns:
        (the full-size image with the moved reference pasted in, unblended; its {0,1} mask = the target).
    """
    part = _to_full(_part_of(image), image.shape[:2])
    return place_reference(image, part, ref_img, ref_mask, job_rng(spec, _RNG_MASK), ref_scale=ref_scale)


def target_mask(spec: JobSpec, image: np.ndarray) -> np.ndarray:
    """The job's target mask at full resolution: read (size-checked, non-empty) or drawn on the part.

    Raises:
        DataError: unreadable, non-binary or wrongly sized mask file.
        JobError: the mask is empty.
    """
    if spec.mask is None:
        return _random_target(spec, image)
    if spec.pixels is not None and spec.pixels.mask is not None:
        mask = spec.pixels.mask  # checked against the image when the job was made
    else:
        mask = read_mask(spec.mask, image.shape[:2])
    if not mask.any():
        msg = f"target mask is empty (no defect pixels): {spec.mask}"
        raise JobError(msg)
    return mask


class WindowScale(NamedTuple):
    """A patch bundle's data px per model px for one image, and how it was found (`jobs.jsonl`'s `scale_from`)."""

    value: float
    source: str  # "given" (--scale), "auto: part P px vs T px in training", or "bundle: <why auto could not>"


def window_scale(bundle: Bundle, image: np.ndarray, settings: RunSettings) -> WindowScale | None:
    """The pixel scale of a job's window: `--scale` when given, else (`auto`) the bundle's scale times how much
    larger the image's part is than the training parts (`data.part_size`, the measure the exporter recorded), so
    a part taken at another zoom gets windows, and defects, of the same size relative to the part.

    Without a recorded training part size (older bundles), or one measured by a rule this runtime does not know,
    it is the bundle's scale, and the source says why. None for a whole-part bundle.
    """
    patch = bundle.patch
    if patch is None:
        return None
    if settings.scale is not None and settings.scale != AUTO_SCALE:
        return WindowScale(float(settings.scale), "given")
    if patch.part_size_px is None:
        return WindowScale(patch.scale, "bundle: it records no training part size")
    if patch.part_size_rule != PART_SIZE_RULE:
        return WindowScale(patch.scale, f"bundle: unknown part size rule {patch.part_size_rule!r}")
    size = part_size(_part_of(image), image.shape[:2])
    return WindowScale(patch.scale * size / patch.part_size_px,
                       f"auto: part {size:.0f} px vs {patch.part_size_px:.0f} px in training")


def job_crop(bundle: Bundle, mask: np.ndarray, scale: WindowScale | None) -> tuple[Crop, dict[str, Any] | None]:
    """The region the model sees: the whole image, or for a patch-mode bundle a window around the target.

    The window is `P x scale` data px (`window_scale`), enlarged when the target does not fit (`Crop.around`);
    the model then works at a coarser scale.

    Returns:
        (the crop, None or the window's record for `jobs.jsonl`: box [y0, x0, y1, x1], scale (what the model
        sees), enlarged, base_scale (what the window was sized for) and scale_from (how that was found)).
    """
    if bundle.patch is None or scale is None:
        return Crop.full(mask.shape), None
    crop, enlarged = Crop.around(mask, max(1, round(bundle.patch.window * scale.value)))
    return crop, {"box": [crop.y0, crop.x0, crop.y1, crop.x1], "scale": round(crop.scale(bundle.resolution), 4),
                  "enlarged": enlarged, "base_scale": round(scale.value, 4), "scale_from": scale.source}


def prepare(spec: JobSpec, bundle: Bundle, settings: RunSettings, backend: Backend | None = None) -> Prepared:
    """Read a job's files and build the model inputs `I`, `M`, `S` for its crop.

    With `mask_shape` "generated" a random target is G's own proposal (`propose.propose_target`): the window is
    placed as for a "reference" target, then G draws the defect and its mask there; that needs the `backend`.

    Raises:
        DataError: missing/corrupt image or mask, mask size mismatch.
        JobError: empty mask, a mask that vanishes at model resolution, a bad reference defect, no proposal.
    """
    t0 = time.perf_counter()
    native, fmt = (spec.pixels.image, spec.pixels.fmt) if spec.pixels is not None else read_native(spec.image)
    image = to_rgb8(native, spec.image)
    ref = _reference(spec, bundle)
    proposing = spec.mask is None and settings.mask_shape == "generated"
    scale = window_scale(bundle, image, settings)
    moved = None
    if spec.mask is None and ref is not None and settings.mask_shape in ("reference", "generated"):
        ref_scale = None if bundle.patch is None or scale is None else scale.value / bundle.patch.scale
        moved, mask = _reference_target(spec, image, ref[0], ref[1], ref_scale)
    else:
        mask = target_mask(spec, image)
    crop, window = job_crop(bundle, mask, scale)
    res = bundle.resolution
    good, mask_m = model_inputs(image, mask, crop, res)
    start, proposal_record = None, None
    if proposing:  # the placed target only chose the window: G draws the defect and its mask in it
        if backend is None:
            msg = "--mask-shape generated needs the model to propose targets: prepare was given no backend"
            raise JobError(msg)
        proposal = propose(backend, bundle, spec, settings, good_m=good, crop=crop, shape=mask.shape)
        mask, start, moved = proposal.mask, proposal.latent, None
        mask_m = model_mask(mask, crop, res)
        proposal_record = {"draw": proposal.draw, "draws": settings.proposals, "score": proposal.score}
    if ref is None:  # no real defect to imitate: S = I, the def/pix terms only smooth
        guide, stitched, ref_name = crop.of(image), good.copy(), None
    else:
        # stitched at full resolution (the reference keeps its detail for `detail_layer`), then brought to the
        # model like the good crop. It is pasted hard-edged (no feather): the stitch fills the whole target
        # with the defect's look, and any band outside the label would paste the reference's *surface* there,
        # changed pixels outside the mask that a detector learns as "not defect" (validation split: a 6 px
        # band cost ~10 points of pixel AP, 1 px with a rescale jitter ~2; benchmarks/results/downstream_tuning.md)
        ref_img, ref_mask, ref_name = ref
        if moved is not None:  # already in place: the box warp is the identity
            ref_img, ref_mask = crop.of(moved), crop.of(mask)
        guide = stitch(crop.of(image), ref_img, ref_mask, crop.of(mask), feather_px=STITCH_FEATHER_PX,
                       rng=None if moved is not None else job_rng(spec, _RNG_STITCH))
        stitched = to_model(guide, res)
    return Prepared(spec=spec, image=image, mask=mask, crop=crop, good=good, mask_m=mask_m, stitched=stitched,
                    guide=guide, reference=ref_name, seconds=time.perf_counter() - t0, window=window,
                    native=native, fmt=fmt, start=start, proposal=proposal_record,
                    part=None if spec.mask is not None else _to_full(_part_of(image), image.shape[:2]))


def batch_seed(jobs: list[Prepared]) -> int:
    """Seed of one `invert` call (random init, z candidates), derived from its jobs' seeds.

    `invert` draws for a whole batch from one generator, so with `--init random` or `--space z` a job's start
    depends on its batch-mates; deriving the seed from them keeps runs with equal options reproducible.
    """
    h = hashlib.sha256(",".join(f"{p.spec.seed}:{p.spec.variant}" if p.spec.variant else str(p.spec.seed)
                                for p in jobs).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def inversion_batch(jobs: list[Prepared]) -> InversionBatch:
    """The model inputs of prepared jobs, stacked for one `invert` call."""
    variants = [(p.spec.seed, p.spec.variant) for p in jobs]
    starts = [p.start for p in jobs]
    return InversionBatch(good=np.stack([p.good for p in jobs]), mask=np.stack([p.mask_m for p in jobs]),
                          stitched=np.stack([p.stitched for p in jobs]), types=[p.spec.defect_type for p in jobs],
                          variants=variants if any(k for _, k in variants) else None,
                          starts=starts if any(s is not None for s in starts) else None)


def invert_batch(backend: Backend, bundle: Bundle, jobs: list[Prepared], settings: RunSettings) -> InversionResult:
    """Run `invert` on a batch of prepared jobs (the backend pads it to an exported step batch)."""
    config = dataclasses.replace(settings.inversion, seed=batch_seed(jobs))
    return invert(backend, bundle, inversion_batch(jobs), config=config)
