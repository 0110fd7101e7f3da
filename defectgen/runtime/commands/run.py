"""`defectgen run` and `defectgen demo`: resolve and validate options, then hand the jobs to the job loop.

Fatal versus per-job errors (the rule: anything that can be checked from options and paths is checked before
the first job runs and is fatal; anything that needs a job's pixels or the model is that job's failure):

- **fatal, up front, exit 2, nothing written:** conflicting or missing sources; bad `--shard`, `--lambda`,
  `--mask-mode`, `--init`, `--steps`, `--lr`; unknown `--space`, `--batch`, `--types` or backend; a missing,
  tampered or mismatched bundle; a source folder that is missing or empty, an image without a mask in `--masks`;
  any bad JSONL line (malformed, unknown field/type, path escaping its folder, missing file: named `file:line`);
  an output folder that cannot be created or written, is not a run folder, or holds a run made with other
  options.
- **per job, recorded in `jobs.jsonl`, the run goes on, exit 1 at the end:** unreadable or corrupt image or
  mask, mask size mismatch, empty mask (or one that vanishes at model resolution), a NaN/inf objective.
- **fatal mid-run, exit 2:** the output folder stops being writable (finished jobs stay valid; rerun resumes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectgen import EXAMPLES_DIR, __version__
from defectgen.errors import DataError, JobError, NotYetAvailable
from defectgen.runtime.backends import load_backend, resolve_backend_name
from defectgen.runtime.bundle import MANIFEST_NAME, Bundle, default_bundle_path
from defectgen.runtime.jobs.loop import Summary, run_jobs
from defectgen.runtime.jobs.review import write_review_page
from defectgen.runtime.jobs.run_folder import JOBS_FILE, RunFolder
from defectgen.runtime.jobs.settings import RunSettings, pick_batch, resolve_settings
from defectgen.runtime.jobs.sources import (
    JobSet,
    JobSpec,
    check_types,
    folder_jobs,
    image_jobs,
    in_shard,
    jsonl_jobs,
    mvtec_jobs,
    name_width,
    parse_shard,
    scan_jobs,
    with_variants,
)

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


@dataclass(frozen=True)
class Source:
    """Where the jobs come from: exactly one of a folder, an MVTec category or a JSONL list."""

    kind: str  # "images", "mvtec", "jobs" or "examples"
    path: Path
    masks: Path | None = None
    random_masks: int | None = None

    def jobs(self, types: Sequence[str], seed: int) -> Iterator[JobSpec]:
        """A fresh iterator over the jobs (paths only; call again for another pass)."""
        if self.kind == "images":
            return folder_jobs(self.path, masks=self.masks, random_masks=self.random_masks, types=types,
                               run_seed=seed)
        if self.kind == "mvtec":
            return mvtec_jobs(self.path, random_masks=self.random_masks or 1, types=types, run_seed=seed)
        if self.kind == "examples":
            files = sorted(self.path.glob("*.png"))
            return image_jobs([(p, p.name) for p in files], None, len(types), types, seed)
        return jsonl_jobs(self.path, types=types, run_seed=seed)

    @property
    def mask_rule(self) -> str:
        """How target masks are chosen, for `run.json`: "folder", "random xN", ... or "per line"."""
        if self.kind == "jobs":
            return "per line"
        if self.masks is not None:
            return "folder"
        return "random, one per type" if self.kind == "examples" else f"random x{self.random_masks}"

    @property
    def base(self) -> Path:
        """Folder that mask paths in `jobs.jsonl` are written relative to."""
        return self.path.parent if self.kind == "jobs" else (self.masks or self.path)


def check_source(*, images: Path | None, mvtec: Path | None, jobs: Path | None, masks: Path | None,
                 random_masks: int | None) -> Source:
    """Validate the input options: exactly one source, and a mask rule that fits it.

    Raises:
        JobError: no or several sources, `--masks` and `--random-masks` together, or a mask rule that does not fit.
    """
    given = {k: v for k, v in (("--images", images), ("--mvtec", mvtec), ("--jobs", jobs)) if v is not None}
    if len(given) != 1:
        msg = (f"give exactly one input: --images DIR, --mvtec ROOT or --jobs FILE.jsonl "
               f"(got {', '.join(given) or 'none'})")
        raise JobError(msg)
    if random_masks is not None and random_masks < 1:
        msg = f"--random-masks must be >= 1, got {random_masks}"
        raise JobError(msg)
    if masks is not None and random_masks is not None:
        msg = "--masks and --random-masks exclude each other: give target masks or draw random ones"
        raise JobError(msg)
    if images is not None:
        if masks is None and random_masks is None:
            msg = "--images needs --masks DIR (target masks, same stems) or --random-masks N"
            raise JobError(msg)
        return Source("images", images, masks, random_masks)
    if masks is not None:
        msg = "--masks works with --images only (--jobs lists masks per line; --mvtec takes --random-masks N)"
        raise JobError(msg)
    if mvtec is not None:
        return Source("mvtec", mvtec, None, random_masks or 1)
    if random_masks is not None:
        msg = "--random-masks does not apply to --jobs (a line with \"mask\": null gets one random mask)"
        raise JobError(msg)
    return Source("jobs", given["--jobs"])


@dataclass
class RunRequest:
    """Everything a run needs, validated: the bundle, options, the job source and the output identity."""

    bundle: Bundle
    settings: RunSettings
    types: list[str]
    source: Source
    seed: int
    jobset: JobSet
    variants: int = 1
    batch_given: bool = False  # --batch; else `run_request` picks the smallest batch that holds the shard's jobs

    def jobs(self) -> Iterator[JobSpec]:
        return with_variants(self.source.jobs(self.types, self.seed), self.variants)

    def identity(self) -> dict[str, Any]:
        """Options that decide the results: a resumed run must match them exactly (`run.json`)."""
        manifest = (self.bundle.root / MANIFEST_NAME).read_bytes()
        return {"source": self.source.kind, "jobs": {"count": self.jobset.count,
                                                     "fingerprint": self.jobset.fingerprint},
                "masks": self.source.mask_rule,
                "bundle_sha256": hashlib.sha256(manifest).hexdigest(), "types": self.types, "seed": self.seed,
                **({"variants": self.variants} if self.variants > 1 else {}), **self.settings.identity()}


def make_request(*, bundle: Bundle, source: Source, types: Sequence[str] | None, seed: int, variants: int = 1,
                 **options: Any) -> RunRequest:
    """Resolve options against the bundle (`resolve_settings`) and scan the job source once (paths only): every
    fatal check happens here, before anything is written.
    """
    if variants < 1:
        msg = f"--variants must be >= 1, got {variants}"
        raise JobError(msg)
    settings = resolve_settings(bundle, **options)
    types_ = check_types(types, bundle.defect_types)
    jobset = scan_jobs(with_variants(source.jobs(types_, seed), variants))

    return RunRequest(bundle=bundle, settings=settings, types=types_, source=source, seed=seed, jobset=jobset,
                      variants=variants, batch_given=options.get("batch") is not None)


def check_threads(threads: int | None, backend: str) -> dict[str, int]:
    """`load_backend` options for `--threads` (ONNX Runtime's intra-op threads).

    Raises:
        JobError: fewer than 1 thread, or a backend that has no CPU thread pool to size.
    """
    if threads is None:
        return {}
    if threads < 1:
        msg = f"--threads must be >= 1, got {threads}"
        raise JobError(msg)
    if not backend.startswith("ort-"):
        msg = f"--threads sizes ONNX Runtime's CPU thread pool (ort-* backends); backend {backend!r} has none"
        raise JobError(msg)
    return {"threads": threads}


def run_request(request: RunRequest, *, out: Path, backend: str, shard: tuple[int, int] = (0, 1),
                retry_failed: bool = False, progress: bool | None = None, echo: Callable[[str], None] | None = None,
                info: dict[str, Any] | None = None, threads: int | None = None) -> Summary:
    """Open the output folder and run the request's jobs of one shard; write the contact sheet.

    Raises:
        DefectgenError: fatal problems (backend unavailable, output folder unusable, bad thread count).
    """
    name = resolve_backend_name(backend)
    echo = echo or (lambda line: print(line, file=sys.stderr))
    total = sum(1 for i in range(request.jobset.count) if in_shard(i, shard))
    if not request.batch_given:
        batches = request.bundle.step_batches(request.settings.inversion.space)
        request = dataclasses.replace(request, settings=dataclasses.replace(request.settings,
                                                                            batch=pick_batch(batches, total)))
    engine = load_backend(request.bundle, name, **check_threads(threads, name))
    try:
        folder = RunFolder.open(out, request.identity(),
                                {"defectgen": __version__, "bundle": str(request.bundle.source), "backend": name,
                                 "shard": f"{shard[0]}/{shard[1]}", "batch": request.settings.batch, **(info or {})},
                                width=name_width(request.jobset.count))
        summary = run_jobs((s for s in request.jobs() if in_shard(s.index, shard)), total=total, folder=folder,
                           bundle=request.bundle, backend=engine, settings=request.settings,
                           retry_failed=retry_failed, echo=echo, progress=progress, base=request.source.base)
    finally:
        engine.close()
    folder.write_contact_sheet(types=request.types)
    write_review_page(out, request.types)
    return summary


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
            scale: float | None = None, variants: int = 1, proposals: int | None = None,
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
    request = make_request(bundle=Bundle.load(bundle), source=source, types=types, seed=seed, variants=variants,
                           space=space, steps=steps, lr=lr, lambdas=parse_lambdas(lambdas), init=init,
                           mask_mode=mask_mode, batch=batch, detail=detail, guide_weight=guide_weight,
                           mask_shape=mask_shape, scale=scale, proposals=proposals, min_change=min_change,
                           detail_from=detail_from)
    info = {"input": str(source.path), "masks_dir": str(masks) if masks else None}
    summary = run_request(request, out=out, backend=backend, shard=shard_kn, retry_failed=retry_failed,
                          progress=progress, info=info, threads=threads)
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
    request = make_request(bundle=b, source=source, types=None, seed=seed)
    summary = run_request(request, out=out, backend=backend, progress=progress)
    sheet = out / "contact_sheet.png"
    n_img = len(list(EXAMPLES.glob("*.png")))
    print(f"demo: {len(request.types)} defect types x {n_img} example parts ({summary.ok} generated, "
          f"{summary.skipped} already there) in {time.perf_counter() - t0:.1f} s with {request.bundle.source}\n"
          f"  images: {out / 'test'}\n  masks:  {out / 'ground_truth'}\n  contact sheet: {sheet}\n"
          f"  review page: {out / 'index.html'}")
    if summary.any_failed:
        msg = f"demo: {summary.failed + summary.failed_before} job(s) failed; first: {summary.first_error}"
        raise JobError(msg)
    return sheet
