"""The Python API: load a bundle once, then make defects on numpy images in memory, or run a job list into an
output folder exactly as `defectgen run` does (the command is a thin layer over `Generator.run`).

    from defectgen.api import Generator

    with Generator.load() as gen:                      # the embedded default bundle
        for d in gen.generate(images, types="crack", channel_order="bgr", seed=0):
            cv2.imwrite(f"{d.index}.png", d.image)     # same shape, dtype and channel order as the input

Nothing here imports torch: it runs on the edge install. The full reference is `docs/api.md`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.data.imageio import array_in_order, mask_from_array, native_from_array
from defectgen.errors import DataError, JobError
from defectgen.runtime.backends import Backend, load_backend, resolve_backend_name
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.jobs.folder_run import Source, check_source, check_threads, make_request, run_request
from defectgen.runtime.jobs.loop import Summary
from defectgen.runtime.jobs.pipeline import Outcome, generate_outcomes
from defectgen.runtime.jobs.settings import RunSettings, pick_batch, resolve_settings
from defectgen.runtime.jobs.sources import (
    InMemory,
    JobSpec,
    check_types,
    job_identity,
    parse_shard,
    with_variants,
)

ImageLike = np.ndarray
MaskLike = np.ndarray | None


@dataclass
class Defect:
    """One generated defect.

    Attributes:
        index: which of the input images it was made on (position in `images`).
        image: the defective image, with the input's shape, dtype and channel order (None when the job failed).
        mask: its label, uint8 HxW with 1 on defect pixels (None when the job failed).
        record: the job's record, the same fields as a `jobs.jsonl` line of `defectgen run` (type, seed,
            window with its scale, final loss terms, the critic's score of G's proposal, status, error, ...).
    """

    index: int
    image: np.ndarray | None
    mask: np.ndarray | None
    record: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.image is not None

    @property
    def error(self) -> str | None:
        return self.record.get("error")

    @property
    def type(self) -> str:
        return str(self.record["type"])


class Generator:
    """A loaded bundle, its run settings and an inference engine: make one, then call it as often as needed.

    Build it with `Generator.load`. It is not thread-safe; use one per thread (or process).
    """

    def __init__(self, bundle: Bundle, settings: RunSettings, *, backend: str = "auto", threads: int | None = None,
                 batch_given: bool = False) -> None:
        self.bundle, self.settings = bundle, settings
        self.backend_name = resolve_backend_name(backend)
        self.threads, self.batch_given = threads, batch_given
        self._engine: Backend | None = None

    @classmethod
    def load(cls, bundle: str | Path | None = None, *, backend: str = "auto", threads: int | None = None,
             **options: Any) -> Generator:
        """Load a bundle (None: the embedded default) and resolve run options against it.

        Args:
            bundle: bundle folder or .zip; None for the default bundle shipped inside the package.
            backend: "auto" (the best available), "ort-cpu", "ort-cuda", "ort-trt" or "tensorrt".
            threads: ONNX Runtime's intra-op threads (None: its default).
            **options: run options, named as `defectgen run`'s flags (None or absent: the bundle's default):
                `steps`, `lr`, `space`, `init`, `lambdas` (dict), `mask_mode`, `mask_shape`, `guide_weight`,
                `detail`, `detail_from`, `scale`, `proposals`, `min_change`, `batch`.

        Raises:
            BundleError: a missing or tampered bundle, or an option it cannot serve (space, batch, λ name).
            JobError: a bad option value.
        """
        name = resolve_backend_name(backend)
        check_threads(threads, name)
        b = Bundle.load(Path(bundle) if bundle is not None else None)
        settings = resolve_settings(b, **options)
        return cls(b, settings, backend=name, threads=threads, batch_given=options.get("batch") is not None)

    @property
    def types(self) -> list[str]:
        """The defect types this bundle draws."""
        return check_types(None, self.bundle.defect_types)

    @property
    def engine(self) -> Backend:
        """The inference engine, created on first use (sessions are built lazily too)."""
        if self._engine is None:
            self._engine = load_backend(self.bundle, self.backend_name,
                                        **({"threads": self.threads} if self.threads else {}))
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def settings_for(self, jobs: int) -> RunSettings:
        """The settings for `jobs` jobs in hand: unless a batch was asked for, the smallest step batch that
        holds them (one job runs the batch-1 graph), else the largest.
        """
        if self.batch_given:
            return self.settings
        batch = pick_batch(self.bundle.step_batches(self.settings.inversion.space), jobs)
        return dataclasses.replace(self.settings, batch=batch)

    def generate(self, images: ImageLike | Sequence[ImageLike], masks: MaskLike | Sequence[MaskLike] = None, *,
                 types: str | Sequence[str] | None = None, per_image: int = 1, variants: int = 1, seed: int = 0,
                 channel_order: str = "rgb") -> list[Defect]:
        """Make defects on images in memory; see `iter_generate` (this collects its results in a list)."""
        return list(self.iter_generate(images, masks, types=types, per_image=per_image, variants=variants,
                                       seed=seed, channel_order=channel_order))

    def iter_generate(self, images: ImageLike | Sequence[ImageLike], masks: MaskLike | Sequence[MaskLike] = None,
                      *, types: str | Sequence[str] | None = None, per_image: int = 1, variants: int = 1,
                      seed: int = 0, channel_order: str = "rgb") -> Iterator[Defect]:
        """Make defects on images in memory, yielding each as its batch finishes (in job order within a batch).

        Args:
            images: one image or a sequence: uint8/uint16 arrays, HxW gray, HxWx3 or HxWx4.
            masks: None (random targets: the bundle's recommended kind, e.g. G's own proposal), one mask per
                image (bool, {0,1} or {0,255}, the image's HxW), or a sequence with None for "random" entries.
            types: a defect type or a list (None: every type of the bundle); cycled over the jobs.
            per_image: defects per image where the target is random (a given mask makes one).
            variants: different defects per target (same target and reference, other latent starts).
            seed: the run seed; the same images, masks and options give the same defects.
            channel_order: "rgb" or "bgr" (OpenCV's): the order of the inputs, kept in the outputs.

        Yields:
            `Defect`s; a job that fails (e.g. an empty mask) has `ok` False and its `error` in the record.

        Raises:
            DataError: an image or mask that is not a valid array (naming its position).
            JobError: an unknown type, or `per_image` / `variants` below 1.
        """
        specs = array_jobs(images, masks, types=check_types(_as_list(types), self.bundle.defect_types),
                           per_image=per_image, seed=seed, channel_order=channel_order)
        if variants < 1:
            msg = f"variants must be >= 1, got {variants}"
            raise JobError(msg)
        specs = list(with_variants(iter(specs), variants))
        settings = self.settings_for(len(specs))
        for outcome in generate_outcomes(specs, bundle=self.bundle, backend=self.engine, settings=settings):
            yield _defect(outcome, settings, self.engine.name, channel_order)

    def run(self, out: str | Path, *, images: str | Path | None = None, mvtec: str | Path | None = None,
            jobs: str | Path | None = None, masks: str | Path | None = None, random_masks: int | None = None,
            types: str | Sequence[str] | None = None, seed: int = 0, variants: int = 1,
            shard: str | tuple[int, int] | None = None, retry_failed: bool = False, progress: bool | None = None,
            echo: Callable[[str], None] | None = None, info: dict[str, Any] | None = None,
            source: Source | None = None) -> Summary:
        """Run a job list from disk into an output folder, exactly as `defectgen run` (the command is this call).

        Args:
            out: the output folder: MVTec layout, `jobs.jsonl`, contact sheet and review page (`index.html`).
            images, mvtec, jobs: exactly one source: a folder of good images (with `masks`, a folder of target
                masks by stem, or `random_masks`, targets per image), an MVTec category, or a JSONL job list.
            types, seed, variants: as for `generate`.
            shard: "k/n": this process runs jobs with `index % n == k` (several may share `out`).
            retry_failed: rerun jobs an earlier run recorded as failed.
            progress: a progress bar (None: only on a terminal).
            echo: where one-line per-job failure messages go (default: stderr).
            info: extra fields for `run.json`'s informational part.
            source: an already checked `Source` instead of `images` / `mvtec` / `jobs` (the CLI's).

        Returns:
            The run's `Summary`: ok, skipped, failed counts, seconds, first error.

        Raises:
            DefectgenError: as `defectgen run`'s fatal errors (bad source, output folder unusable or in use).
        """
        if source is None:
            source = check_source(images=_path(images), mvtec=_path(mvtec), jobs=_path(jobs), masks=_path(masks),
                                  random_masks=random_masks)
        shard_kn = shard if isinstance(shard, tuple) else parse_shard(shard)
        request = make_request(bundle=self.bundle, source=source, types=_as_list(types), seed=seed,
                               variants=variants, settings=self.settings, batch_given=self.batch_given)
        return run_request(request, out=Path(out), backend=self.backend_name, shard=shard_kn,
                           retry_failed=retry_failed, progress=progress, echo=echo, info=info, engine=self.engine)


def _path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)


def _as_list(types: str | Sequence[str] | None) -> list[str] | None:
    if types is None:
        return None
    return [types] if isinstance(types, str) else list(types)


def _listed(items: Any, what: str) -> list[Any]:
    """One array or a sequence of them -> a list (a 2-D or 3-D array is one image, not a sequence of rows)."""
    if isinstance(items, np.ndarray):
        return [items] if items.ndim in (2, 3) else list(items)
    if isinstance(items, (list, tuple)):
        return list(items)
    msg = f"{what} must be a numpy array or a sequence of them, got {type(items).__name__}"
    raise DataError(msg)


def array_jobs(images: Any, masks: Any, *, types: Sequence[str], per_image: int, seed: int,
               channel_order: str) -> list[JobSpec]:
    """Job specs for images (and masks) in memory, with ids and seeds derived like a folder's.

    With a mask an image makes one job; without, `per_image` jobs with random targets. Types cycle job by job.

    Raises:
        DataError: an invalid image or mask (naming its position), or a mask list of another length.
        JobError: `per_image` below 1.
    """
    if per_image < 1:
        msg = f"per_image must be >= 1, got {per_image}"
        raise JobError(msg)
    imgs = _listed(images, "images")
    mask_list = [None] * len(imgs) if masks is None else _listed(masks, "masks")
    if len(mask_list) != len(imgs):
        msg = f"got {len(imgs)} images but {len(mask_list)} masks (give one per image, None for random)"
        raise DataError(msg)
    if not imgs:
        msg = "no images given"
        raise DataError(msg)
    specs: list[JobSpec] = []
    for i, (img, m) in enumerate(zip(imgs, mask_list, strict=True)):
        native, fmt = native_from_array(img, channel_order, where=f"images[{i}]")
        mask = None if m is None else mask_from_array(m, native.shape[:2], where=f"masks[{i}]")
        for r in range(1 if mask is not None else per_image):
            t = types[len(specs) % len(types)]
            key = f"array={i}|" + ("mask=given" if mask is not None else f"random={r}") + f"|type={t}"
            job_id, job_seed = job_identity(seed, key)
            specs.append(JobSpec(index=len(specs), key=key, id=job_id, seed=job_seed, image=Path(f"images[{i}]"),
                                 mask=None if mask is None else Path(f"masks[{i}]"), defect_type=t,
                                 source=f"images[{i}]",
                                 pixels=InMemory(native, fmt, mask, position=i, shape=np.shape(img))))
    return specs


def _defect(outcome: Outcome, settings: RunSettings, backend: str, channel_order: str) -> Defect:
    """An outcome as the caller's `Defect`: the image back in the caller's channel order and shape."""
    record = dataclasses.asdict(outcome.record(settings, backend=backend))
    pixels = outcome.spec.pixels  # every job of `array_jobs` carries its pixels
    position = pixels.position if pixels is not None else 0
    if not outcome.ok or outcome.image is None:
        return Defect(position, None, None, record)
    image = array_in_order(outcome.image, channel_order)
    return Defect(position, image.reshape(pixels.shape) if pixels is not None else image, outcome.mask, record)
