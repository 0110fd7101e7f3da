"""`JobRecord`: one line of `OUT/jobs.jsonl`, the only code that writes or reads that format.

A line says what a job was (inputs, seed, settings), how it ended (status, error, outputs) and what it cost
(loss terms, objective per evaluation, steps, seconds, backend). Non-finite numbers are written as null, so
every line is strict JSON. Readers that only need a few fields (`Done` for resume, the contact sheet) parse
a line with `JobRecord.from_line` and skip lines it rejects.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.runtime.bundle.manifest import LOSS_TERMS
from defectgen.runtime.jobs.settings import RunSettings
from defectgen.runtime.jobs.sources import JobSpec, relpath

STATUSES = ("ok", "failed")


def _num(x: float) -> float | None:
    return round(float(x), 7) if np.isfinite(x) else None


@dataclass(frozen=True)
class JobRecord:
    """One job's `jobs.jsonl` line, field for field (docs/run.md lists them)."""

    id: str
    index: int
    status: str  # "ok" or "failed"
    error: str | None
    type: str
    seed: int
    inputs: dict[str, Any]  # {"image", "mask" ("random" or a path), "reference"}
    outputs: dict[str, str] | None  # {"image", "mask"} relative to the output folder; None when failed
    space: str
    init: str
    steps: int
    lr: float
    lambdas: dict[str, float]
    mask_mode: str
    detail: bool
    guide_weight: float
    mask_shape: str
    final_terms: dict[str, float | None] | None = None
    objective: list[float | None] | None = None
    steps_run: int | None = None
    time_s: float = 0.0
    backend: str = ""
    window: dict[str, Any] | None = None  # patch mode: {"box": [y0, x0, y1, x1], "scale", "enlarged"}
    variant: int = 0  # k of `--variants K`
    pixels: dict[str, Any] | None = None  # the input's {"channels", "bits", "source"}; outputs keep them, as PNG
    proposal: dict[str, Any] | None = None  # `--mask-shape generated`: {"draw": k, "draws": n, "score": D's}
    detail_from: str | None = "reference"  # where `detail` came from (`RunSettings.detail_from`); None: no detail

    @classmethod
    def of(cls, spec: JobSpec, settings: RunSettings, *, status: str, error: str | None = None,
           outputs: tuple[str, str] | None = None, reference: str | None = None,
           final_terms: np.ndarray | None = None, history: np.ndarray | None = None, steps_run: int | None = None,
           seconds: float = 0.0, backend: str = "", base: Path | None = None,
           window: dict[str, Any] | None = None, pixels: dict[str, Any] | None = None,
           proposal: dict[str, Any] | None = None) -> JobRecord:
        """The record of a finished or failed job; mask paths are written relative to `base`."""
        inv = settings.inversion
        mask = "random" if spec.mask is None else relpath(spec.mask, base or spec.mask.parent)
        return cls(
            id=spec.id, index=spec.index, status=status, error=error, type=spec.defect_type, seed=spec.seed,
            inputs={"image": spec.source or str(spec.image), "mask": mask, "reference": reference},
            outputs={"image": outputs[0], "mask": outputs[1]} if outputs else None,
            space=inv.space, init=inv.init, steps=inv.steps_for(proposal is not None),
            lr=inv.lr_for(proposal is not None),
            lambdas=dict(inv.lambdas),
            mask_mode=settings.mask_mode, detail=settings.detail, guide_weight=settings.guide_weight,
            mask_shape=settings.mask_shape,
            final_terms=None if final_terms is None else dict(zip(LOSS_TERMS, map(_num, final_terms), strict=True)),
            objective=None if history is None else [_num(v) for v in history],
            steps_run=steps_run, time_s=round(seconds, 4), backend=backend, window=window, variant=spec.variant,
            pixels=pixels, proposal=proposal, detail_from=settings.detail_from if settings.detail else None,
        )

    def to_line(self) -> str:
        """The record as one strict-JSON line, newline included."""
        return json.dumps(asdict(self), separators=(",", ":"), allow_nan=False) + "\n"

    @classmethod
    def from_line(cls, line: str) -> JobRecord:
        """Parse one line; unknown keys (a newer writer) are ignored.

        Raises:
            ValueError: not JSON, not an object, a missing required field or an unknown status.
        """
        d = json.loads(line)
        if not isinstance(d, dict):
            msg = "a jobs.jsonl line must be a JSON object"
            raise ValueError(msg)
        names = {f.name for f in fields(cls)}
        try:
            rec = cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as e:
            raise ValueError(str(e)) from None
        if rec.status not in STATUSES or (rec.status == "ok" and not rec.outputs):
            msg = f"bad status {rec.status!r} or missing outputs"
            raise ValueError(msg)
        return rec
