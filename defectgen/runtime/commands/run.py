"""`defectgen run` and `defectgen demo`: parse and validate the options, then run through the Python API
(`defectgen.api.Generator.run`), which hands the jobs to the job loop.

Fatal versus per-job errors (the rule: anything that can be checked from options and paths is checked before
the first job runs and is fatal; anything that needs a job's pixels or the model is that job's failure):

- **fatal, up front, exit 2, nothing written:** conflicting or missing sources; bad `--shard`, `--lambda`,
  `--mask-mode`, `--init`, `--steps`, `--lr`; unknown `--space`, `--batch`, `--types` or backend; a missing,
  tampered or mismatched bundle; a source folder that is missing or empty, an image without a mask in `--masks`;
  any bad JSONL line (malformed, unknown field/type, missing file: named `file:line`);
  an output folder that cannot be created or written, is not a run folder, or holds a run made with other
  options.
- **per job, recorded in `jobs.jsonl`, the run goes on, exit 1 at the end:** unreadable or corrupt image or
  mask, mask size mismatch, empty mask (or one that vanishes at model resolution), a NaN/inf objective.
- **fatal mid-run, exit 2:** the output folder stops being writable (finished jobs stay valid; rerun resumes).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from defectgen import EXAMPLES_DIR
from defectgen.api import Generator
from defectgen.errors import DataError, JobError, NotYetAvailable
from defectgen.runtime.backends import resolve_backend_name
from defectgen.runtime.bundle import MANIFEST_NAME, Bundle, default_bundle_path
from defectgen.runtime.jobs.folder_run import Source, check_source, check_threads
from defectgen.runtime.jobs.loop import Summary
from defectgen.runtime.jobs.run_folder import JOBS_FILE
from defectgen.runtime.jobs.settings import resolve_settings
from defectgen.runtime.jobs.sources import parse_shard

EXAMPLES = EXAMPLES_DIR


def parse_lambdas(items: Sequence[str]) -> dict[str, float]:
    """`["def=0.5", "prior=0"]` -> `{"def": 0.5, "prior": 0.0}` (names are checked against the bundle later).

    Raises:
        JobError: an item that is not `name=number`.
    """
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            msg = f"--lambda {item!r} is not name=value (e.g. --lambda def=0.5)"
            raise JobError(msg) from None
    return out


def _report(summary: Summary, out: Path) -> int:
    rate = summary.ok / summary.seconds if summary.seconds > 0 else 0.0
    sheet = out / "contact_sheet.png"
    print(f"defectgen: {summary.ok} generated, {summary.skipped} already done, {summary.failed} failed "
          f"of {summary.total} jobs in {summary.seconds:.1f} s ({rate:.2f} jobs/s) -> {out}"
          + (f" (contact sheet: {sheet})" if sheet.is_file() else ""))
    print(f"  review page: {out / 'index.html'}")
    if not summary.any_failed:
        return 0
    parts = [f"{summary.failed} job(s) failed in this run"] if summary.failed else []
    if summary.failed_before:
        parts.append(f"{summary.failed_before} failed earlier (rerun with --retry-failed after fixing the inputs)")
    first = f"; first: {summary.first_error}" if summary.first_error else ""
    print(f"defectgen: error: {', '.join(parts)}{first}; details in {out / JOBS_FILE}", file=sys.stderr)
    return 1


def run_cli(*, out: Path, bundle: Path | None, images: Path | None, mvtec: Path | None, jobs: Path | None,
            masks: Path | None, random_masks: int | None, types: Sequence[str] | None, space: str | None,
            steps: int | None, lr: float | None, lambdas: Sequence[str], init: str | None, backend: str,
            shard: str | None, seed: int, batch: int | None = None, mask_mode: str | None = None,
            retry_failed: bool = False, progress: bool | None = None, detail: bool | None = None,
            guide_weight: float | None = None, threads: int | None = None, mask_shape: str | None = None,
            scale: str | float | None = None, variants: int = 1, proposals: int | None = None,
            min_change: float | None = None, detail_from: str | None = None) -> int:
    """`defectgen run`: validate everything cheap, then generate; see the module docstring for the error rule.

    Returns:
        Exit code: 0 all jobs ok, 1 some jobs failed (recorded in `OUT/jobs.jsonl`).

    Raises:
        DefectgenError: a fatal problem (bad option, bundle or input list; unusable output folder); the CLI
            prints it as one line and exits 2.
    """
    source = check_source(images=images, mvtec=mvtec, jobs=jobs, masks=masks, random_masks=random_masks)
    shard_kn = parse_shard(shard)
    check_threads(threads, resolve_backend_name(backend))  # bad backend/threads fail before any scanning
    with Generator.load(bundle, backend=backend, threads=threads, space=space, steps=steps, lr=lr,
                        lambdas=parse_lambdas(lambdas), init=init, mask_mode=mask_mode, batch=batch, detail=detail,
                        guide_weight=guide_weight, mask_shape=mask_shape, scale=scale, proposals=proposals,
                        min_change=min_change, detail_from=detail_from) as gen:
        info = {"input": str(source.path), "masks_dir": str(masks) if masks else None}
        summary = gen.run(out, source=source, types=types, seed=seed, variants=variants, shard=shard_kn,
                          retry_failed=retry_failed, progress=progress, info=info)
    return _report(summary, out)


def demo_bundle(path: Path | None) -> Bundle:
    """The bundle the demo runs: `path`, else the embedded default (saying clearly when it is not shipped).

    Raises:
        NotYetAvailable: no `--bundle` and no default bundle in this install.
    """
    if path is None and not (default_bundle_path() / MANIFEST_NAME).is_file():
        msg = (f"the embedded default bundle is not shipped yet (no {default_bundle_path() / MANIFEST_NAME}); "
               f"run the demo on an exported bundle with `defectgen demo --bundle BUNDLE`")
        raise NotYetAvailable(msg)
    return Bundle.load(path)


def demo_cli(*, out: Path, seed: int = 0, bundle: Path | None = None, backend: str = "auto",
             progress: bool | None = None) -> Path:
    """`defectgen demo`: every defect type on each shipped example part, random masks, bundle defaults.

    Returns:
        The contact sheet's path.

    Raises:
        NotYetAvailable: the default bundle is not shipped (and no `bundle` given).
        DefectgenError: as `defectgen run` (e.g. `out` holds a demo made with another seed).
    """
    t0 = time.perf_counter()
    b = demo_bundle(bundle)
    source = Source("examples", EXAMPLES)
    if not any(EXAMPLES.glob("*.png")):
        msg = f"no example images in {EXAMPLES} (broken install?)"
        raise DataError(msg)
    with Generator(b, resolve_settings(b), backend=backend) as gen:
        summary = gen.run(out, source=source, seed=seed, progress=progress)
    sheet = out / "contact_sheet.png"
    n_img = len(list(EXAMPLES.glob("*.png")))
    print(f"demo: {len(gen.types)} defect types x {n_img} example parts ({summary.ok} generated, "
          f"{summary.skipped} already there) in {time.perf_counter() - t0:.1f} s with {b.source}\n"
          f"  images: {out / 'test'}\n  masks:  {out / 'ground_truth'}\n  contact sheet: {sheet}\n"
          f"  review page: {out / 'index.html'}")
    if summary.any_failed:
        msg = f"demo: {summary.failed + summary.failed_before} job(s) failed; first: {summary.first_error}"
        raise JobError(msg)
    return sheet
