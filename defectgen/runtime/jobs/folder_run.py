"""A run into an output folder: the job source, the request validated up front, and the shard's jobs through
the job loop into the folder (`run_request`). `defectgen run` and `defectgen demo` reach it through the Python
API (`defectgen.api.Generator.run`); the fatal-versus-per-job error rule is `defectgen.runtime.commands.run`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectgen import __version__
from defectgen.data.imageio import deferred_sync
from defectgen.errors import JobError
from defectgen.runtime.backends import Backend, load_backend, resolve_backend_name
from defectgen.runtime.bundle import MANIFEST_NAME, Bundle
from defectgen.runtime.jobs.loop import Summary, run_jobs
from defectgen.runtime.jobs.review import write_review_page
from defectgen.runtime.jobs.run_folder import RunFolder
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
    scan_jobs,
    with_variants,
)


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
                 settings: RunSettings | None = None, batch_given: bool | None = None, **options: Any) -> RunRequest:
    """Resolve options against the bundle (`resolve_settings`, unless `settings` are given already resolved) and
    scan the job source once (paths only): every fatal check happens here, before anything is written.
    """
    if variants < 1:
        msg = f"--variants must be >= 1, got {variants}"
        raise JobError(msg)
    if settings is None:
        settings = resolve_settings(bundle, **options)
    types_ = check_types(types, bundle.defect_types)
    jobset = scan_jobs(with_variants(source.jobs(types_, seed), variants))
    given = options.get("batch") is not None if batch_given is None else batch_given
    return RunRequest(bundle=bundle, settings=settings, types=types_, source=source, seed=seed, jobset=jobset,
                      variants=variants, batch_given=given)


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
                info: dict[str, Any] | None = None, threads: int | None = None,
                engine: Backend | None = None) -> Summary:
    """Open (and lock) the output folder and run the request's jobs of one shard; write the contact sheet and the
    review page.

    Args:
        engine: an engine already loaded for the bundle (the API's; left open), else one is loaded for the run
            (`backend`, `threads`) and closed after it.

    Raises:
        DefectgenError: fatal problems (backend unavailable, output folder unusable or in use, bad thread count).
    """
    name = resolve_backend_name(backend) if engine is None else engine.name
    echo = echo or (lambda line: print(line, file=sys.stderr))
    total = sum(1 for i in range(request.jobset.count) if in_shard(i, shard))
    if not request.batch_given:
        batches = request.bundle.step_batches(request.settings.inversion.space)
        request = dataclasses.replace(request, settings=dataclasses.replace(request.settings,
                                                                            batch=pick_batch(batches, total)))
    own = engine is None
    engine = engine or load_backend(request.bundle, name, **check_threads(threads, name))
    folder: RunFolder | None = None
    try:
        folder = RunFolder.open(out, request.identity(),
                                {"defectgen": __version__, "bundle": str(request.bundle.source), "backend": name,
                                 "shard": f"{shard[0]}/{shard[1]}", "batch": request.settings.batch, **(info or {})},
                                width=name_width(request.jobset.count), shard=shard, echo=echo)
        summary = run_jobs((s for s in request.jobs() if in_shard(s.index, shard)), total=total, folder=folder,
                           bundle=request.bundle, backend=engine, settings=request.settings,
                           retry_failed=retry_failed, echo=echo, progress=progress, base=request.source.base)
        with deferred_sync():  # one flush to disk for the sheet, the page and its outline PNGs
            folder.write_contact_sheet(types=request.types)
            write_review_page(out, request.types)
    finally:
        if own:
            engine.close()
        if folder is not None:
            folder.close()  # releases the output folder's lock
    return summary
