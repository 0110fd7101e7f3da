"""The job model of `defectgen run`: what to generate, enumerated lazily from a folder, an MVTec category or a
JSONL job list, with deterministic ids, seeds, output names and shards.

A job is paths plus a few strings (`JobSpec`); pixels are read only when the job runs, so enumerating a
folder of thousands of images costs a list of paths and memory stays flat. Everything cheap to check from
paths alone (a missing mask for a stem, a JSONL line that is malformed, names an unknown type or points at a
missing file) raises here, before any job runs (see `scan_jobs`).

Identity: a job's `key` describes its inputs relative to their root (so moving the input folder keeps ids),
its `id` and `seed` are hashes of `key` and the run seed, and its `index` (position in the job list) names its
outputs (`NNN.png`) and picks its shard (`index % n == k`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defectgen import GOOD
from defectgen.data.imageio import PixelFormat
from defectgen.data.mvtec import MVTecCategory, list_images
from defectgen.errors import DataError, JobError, choice_error

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_JSONL_FIELDS = ("image", "mask", "type", "seed", "reference")


@dataclass(frozen=True, eq=False)
class InMemory:
    """A job's pixels handed over in memory (the Python API) instead of by path: the image as stored
    (`read_native` form, RGB order) with its format, the target mask ({0,1}, checked) if one was given, and
    where the image came from (its position in the caller's list and its shape there, for the output).
    """

    image: np.ndarray
    fmt: PixelFormat
    mask: np.ndarray | None = None
    position: int = 0
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class JobSpec:
    """One defect to generate: inputs by path, the defect type, and its derived identity.

    Attributes:
        index: position in the job list; names the outputs and picks the shard.
        key: canonical description of the inputs (paths relative to their root), the basis of `id` and `seed`.
        id: 16 hex digits, `sha256(run seed, key)`; the resume bookkeeping's key.
        seed: seeds this job's random mask, reference choice and random init.
        image: the good image (full resolution).
        mask: the target mask, or None to draw a random one on the part.
        defect_type: a defect type of the bundle.
        reference: a real defect `(image, mask)` to imitate, or None to pick one from the bundle's bank.
        source: the image path as the user gave it (relative to the source root), for messages and logs.
        variant: k of `--variants K` (0 for the first or only one).
        pixels: the image (and mask) in memory, for jobs of the Python API; `image` and `mask` then only name
            them (a mask name means "given", None "random").
    """

    index: int
    key: str
    id: str
    seed: int
    image: Path
    mask: Path | None
    defect_type: str
    reference: tuple[Path, Path] | None = None
    source: str = ""
    variant: int = 0  # k of `--variants K`: same target, mask and reference as variant 0, another latent init
    pixels: InMemory | None = field(default=None, compare=False, repr=False)

    def name(self, width: int = 3) -> str:
        """Output file stem, the zero-padded index: `007` -> `test/<type>/007.png`."""
        return f"{self.index:0{width}d}"


def with_variants(jobs: Iterator[JobSpec], k: int) -> Iterator[JobSpec]:
    """Each job `k` times, as consecutive jobs: variant v keeps the job's target, mask and reference (its seed),
    gets its own id and index `index * k + v`; variant 0 of K = 1 is the job unchanged.
    """
    for spec in jobs:
        for v in range(k):
            if k == 1:
                yield spec
                continue
            key = f"{spec.key}|variant={v}"
            yield dataclasses.replace(spec, index=spec.index * k + v, key=key, id=job_identity(spec.seed, key)[0],
                                      variant=v)


def job_identity(run_seed: int, key: str) -> tuple[str, int]:
    """Deterministic `(id, seed)` of a job from the run seed and the job's key (stable across machines)."""
    digest = hashlib.sha256(f"defectgen-job|{run_seed}|{key}".encode()).digest()
    return digest[:8].hex(), int.from_bytes(digest[8:16], "little") >> 1  # 63-bit seed: fits every RNG API


def parse_shard(text: str | None) -> tuple[int, int]:
    """Parse `--shard k/n` (0-based `k`, `0 <= k < n`); None means the whole set, `(0, 1)`.

    Raises:
        JobError: malformed string or `k` out of range.
    """
    if text is None:
        return 0, 1
    m = _SHARD.match(text)
    if not m:
        msg = f"--shard {text!r} is not of the form k/n (e.g. 0/4 for the first of 4 shards)"
        raise JobError(msg)
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= k < n:
        msg = f"--shard {text!r}: need n >= 1 and 0 <= k < n (shards are numbered 0..n-1)"
        raise JobError(msg)
    return k, n


def in_shard(index: int, shard: tuple[int, int]) -> bool:
    """The shard rule: job `index` belongs to shard `k` of `n` iff `index % n == k` (a partition of the set)."""
    k, n = shard
    return index % n == k


def check_types(types: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Resolve `--types` against the bundle's defect types ("good" excluded); None means all of them.

    Raises:
        JobError: an unknown type (with the closest match), or an empty list.
    """
    choices = [t for t in available if t != GOOD]
    if not types:
        if not choices:
            msg = "the bundle has no defect types besides 'good'"
            raise JobError(msg)
        return choices
    for t in types:
        if t not in choices:
            raise JobError("--types: " + choice_error("defect type", t, choices))
    return list(dict.fromkeys(types))  # keep order, drop repeats


# ---- sources -----------------------------------------------------------------------------------------------


def _make(index: int, key: str, run_seed: int, **fields: object) -> JobSpec:
    job_id, seed = job_identity(run_seed, key)
    return JobSpec(index=index, key=key, id=job_id, seed=seed, **fields)  # type: ignore[arg-type]


def _masks_by_stem(masks: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in list_images(masks):
        stem = p.stem[:-5] if p.stem.endswith("_mask") else p.stem  # accept MVTec's `NNN_mask.png` too
        found.setdefault(stem, p)
    return found


def image_jobs(images: Sequence[tuple[Path, str]], masks: Path | None, random_masks: int | None,
               types: Sequence[str], run_seed: int) -> Iterator[JobSpec]:
    """Jobs for a list of `(image path, name relative to its root)`.

    With `masks`, one job per image (mask by stem, type cycling over `types` by image); else `random_masks`
    jobs per image, the type cycling over `types` job by job (so N = len(types) gives each image every type).

    Raises:
        DataError: an image has no mask in `masks`.
    """
    by_stem = _masks_by_stem(masks) if masks is not None else None
    index = 0
    for i, (path, rel) in enumerate(images):
        if by_stem is not None:
            mask = by_stem.get(path.stem)
            if mask is None:
                msg = f"no mask for image {path} in {masks} (expected {path.stem}.png or {path.stem}_mask.png)"
                raise DataError(msg)
            t = types[i % len(types)]
            yield _make(index, f"image={rel}|mask={mask.name}|type={t}", run_seed,
                        image=path, mask=mask, defect_type=t, source=rel)
            index += 1
            continue
        for r in range(random_masks or 0):
            t = types[(i * (random_masks or 0) + r) % len(types)]  # random masks cycle through the types
            yield _make(index, f"image={rel}|random={r}|type={t}", run_seed,
                        image=path, mask=None, defect_type=t, source=rel)
            index += 1


def folder_jobs(images: Path, *, masks: Path | None, random_masks: int | None, types: Sequence[str],
                run_seed: int) -> Iterator[JobSpec]:
    """Jobs for `--images DIR` with `--masks DIR` (same stems; type cycles over `types` by image) or
    `--random-masks N` (N jobs per image, the type cycling over `types`).

    Raises:
        DataError: the folder is missing or empty, or an image has no mask in `masks`.
    """
    files = list_images(images)
    if not files:
        msg = f"no images (png/jpg/bmp/tif) in {images}"
        raise DataError(msg)
    if masks is not None and not masks.is_dir():
        msg = f"mask folder does not exist: {masks}"
        raise DataError(msg)
    yield from image_jobs([(p, p.name) for p in files], masks, random_masks, types, run_seed)


def mvtec_jobs(root: Path, *, random_masks: int, types: Sequence[str], run_seed: int) -> Iterator[JobSpec]:
    """Jobs for `--mvtec ROOT`: its `train/good` then `test/good` images, `random_masks` random masks each.

    Raises:
        DataError: not an MVTec category folder (see `MVTecCategory`).
    """
    cat = MVTecCategory(root)
    items = cat.train_good() + [it for it in cat.test_items() if it.defect_type == GOOD]
    pairs = [(it.image_path, it.image_path.relative_to(root).as_posix()) for it in items]
    yield from image_jobs(pairs, None, random_masks, types, run_seed)


def _listed_file(root: Path, rel: object, field: str, where: str) -> Path:
    """Resolve a JSONL path: a relative one against the list's folder `root`, an absolute one as it is.

    Any existing file is allowed, inside `root` or not (a list may point at a data folder elsewhere);
    `_key_path` keeps keys relative where it can.
    """
    if not isinstance(rel, str) or not rel:
        msg = (f"{where}: {field!r} must be a non-empty path string (relative to the job list's folder "
               f"{root}, or absolute), got {rel!r}")
        raise JobError(msg)
    path = (root / rel).resolve()  # an absolute `rel` replaces `root`
    if not path.is_file():
        msg = (f"{where}: {field} file does not exist: {path} (relative paths are read from the job list's "
               f"folder {root})")
        raise DataError(msg)
    return path


def _key_path(path: Path, root: Path) -> str:
    """A resolved path as a job key writes it: relative to the list's folder when inside it (so the key is the
    same whether the line gave it relative or absolute, and moving the folder keeps ids), else absolute.
    """
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def _parse_line(line: str, where: str) -> dict[str, object]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        msg = f"{where}: not valid JSON ({e.msg})"
        raise JobError(msg) from None
    if not isinstance(obj, dict):
        msg = f"{where}: expected a JSON object like {{\"image\": \"a.png\", \"type\": \"crack\"}}"
        raise JobError(msg)
    unknown = sorted(set(obj) - set(_JSONL_FIELDS))
    if unknown:
        msg = f"{where}: unknown field(s) {unknown}; fields are {', '.join(_JSONL_FIELDS)}"
        raise JobError(msg)
    return obj


def jsonl_jobs(path: Path, *, types: Sequence[str], run_seed: int) -> Iterator[JobSpec]:
    """Jobs from a JSONL list, one object a line (blank lines and `#` comments skipped)::

        {"image": "parts/a.png", "mask": "masks/a.png" | null, "type": "crack", "seed": 7,
         "reference": ["bank/crack1.png", "bank/crack1_mask.png"]}

    A relative path is read from the list's folder, an absolute one from anywhere; keys hold paths relative
    to the list's folder when inside it, else absolute (`_key_path`). `type` defaults to cycling over `types`,
    `mask` null draws a random mask, `seed` overrides the derived seed, `reference` picks the defect to imitate.
    The file is read line by line (never all at once).

    Raises:
        JobError: malformed line, unknown field or type, a path that is not a string (naming `file:line`).
        DataError: the list or a file it names does not exist.
    """
    if not path.is_file():
        msg = f"job list does not exist: {path}"
        raise DataError(msg)
    root = path.parent.resolve()
    index = 0
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"{path}:{lineno}"
            obj = _parse_line(line, where)
            image = _listed_file(root, obj.get("image"), "image", where)
            mask = None if obj.get("mask") is None else _listed_file(root, obj["mask"], "mask", where)
            t = obj.get("type", types[index % len(types)])
            if t not in types:
                raise JobError(f"{where}: " + choice_error("defect type", str(t), list(types)))
            reference = _reference(root, obj.get("reference"), where)
            rel = _key_path(image, root)
            key = (f"line={index}|image={rel}|mask={mask and _key_path(mask, root)}|type={t}"
                   f"|reference={reference and [_key_path(p, root) for p in reference]}")
            seed = _seed(obj.get("seed"), where)
            if seed is not None:
                key += f"|seed={seed}"
            spec = _make(index, key, run_seed, image=image, mask=mask, defect_type=str(t), reference=reference,
                         source=rel)
            yield spec if seed is None else dataclasses.replace(spec, seed=seed)
            index += 1


def _reference(root: Path, ref: object, where: str) -> tuple[Path, Path] | None:
    if ref is None:
        return None
    if not isinstance(ref, list) or len(ref) != 2:
        msg = f"{where}: 'reference' must be [image path, mask path], got {ref!r}"
        raise JobError(msg)
    return _listed_file(root, ref[0], "reference image", where), _listed_file(root, ref[1], "reference mask", where)


def _seed(seed: object, where: str) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        msg = f"{where}: 'seed' must be an integer >= 0, got {seed!r}"
        raise JobError(msg)
    return seed


# ---- scanning ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSet:
    """The result of the up-front pass over a job source: how many jobs, and a fingerprint of their keys.

    The fingerprint goes into `run.json`, so a resumed run refuses an input set that changed (a job's index
    names its outputs, so an inserted image would otherwise overwrite another job's results).
    """

    count: int
    fingerprint: str


def scan_jobs(jobs: Iterator[JobSpec]) -> JobSet:
    """Consume a job iterator once (paths only, validating every job) and summarise it.

    Raises:
        JobError: the source yields no jobs; plus whatever the source raises for a bad entry.
    """
    h = hashlib.sha256()
    count = 0
    for spec in jobs:
        h.update(spec.key.encode())
        h.update(b"\n")
        count += 1
    if count == 0:
        msg = "no jobs: the input yields nothing to generate"
        raise JobError(msg)
    return JobSet(count=count, fingerprint=h.hexdigest()[:16])


def name_width(count: int) -> int:
    """Digits of the output names: at least 3 (MVTec's `000.png`), more for sets of 1000+ jobs."""
    return max(3, len(str(count - 1)))


def relpath(path: Path, start: Path) -> str:
    """`path` relative to `start` when inside it, else absolute (for logs that stay readable when moved)."""
    try:
        return Path(os.path.relpath(path, start)).as_posix() if path.is_relative_to(start) else str(path)
    except ValueError:  # different drives on Windows
        return str(path)
