"""The one job pipeline: job specs in, finished defects out (prepare -> batch -> invert -> compose), no files.

`defectgen run` (through `run_jobs`, which writes each batch of outcomes into its run folder, from
`generate_batches`) and the Python API (`defectgen.api.Generator.generate`, which hands outcomes back in memory,
from `generate_outcomes`: the same batches one outcome at a time) consume the same pipeline, so a defect made
from an array and one made from a file go through the same code.

Error policy: a `DefectgenError` raised by one job (bad image or mask, empty mask, NaN objective, ...) makes that
job a failed `Outcome` with its error; the stream goes on. Anything else is a bug and propagates.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.errors import DefectgenError
from defectgen.runtime.backends.base import Backend
from defectgen.runtime.bundle.loader import Bundle
from defectgen.runtime.jobs.output import compose_output
from defectgen.runtime.jobs.prepare import Prepared, invert_batch, prepare
from defectgen.runtime.jobs.record import JobRecord
from defectgen.runtime.jobs.settings import RunSettings
from defectgen.runtime.jobs.sources import JobSpec


@dataclass
class Outcome:
    """One job's result: the defective image and its label, or the error that stopped it.

    Attributes:
        spec: the job.
        image: the output in the input's own channels (RGB order) and bit depth, or None when failed.
        mask: uint8 HxW {0,1} label at the input's resolution, or None when failed.
        source: the input image as stored (what `train/good` gets), or None when it could not be read.
        error: why the job failed, or None.
        seconds: this job's share of the time spent so far (its preparation plus a share of its batch).
        fields: what the job's record says beyond the spec and settings (reference, loss terms, objective per
            evaluation, steps run, window, pixel format, proposal).
    """

    spec: JobSpec
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    source: np.ndarray | None = None
    error: str | None = None
    seconds: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self, settings: RunSettings, *, backend: str, outputs: tuple[str, str] | None = None,
               base: Path | None = None, extra_seconds: float = 0.0) -> JobRecord:
        """The job's `jobs.jsonl` record (`outputs`: where a run folder wrote it)."""
        return JobRecord.of(self.spec, settings, status="ok" if self.ok else "failed", error=self.error,
                            outputs=outputs, seconds=self.seconds + extra_seconds, backend=backend, base=base,
                            **self.fields)


def generate_outcomes(specs: Iterable[JobSpec], *, bundle: Bundle, backend: Backend,
                      settings: RunSettings) -> Iterator[Outcome]:
    """Run jobs in batches of `settings.batch`, yielding each one's `Outcome` as its batch finishes.

    A job that fails to prepare comes before the jobs of the batch it would have joined; the others in order
    within their batch. Specs are consumed lazily, so a caller may stream millions of jobs with flat memory.
    """
    for group in generate_batches(specs, bundle=bundle, backend=backend, settings=settings):
        yield from group


def generate_batches(specs: Iterable[JobSpec], *, bundle: Bundle, backend: Backend,
                     settings: RunSettings) -> Iterator[list[Outcome]]:
    """`generate_outcomes` one batch at a time: the outcomes of each inverted batch, after the failures to
    prepare met while it filled (a run of such failures is cut into lists of at most `settings.batch`).

    For a consumer that writes files: it can flush a whole batch to disk at once (`run_jobs`).
    """
    batch: list[Prepared] = []
    failed: list[Outcome] = []
    for spec in specs:
        try:
            batch.append(prepare(spec, bundle, settings, backend))
        except DefectgenError as e:
            failed.append(Outcome(spec, error=str(e)))
            if len(failed) < settings.batch:
                continue
            yield failed
            failed = []
            continue
        if len(batch) >= settings.batch:
            yield [*failed, *_finish(batch, bundle=bundle, backend=backend, settings=settings)]
            batch, failed = [], []
    if batch or failed:
        yield [*failed, *_finish(batch, bundle=bundle, backend=backend, settings=settings)]


def _finish(jobs: list[Prepared], *, bundle: Bundle, backend: Backend, settings: RunSettings) -> Iterator[Outcome]:
    """Invert one batch of prepared jobs and compose each one's output."""
    if not jobs:
        return
    try:
        result = invert_batch(backend, bundle, jobs, settings)
    except DefectgenError as e:
        for p in jobs:
            yield Outcome(p.spec, source=_source(p), error=str(e), seconds=p.seconds)
        return
    share = result.timings["total_s"] / len(jobs)
    for i, p in enumerate(jobs):
        t0 = time.perf_counter()
        fields = {"reference": p.reference, "final_terms": result.final_terms[i], "history": result.objective[:, i],
                  "steps_run": int(result.steps_run[i]), "window": p.window, "pixels": p.fmt.to_dict(),
                  "proposal": p.proposal}
        out = Outcome(p.spec, source=_source(p), fields=fields)
        if result.failed[i]:
            ran = int(np.isfinite(result.objective[:, i]).sum())
            out.error = (f"objective became non-finite (NaN/inf) at evaluation {ran} of {p.spec.source} "
                         f"(try a smaller --lr or other --lambda values)")
        else:
            try:
                out.image, out.mask = compose_output(p, result.image[i], result.mask_logit[i], settings,
                                                     bundle.resolution, patch_design=bundle.patch_design)
            except DefectgenError as e:
                out.error = str(e)
        out.seconds = p.seconds + share + time.perf_counter() - t0
        yield out


def _source(p: Prepared) -> np.ndarray:
    return p.image if p.native is None else p.native
