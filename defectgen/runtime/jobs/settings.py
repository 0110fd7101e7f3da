"""The resolved options of one run: the bundle's `RunDefaults`, overridden by the user, checked against the bundle.

`defectgen run`, `defectgen demo` and `defectgen bench` all build their `RunSettings` with `resolve_settings`, so
the job path they time or run is configured the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from defectgen.errors import JobError, choice_error
from defectgen.runtime.bundle.loader import Bundle
from defectgen.runtime.bundle.manifest import LOSS_TERMS
from defectgen.runtime.bundle.sections import MASK_MODES, MASK_SHAPES
from defectgen.runtime.jobs.compose import DETAIL_SOURCES
from defectgen.runtime.jobs.invert import InversionConfig
from defectgen.runtime.jobs.propose import PROPOSAL_DRAWS

MAX_PROPOSALS = 1024  # all proposals of a job go through one synthesis call
AUTO_SCALE = "auto"  # `--scale auto`: each image's part size against the training parts' (`prepare.window_scale`)


@dataclass(frozen=True)
class RunSettings:
    """Per-run options shared by every job.

    Attributes:
        inversion: the inversion's hyper-parameters (space, steps, lr, init, λ by term name, schedule).
        mask_mode: "target" (output mask = the target mask) or "generated" (σ(G_mask) > 0.5 within it).
        feather_px: compositing feather in model pixels (scaled to the crop's full resolution).
        batch: step-graph batch size jobs are grouped into (`pick_batch`: as small as the jobs in hand allow).
        detail: add the full-resolution guide's detail above the model's resolution (`compose.detail_layer`).
        detail_from: where that detail comes from: "reference", the guide (the good crop with the real defect
            stitched in: the defect's fine structure and the surface's grain), or "surface", the good crop alone
            (its grain only; every defect pixel above the grain is the model's).
        guide_weight: share of the guide `S` in the model-resolution output, `(1 − g) G + g S` (0: the model's
            image alone; 1: the stitched real defect, i.e. warped copy-paste with colour matching).
        mask_shape: random targets (`mask: null` jobs) take the reference defect's own mask, moved and
            mirrored ("reference": real label geometry), or a shape drawn from the type's procedural
            family ("procedural"), or the generator's own proposal of a defect and its mask in a window placed
            as for "reference" ("generated", `propose`: the inversion then starts from that latent); jobs without
            a reference draw procedurally, or place the window with a procedural shape.
        scale: patch-mode bundles: data px per model px of the window, or "auto" (and None): the bundle's pixel
            scale times how much larger the image's part is than the training parts (`prepare.window_scale`).
        proposals: latents G draws per proposed target ("generated" shape); more draws, a stricter choice by
            its discriminator and a slower proposal.
        min_change: "generated" labels keep only the pixels G's image changes by at least this many grey levels
            in some channel (`compose.visible_label`); 0 keeps G's whole mask.
    """

    inversion: InversionConfig
    mask_mode: str = "target"
    feather_px: float = 3.0
    batch: int = 1
    detail: bool = True
    detail_from: str = "reference"
    guide_weight: float = 0.0
    mask_shape: str = "reference"
    scale: float | str | None = None
    proposals: int = PROPOSAL_DRAWS
    min_change: float = 0.0

    def __post_init__(self) -> None:
        if self.detail_from not in DETAIL_SOURCES:  # settings built in Python skip `resolve_settings`
            raise JobError(choice_error("detail source", self.detail_from, DETAIL_SOURCES))
        if self.scale is not None and self.scale != AUTO_SCALE and not (
                isinstance(self.scale, (int, float)) and self.scale > 0):
            raise JobError(_scale_error(self.scale))

    def identity(self) -> dict[str, Any]:
        """The settings that decide a job's result, flat, for `run.json` (batching pads: it is left out)."""
        inv = self.inversion
        return {"space": inv.space, "steps": inv.steps, "lr": inv.lr, "init": inv.init, "lambdas": inv.lambdas,
                "mask_mode": self.mask_mode, "feather_px": self.feather_px, "detail": self.detail,
                "guide_weight": self.guide_weight, "mask_shape": self.mask_shape,
                **({"detail_from": self.detail_from} if self.detail and self.detail_from != "reference" else {}),
                **({"min_change": self.min_change} if self.mask_mode == "generated" and self.min_change > 0 else {}),
                **({"proposals": self.proposals, "proposal_lr": inv.lr_for(True), "proposal_steps": inv.steps_for(True)}
                   if self.mask_shape == "generated" else {}),
                **({"scale": self.scale} if self.scale is not None else {})}


def _scale_error(scale: object) -> str:
    return f"--scale {scale}: needs a number > 0 (data px per model px) or {AUTO_SCALE}"


def parse_scale(scale: float | str | None, patch: bool) -> float | str | None:
    """`--scale` as given (a number, its text, "auto" or None) for a bundle with (`patch`) or without windows.

    Returns:
        The number, "auto" (also for None) on a patch-mode bundle; None on a whole-part one, where auto means
        nothing.

    Raises:
        JobError: not a number > 0 nor "auto", or a number for a whole-part bundle.
    """
    if scale is None or (isinstance(scale, str) and scale.strip().lower() == AUTO_SCALE):
        return AUTO_SCALE if patch else None
    try:
        value = float(scale)
    except ValueError:
        raise JobError(_scale_error(scale)) from None
    if not value > 0 or value == float("inf"):  # also refuses NaN
        raise JobError(_scale_error(scale))
    if not patch:
        msg = "--scale applies to patch-mode bundles only (this bundle's model sees whole parts)"
        raise JobError(msg)
    return value


def resolve_settings(bundle: Bundle, *, space: str | None = None, steps: int | None = None, lr: float | None = None,
                     init: str | None = None, lambdas: dict[str, float] | None = None, mask_mode: str | None = None,
                     batch: int | None = None, detail: bool | None = None, guide_weight: float | None = None,
                     mask_shape: str | None = None, scale: float | str | None = None, proposals: int | None = None,
                     min_change: float | None = None, detail_from: str | None = None, **inversion: Any) -> RunSettings:
    """Merge options (None: the bundle's `RunDefaults`) and validate them against the bundle.

    Args:
        bundle: the loaded bundle.
        space, steps, lr, init, lambdas, mask_mode, batch, detail, guide_weight, mask_shape, scale, proposals,
            min_change, detail_from: the run
            options (`batch` None: the largest exported step batch until `pick_batch` knows how many jobs there
            are; `scale`: a number only for patch-mode bundles, "auto" or None: `parse_scale`).
        **inversion: further `InversionConfig` fields (e.g. `early_stop_patience=0` for timing).

    Returns:
        The settings, with λ resolved to one weight per loss term.

    Raises:
        BundleError: unknown space, λ name or a batch size the bundle has no step graph for.
        JobError: bad init, steps, lr, λ value, mask mode, mask shape, guide weight, scale, proposals or detail
            source.
    """
    d = bundle.defaults
    scale = parse_scale(scale, bundle.patch is not None)
    config = InversionConfig(space=space or d.space, steps=d.steps if steps is None else steps,
                             lr=d.lr if lr is None else lr, proposal_lr=d.proposal_lr if lr is None else lr,
                             proposal_steps=d.proposal_steps if steps is None else steps,
                             init=init or d.init, lambdas=dict(lambdas or {}),
                             **inversion)
    config.validate(bundle)
    mask_mode = mask_mode or d.mask_mode
    if mask_mode not in MASK_MODES:
        raise JobError(choice_error("mask mode", mask_mode, MASK_MODES))
    batches = bundle.step_batches(config.space)
    if batch is None:
        batch = max(batches)
    elif batch not in batches:
        bundle.step_file(config.space, batch)  # raises the bundle's message naming the exported batches
    mask_shape = mask_shape or d.mask_shape
    if mask_shape not in MASK_SHAPES:
        raise JobError(choice_error("mask shape", mask_shape, MASK_SHAPES))
    guide_weight = d.guide_weight if guide_weight is None else float(guide_weight)
    if not 0.0 <= guide_weight <= 1.0:  # also refuses NaN
        msg = f"--guide-weight must be within [0, 1], got {guide_weight}"
        raise JobError(msg)
    if proposals is not None and mask_shape != "generated":
        msg = f"--proposals applies to --mask-shape generated only (this run's mask shape is {mask_shape!r})"
        raise JobError(msg)
    proposals = PROPOSAL_DRAWS if proposals is None else proposals
    if not 1 <= proposals <= MAX_PROPOSALS:
        msg = f"--proposals must be within [1, {MAX_PROPOSALS}], got {proposals}"
        raise JobError(msg)
    min_change = d.min_change if min_change is None else float(min_change)
    if not 0.0 <= min_change <= 255.0:  # also refuses NaN
        msg = f"--min-change must be within [0, 255] grey levels, got {min_change}"
        raise JobError(msg)
    detail = d.detail if detail is None else detail
    if detail_from is not None and not detail:  # an unknown source: `RunSettings` names it
        msg = f"--detail-from {detail_from} needs the detail layer, which --no-detail (or the bundle) turns off"
        raise JobError(msg)
    lam = bundle.lambda_vector(config.lambdas)
    config = dataclasses.replace(config, lambdas={t: float(f"{v:.7g}") for t, v in zip(LOSS_TERMS, lam, strict=True)})
    return RunSettings(inversion=config, mask_mode=mask_mode, feather_px=float(d.feather_px), batch=batch,
                       detail=detail, detail_from=detail_from or "reference", guide_weight=guide_weight,
                       mask_shape=mask_shape, scale=scale, proposals=proposals, min_change=min_change)


def pick_batch(batches: list[int], jobs: int) -> int:
    """The step batch for `jobs` jobs in hand: the smallest exported batch that holds them all (latency: one job
    runs the batch-1 graph, not a padded batch of 4), else the largest (throughput).
    """
    fitting = [b for b in sorted(batches) if b >= jobs]
    return fitting[0] if fitting else max(batches)
