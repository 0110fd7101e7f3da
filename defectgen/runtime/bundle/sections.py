"""Typed sections of the manifest: the recommended run settings (`RunDefaults`) and a patch-mode bundle's
window (`PatchInfo`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from defectgen.errors import BundleError
from defectgen.runtime.bundle.fields import get_field, require_type

MASK_MODES = ("target", "generated")  # `run --mask-mode`: the output label
MASK_SHAPES = ("reference", "procedural", "generated")  # `run --mask-shape`: how random targets are made


@dataclass(frozen=True)
class RunDefaults:
    """The bundle's recommended `defectgen run` settings: the one place run defaults live.

    `defectgen export` writes them (its `--steps` / `--guide-weight` / `--mask-mode` override fields),
    `defectgen run` and `defectgen bench` start from them, and the runtime's `InversionConfig` takes its field
    defaults from here.
    A manifest that names only some fields gets these defaults for the rest.
    """

    space: str = "wplus"  # latent space optimised: wplus, w or z
    steps: int = 10  # Adam steps after the init
    lr: float = 0.05  # peak Adam learning rate
    proposal_lr: float = 0.005  # peak Adam lr of a job whose target G proposed: its steps only refine G's own
    #                             defect, and at `lr` they drift its colours off the real ones (colour_drift.md)
    proposal_steps: int = 5  # Adam steps of such a job: at `proposal_lr` half of `steps` does as well (findings)
    init: str = "encoder"  # encoder | wavg | random
    feather_px: float = 3.0  # compositing feather, in model pixels
    detail: bool = True  # add the full-resolution guide's detail above the model's resolution
    guide_weight: float = 0.0  # share of the stitched real defect S in the output: (1 - g) G + g S
    mask_shape: str = "reference"  # random targets: the reference's own mask, "procedural" shapes or G's "generated"
    mask_mode: str = "target"  # output label: the target mask, or "generated" (G's own mask within the target)
    min_change: float = 0.0  # "generated" labels keep only pixels G changes by this many grey levels (0: all)

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest.defaults") -> RunDefaults:
        """Parse the manifest's `defaults`; unknown keys are ignored (a newer exporter), types are checked.

        Raises:
            BundleError: a known field of the wrong type (named).
        """
        require_type(d, dict, where)
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            v, want = d[f.name], type(getattr(cls, f.name))
            ok = isinstance(v, want) and not (want is not bool and isinstance(v, bool))
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v, ok = float(v), True
            if not ok:
                msg = f"manifest field {where}.{f.name} must be {want.__name__}, got {v!r}"
                raise BundleError(msg)
            kw[f.name] = v
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PatchInfo:
    """A patch-mode bundle's window: the model works on `window` x `window` model px, cut from the data at
    `scale` data px per model px (1.0: native resolution). The good window is an input of the synthesis graph:
    a layered G draws a defect layer over it; a full G (`design = "full"`) draws the whole window itself.

    `part_size_px` is how large the training parts were (the median over `train/good`, in data px, measured by
    the rule named `part_size_rule`, `defectgen.data.part_size`): `run --scale auto` compares each image's part
    with it. Optional: bundles exported before it was recorded run at `scale`.
    """

    window: int  # P, equal to the manifest's `resolution`
    scale: float = 1.0  # data px per model px
    design: str = "layered"  # "layered": G draws a defect layer over the good window; "full": the whole window
    part_size_px: float | None = None  # the training parts' median size in data px (None: not recorded)
    part_size_rule: str | None = None  # how `part_size_px` was measured, e.g. "sqrt_part_area"

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest.patch") -> PatchInfo:
        require_type(d, dict, where)
        part = get_field(d, "part_size_px", float, where, default=None)
        info = cls(window=get_field(d, "window", int, where), scale=float(get_field(d, "scale", float, where,
                                                                                     default=1.0)),
                   design=get_field(d, "design", str, where, default="layered"),
                   part_size_px=None if part is None else float(part),
                   part_size_rule=get_field(d, "part_size_rule", str, where, default=None))
        if info.window < 1 or not info.scale > 0:
            msg = f"manifest field {where} needs window >= 1 and scale > 0, got {info}"
            raise BundleError(msg)
        if info.design not in ("layered", "full"):
            msg = f"manifest field {where}.design must be 'layered' or 'full', got {info.design!r}"
            raise BundleError(msg)
        if info.part_size_px is not None and not (info.part_size_px > 0 and info.part_size_rule):
            msg = (f"manifest field {where}.part_size_px must be > 0 and come with part_size_rule, got "
                   f"{info.part_size_px!r} by {info.part_size_rule!r}")
            raise BundleError(msg)
        return info

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the part size fields only when recorded (an older bundle's section reads back unchanged)."""
        return {k: v for k, v in asdict(self).items() if v is not None}
