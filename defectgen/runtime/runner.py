"""The job loop of `defectgen run`: skip finished jobs, prepare, batch, invert, write, log; then a contact sheet.

Error policy inside the loop: a `DefectgenError` raised by one job (bad image or mask, empty mask, NaN
objective, ...) fails that job only: it gets a `jobs.jsonl` line with status "failed" and its error, one line on
stderr, and the loop goes on; the caller exits non-zero at the end. A failure to write the output folder (disk
full, permissions changed) stops the run, since every later job would fail the same way; jobs already written
stay valid and a rerun resumes after them. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import heapq
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from defectgen.data.contact import contact_sheet
from defectgen.data.imageio import read_image, read_mask
from defectgen.errors import DataError, DefectgenError
from defectgen.runtime.backend import Backend
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.jobs import JobSpec
from defectgen.runtime.pipeline import Prepared, RunSettings, finish, invert_batch, prepare, record
from defectgen.runtime.runlog import JOBS_FILE, Done, JobLog, is_done

CONTACT_SHEET = "contact_sheet.png"


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

    def __init__(self, *, out: Path, bundle: Bundle, backend: Backend, settings: RunSettings, width: int,
                 log: JobLog, echo: Callable[[str], None], base: Path | None) -> None:
        self.out, self.bundle, self.backend, self.settings = out, bundle, backend, settings
        self.width, self.log, self.echo, self.base = width, log, echo, base
        self.summary = Summary()
        self.batch: list[Prepared] = []
        self.bar: tqdm | None = None

    def fail(self, spec: JobSpec, error: str, seconds: float = 0.0, **fields: object) -> None:
        self.log.append(record(spec, self.settings, status="failed", error=error, seconds=seconds,
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
            self.batch.append(prepare(spec, self.bundle, self.settings))
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
                      "steps_run": int(result.steps_run[i])}
            if result.failed[i]:
                ran = int(np.isfinite(objective[:, i]).sum())
                self.fail(p.spec, f"objective became non-finite (NaN/inf) at evaluation {ran} of {p.spec.source} "
                                  f"(try a smaller --lr or other --lambda values)", p.seconds + share, **fields)
                continue
            try:
                outputs = finish(p, result.image[i], result.mask_logit[i], self.out, self.settings, self.width,
                                 self.bundle.resolution)
            except OSError as e:
                msg = (f"cannot write outputs into {self.out}: {e.strerror or e}; "
                       f"finished jobs are kept, rerun to resume")
                raise DataError(msg) from None
            except DefectgenError as e:
                self.fail(p.spec, str(e), p.seconds + share, **fields)
                continue
            seconds = p.seconds + share + time.perf_counter() - t0
            self.log.append(record(p.spec, self.settings, status="ok", outputs=outputs, seconds=seconds,
                                   backend=self.backend.name, base=self.base, **fields))  # type: ignore[arg-type]
            self.summary.ok += 1
            self._tick()


def run_jobs(specs: Iterable[JobSpec], *, total: int, out: Path, bundle: Bundle, backend: Backend,
             settings: RunSettings, width: int, done: dict[str, Done], retry_failed: bool = False,
             echo: Callable[[str], None] = print, progress: bool | None = None, base: Path | None = None) -> Summary:
    """Run every job of `specs` that is not finished yet, appending one `jobs.jsonl` line per job.

    Args:
        specs: the jobs of this shard, in index order (streamed).
        total: how many `specs` yields (for the progress bar).
        out: output folder (already opened with `runlog.open_run`).
        bundle: the loaded bundle.
        backend: the engine.
        settings: resolved run options.
        width: digits of the output names.
        done: recorded jobs by id (`JobLog.read()`), for the resume rule.
        retry_failed: rerun jobs recorded as failed.
        echo: where one-line failure messages go.
        progress: show a tqdm bar (None: only on a terminal).
        base: folder that mask paths in the log are written relative to.

    Returns:
        The summary (counts, time, first error).

    Raises:
        DataError: the output folder cannot be written (the run stops; a rerun resumes).
    """
    loop = _Loop(out=out, bundle=bundle, backend=backend, settings=settings, width=width,
                 log=JobLog(out / JOBS_FILE), echo=echo, base=base)
    t0 = time.perf_counter()
    with tqdm(total=total, unit="job", desc="defectgen run", disable=None if progress is None else not progress,
              dynamic_ncols=True, smoothing=0.1) as bar:
        loop.bar = bar
        if not bar.disable:
            loop.echo = lambda line: tqdm.write(line, file=sys.stderr)  # above the bar, not through it
        for spec in specs:
            loop.summary.total += 1
            d = done.get(spec.id)
            if is_done(d, out, retry_failed=retry_failed):
                loop.summary.skipped += 1
                loop.summary.failed_before += d is not None and d.status == "failed"
                bar.update(1)
                continue
            loop.add(spec)
        loop.flush()
    loop.summary.seconds = time.perf_counter() - t0
    return loop.summary


def write_contact_sheet(out: Path, *, per_type: int = 8, types: Iterable[str] | None = None) -> Path | None:
    """`OUT/contact_sheet.png`: one row per defect type, its `per_type` lowest-index finished jobs.

    Reads `jobs.jsonl` line by line (memory bounded by `per_type` per type) and the chosen PNGs.

    Returns:
        The sheet's path, or None when no job has finished ok.
    """
    best: dict[str, list[tuple[int, str, str]]] = {}
    path = out / JOBS_FILE
    if path.is_file():
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    if rec["status"] != "ok":
                        continue
                    item = (-int(rec["index"]), rec["outputs"]["image"], rec["outputs"]["mask"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
                heap = best.setdefault(rec["type"], [])
                if item in heap:
                    continue
                (heapq.heappush if len(heap) < per_type else heapq.heappushpop)(heap, item)
    order = list(types) if types is not None else sorted(best)
    rows = []
    for t in order:
        cells = []
        for _, img, msk in sorted(best.get(t, []), reverse=True):
            image = read_image(out / img)
            cells.append((image, read_mask(out / msk, image.shape[:2]), f"{t} {Path(img).stem}"))
        if cells:
            rows.append(cells)
    if not rows:
        return None
    return contact_sheet(rows, out / CONTACT_SHEET)
