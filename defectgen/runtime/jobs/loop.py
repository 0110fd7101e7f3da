"""The job loop of `defectgen run`: skip finished jobs, run the rest through the job pipeline
(`pipeline.generate_batches`: prepare, batch, invert, compose), write each batch's results, flush them to disk
once, then append their log lines in one write (two flushes a batch instead of about three a job).

Error policy inside the loop: a `DefectgenError` raised by one job (bad image or mask, empty mask, NaN
objective, ...) fails that job only: it gets a `jobs.jsonl` line with status "failed" and its error, one line on
stderr, and the loop goes on; the caller exits non-zero at the end. A failure to write the output folder (disk
full, permissions changed) stops the run, since every later job would fail the same way; jobs already written
stay valid and a rerun resumes after them. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from defectgen.data.imageio import deferred_sync
from defectgen.errors import DataError, DefectgenError
from defectgen.runtime.backends.base import Backend
from defectgen.runtime.bundle.loader import Bundle
from defectgen.runtime.jobs.pipeline import Outcome, generate_batches
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
    """State of one run: the open folder, counters and the progress bar."""

    def __init__(self, *, folder: RunFolder, settings: RunSettings, backend: str, echo: Callable[[str], None],
                 base: Path | None) -> None:
        self.folder, self.settings, self.backend = folder, settings, backend
        self.width, self.echo, self.base = folder.width, echo, base
        self.summary = Summary()
        self.bar: tqdm | None = None

    def _tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(ok=self.summary.ok, failed=self.summary.failed, refresh=False)

    def fail(self, outcome: Outcome) -> None:
        """Count, report and tick a failed job whose line was appended."""
        spec = outcome.spec
        self.summary.failed += 1
        self.summary.first_error = self.summary.first_error or f"job {spec.name(self.width)}: {outcome.error}"
        self.echo(f"defectgen: job {spec.name(self.width)} ({spec.source or spec.image}) failed: {outcome.error}")
        self._tick()

    def write(self, outcomes: list[Outcome]) -> None:
        """Write one batch: every finished job's files, one flush of them to disk, then the batch's lines in
        one append (the resume rule needs the files first, on disk too: `run_folder`'s module docstring).
        """
        lines: list[tuple[Outcome, tuple[str, str] | None, float]] = []  # outcome, its files, write seconds
        try:
            with deferred_sync() as files:
                for outcome in outcomes:
                    lines.append(self._write_files(outcome))
        except OSError as e:
            msg = (f"cannot write outputs into {self.folder.out}: {e.strerror or e}; "
                   f"finished jobs are kept, rerun to resume")
            with contextlib.suppress(OSError):  # record the jobs whose files are whole, then stop
                files.sync()
                self._append(lines)
            raise DataError(msg) from None
        self._append(lines)

    def _write_files(self, outcome: Outcome) -> tuple[Outcome, tuple[str, str] | None, float]:
        if not outcome.ok:
            return outcome, None, 0.0
        t0 = time.perf_counter()
        try:
            outputs = self.folder.write_result(outcome.spec, outcome.image, outcome.mask, outcome.source)
        except DefectgenError as e:
            outcome.error = str(e)
            return outcome, None, time.perf_counter() - t0
        return outcome, outputs, time.perf_counter() - t0

    def _append(self, lines: list[tuple[Outcome, tuple[str, str] | None, float]]) -> None:
        self.folder.append(*(outcome.record(self.settings, backend=self.backend, outputs=outputs, base=self.base,
                                            extra_seconds=seconds) for outcome, outputs, seconds in lines))
        for outcome, _, _ in lines:
            if outcome.ok:
                self.summary.ok += 1
                self._tick()
            else:
                self.fail(outcome)


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
    loop = _Loop(folder=folder, settings=settings, backend=backend.name, echo=echo, base=base)
    t0 = time.perf_counter()
    with tqdm(total=total, unit="job", desc="defectgen run", disable=None if progress is None else not progress,
              dynamic_ncols=True, smoothing=0.1) as bar:
        loop.bar = bar
        if not bar.disable:
            loop.echo = lambda line: tqdm.write(line, file=sys.stderr)  # above the bar, not through it

        def pending() -> Iterator[JobSpec]:
            for spec in specs:
                loop.summary.total += 1
                if folder.is_done(spec, retry_failed=retry_failed):
                    loop.summary.skipped += 1
                    loop.summary.failed_before += folder.failed_before(spec)
                    bar.update(1)
                    continue
                yield spec

        for outcomes in generate_batches(pending(), bundle=bundle, backend=backend, settings=settings):
            loop.write(outcomes)
    loop.summary.seconds = time.perf_counter() - t0
    return loop.summary
