"""The job loop of `defectgen run`: skip finished jobs, prepare, batch, invert, compose, write, log.

Error policy inside the loop: a `DefectgenError` raised by one job (bad image or mask, empty mask, NaN
objective, ...) fails that job only: it gets a `jobs.jsonl` line with status "failed" and its error, one line on
stderr, and the loop goes on; the caller exits non-zero at the end. A failure to write the output folder (disk
full, permissions changed) stops the run, since every later job would fail the same way; jobs already written
stay valid and a rerun resumes after them. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from defectgen.errors import DataError, DefectgenError
from defectgen.runtime.backends.base import Backend
from defectgen.runtime.bundle.loader import Bundle
from defectgen.runtime.jobs.output import compose_output
from defectgen.runtime.jobs.prepare import Prepared, invert_batch, prepare
from defectgen.runtime.jobs.record import JobRecord
from defectgen.runtime.jobs.run_folder import RunFolder
from defectgen.runtime.jobs.settings import RunSettings
from defectgen.runtime.jobs.sources import JobSpec


@dataclass
class Summary:
    """What one `run_jobs` call did, for the final message and the exit code."""

    total: int = 0  # jobs of this shard
    skipped: int = 0  # already finished before this run (ok or failed)
    ok: int = 0  # finished ok in this run
    failed: int = 0  # failed in this run
    failed_before: int = 0  # recorded as failed by an earlier run and skipped
    seconds: float = 0.0
    first_error: str | None = None

    @property
    def any_failed(self) -> bool:
        return bool(self.failed or self.failed_before)


class _Loop:
    """State of one run: the open log, the current batch, counters and the progress bar."""

    def __init__(self, *, folder: RunFolder, bundle: Bundle, backend: Backend, settings: RunSettings,
                 echo: Callable[[str], None], base: Path | None) -> None:
        self.folder, self.bundle, self.backend, self.settings = folder, bundle, backend, settings
        self.width, self.echo, self.base = folder.width, echo, base
        self.summary = Summary()
        self.batch: list[Prepared] = []
        self.bar: tqdm | None = None

    def fail(self, spec: JobSpec, error: str, seconds: float = 0.0, **fields: object) -> None:
        self.folder.append(JobRecord.of(spec, self.settings, status="failed", error=error, seconds=seconds,
                                        backend=self.backend.name, base=self.base, **fields))  # type: ignore[arg-type]
        self.summary.failed += 1
        self.summary.first_error = self.summary.first_error or f"job {spec.name(self.width)}: {error}"
        self.echo(f"defectgen: job {spec.name(self.width)} ({spec.source or spec.image}) failed: {error}")
        self._tick()

    def _tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(ok=self.summary.ok, failed=self.summary.failed, refresh=False)

    def add(self, spec: JobSpec) -> None:
        try:
            self.batch.append(prepare(spec, self.bundle, self.settings, self.backend))
        except DefectgenError as e:
            self.fail(spec, str(e))
            return
        if len(self.batch) >= self.settings.batch:
            self.flush()

    def flush(self) -> None:
        jobs, self.batch = self.batch, []
        if not jobs:
            return
        try:
            result = invert_batch(self.backend, self.bundle, jobs, self.settings)
        except DefectgenError as e:
            for p in jobs:
                self.fail(p.spec, str(e), p.seconds)
            return
        share = result.timings["total_s"] / len(jobs)
        objective = result.objective
        for i, p in enumerate(jobs):
            t0 = time.perf_counter()
            fields = {"reference": p.reference, "final_terms": result.final_terms[i], "history": objective[:, i],
                      "steps_run": int(result.steps_run[i]), "window": p.window, "pixels": p.fmt.to_dict(),
                      "proposal": p.proposal}
            if result.failed[i]:
                ran = int(np.isfinite(objective[:, i]).sum())
                self.fail(p.spec, f"objective became non-finite (NaN/inf) at evaluation {ran} of {p.spec.source} "
                                  f"(try a smaller --lr or other --lambda values)", p.seconds + share, **fields)
                continue
            try:
                image, mask = compose_output(p, result.image[i], result.mask_logit[i], self.settings,
                                             self.bundle.resolution, patch_design=self.bundle.patch_design)
                outputs = self.folder.write_result(p.spec, image, mask, p.image if p.native is None else p.native)
            except OSError as e:
                msg = (f"cannot write outputs into {self.folder.out}: {e.strerror or e}; "
                       f"finished jobs are kept, rerun to resume")
                raise DataError(msg) from None
            except DefectgenError as e:
                self.fail(p.spec, str(e), p.seconds + share, **fields)
                continue
            seconds = p.seconds + share + time.perf_counter() - t0
            self.folder.append(JobRecord.of(p.spec, self.settings, status="ok", outputs=outputs, seconds=seconds,
                                            backend=self.backend.name, base=self.base, **fields))  # type: ignore[arg-type]
            self.summary.ok += 1
            self._tick()


def run_jobs(specs: Iterable[JobSpec], *, total: int, folder: RunFolder, bundle: Bundle, backend: Backend,
             settings: RunSettings, retry_failed: bool = False, echo: Callable[[str], None] = print,
             progress: bool | None = None, base: Path | None = None) -> Summary:
    """Run every job of `specs` that is not finished yet, appending one `jobs.jsonl` line per job.

    Args:
        specs: the jobs of this shard, in index order (streamed).
        total: how many `specs` yields (for the progress bar).
        folder: the opened output folder (`RunFolder.open`): resume state, log, output names.
        bundle: the loaded bundle.
        backend: the engine.
        settings: resolved run options.
        retry_failed: rerun jobs recorded as failed.
        echo: where one-line failure messages go.
        progress: show a tqdm bar (None: only on a terminal).
        base: folder that mask paths in the log are written relative to.

    Returns:
        The summary (counts, time, first error).

    Raises:
        DataError: the output folder cannot be written (the run stops; a rerun resumes).
    """
    loop = _Loop(folder=folder, bundle=bundle, backend=backend, settings=settings, echo=echo, base=base)
    t0 = time.perf_counter()
    with tqdm(total=total, unit="job", desc="defectgen run", disable=None if progress is None else not progress,
              dynamic_ncols=True, smoothing=0.1) as bar:
        loop.bar = bar
        if not bar.disable:
            loop.echo = lambda line: tqdm.write(line, file=sys.stderr)  # above the bar, not through it
        for spec in specs:
            loop.summary.total += 1
            if folder.is_done(spec, retry_failed=retry_failed):
                loop.summary.skipped += 1
                loop.summary.failed_before += folder.failed_before(spec)
                bar.update(1)
                continue
            loop.add(spec)
        loop.flush()
    loop.summary.seconds = time.perf_counter() - t0
    return loop.summary
