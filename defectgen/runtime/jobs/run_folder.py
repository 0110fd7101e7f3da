"""The output folder of a run (`RunFolder`): `run.json` (the resolved options), `jobs.jsonl` (one `JobRecord` a
job), the MVTec-layout outputs and the contact sheet. Everything that reads or writes the folder is here.

Resume rule: a job is done when `jobs.jsonl` holds a complete line for its id and, for status "ok", both of
its output files exist. Outputs are written atomically (temp file + rename, mask before image) *before* the
line is appended, so after a `kill -9` a job is either fully recorded or redone; a torn last line (only a
crash inside the append can make one) is cut off when the log is opened. Failed jobs are recorded too and
are not retried unless asked (`retry_failed`), so a rerun with the same options never duplicates a line.

The run writes in batches (`loop`): a batch's files without fsync, then one flush to disk for all of them
(`imageio.deferred_sync`), then the batch's lines in one `write` on an `O_APPEND` descriptor and one fsync, so
a line on disk always follows its files on disk, after a power cut too. Several shards may share one output
folder on a local filesystem (their names never collide: they come from the global job index).
`RunFolder.open` locks the folder first (`out_lock`): one unsharded writer, or one writer per shard.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.data.contact import contact_sheet
from defectgen.data.imageio import atomic_write_text, read_image, read_mask
from defectgen.data.mvtec import MVTecWriter, defect_relpaths
from defectgen.errors import DataError
from defectgen.runtime.jobs.out_lock import OutLock
from defectgen.runtime.jobs.record import JobRecord
from defectgen.runtime.jobs.sources import JobSpec

RUN_FILE = "run.json"
JOBS_FILE = "jobs.jsonl"
RUN_FORMAT = "defectgen-run/1"
CONTACT_SHEET = "contact_sheet.png"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Done:
    """What resume needs to know of one recorded job (kept small: one per job in memory)."""

    status: str  # "ok" or "failed"
    image: str | None  # output paths relative to the output folder (None when failed)
    mask: str | None


class JobLog:
    """The append-only `OUT/jobs.jsonl`.

    Args:
        path: The log file; created on the first append.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def repair(self) -> bool:
        """Cut a torn last line (a crash mid-append) so the next append starts on a fresh line.

        Returns:
            True if something was cut.
        """
        if not self.path.is_file():
            return False
        with self.path.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return False
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return False
            # scan back in blocks for the last newline; everything after it is the torn line
            pos = size
            while pos > 0:
                start = max(0, pos - 65536)
                f.seek(start)
                block = f.read(pos - start)
                nl = block.rfind(b"\n")
                if nl >= 0:
                    f.truncate(start + nl + 1)
                    return True
                pos = start
            f.truncate(0)
            return True

    def read(self) -> dict[str, Done]:
        """Recorded jobs by id; for an id logged twice (a retried failure) the last complete line wins."""
        done: dict[str, Done] = {}
        for rec in self.records():
            out = rec.outputs or {}
            done[rec.id] = Done(rec.status, out.get("image"), out.get("mask"))
        return done

    def records(self) -> Iterable[JobRecord]:
        """Every complete, readable line, streamed; a line we cannot read is skipped (that job is redone)."""
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn tail: not a record
                try:
                    yield JobRecord.from_line(line)
                except ValueError:
                    continue

    def append(self, *records: JobRecord) -> None:
        """Append records as complete lines in one write, flushed to disk (one fsync) before returning."""
        if not records:
            return
        data = "".join(r.to_line() for r in records).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)


def is_done(done: Done | None, out: Path, *, retry_failed: bool = False) -> bool:
    """The resume rule: skip a job with an "ok" line whose files exist, or a "failed" line (unless retrying)."""
    if done is None:
        return False
    if done.status == "failed":
        return not retry_failed
    return bool(done.image and done.mask and (out / done.image).is_file() and (out / done.mask).is_file())


def sweep_temp_files(out: Path, *, older_than_s: float = 300.0) -> int:
    """Delete temp files that a killed run left behind (`.<name>.<random>.tmp`, from the atomic writes).

    Only files older than `older_than_s` go: a PNG is written in milliseconds, so an older temp file is no
    other live process's (shards may share the folder). Readers skip hidden files anyway; this only frees space.

    Returns:
        How many were deleted.
    """
    now, n = time.time(), 0
    for sub in ("test", "ground_truth", "train"):
        if not (out / sub).is_dir():
            continue
        for p in (out / sub).rglob(".*.tmp"):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > older_than_s:
                    p.unlink()
                    n += 1
    return n


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def make_folder(out: Path) -> None:
    """Create `out` (with parents) and check that it is writable.

    Raises:
        DataError: it cannot be created or is not writable.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        msg = f"output folder {out} cannot be created: {e.strerror or e}"
        raise DataError(msg) from None
    if not os.access(out, os.W_OK | os.X_OK):
        msg = f"output folder {out} is not writable"
        raise DataError(msg)


def open_run(out: Path, identity: Mapping[str, Any], info: Mapping[str, Any]) -> bool:
    """Create or reopen an output folder; write `run.json` on first use.

    Args:
        out: The output folder (created with parents).
        identity: Options that determine the results (inputs fingerprint, bundle digest, space, steps, lr, λ,
            init, seed, ...). A folder made with a different identity is refused.
        info: Options recorded for information only (paths, backend, shard, batch); they may differ on resume.

    Returns:
        True if the folder already held a run (resuming), False if it was new.

    Raises:
        DataError: the folder cannot be created or written, is not a defectgen run folder but not empty, or
            was made with different options (the message lists them).
    """
    run_file = out / RUN_FILE
    make_folder(out)
    if run_file.is_file():
        try:
            old = json.loads(run_file.read_text(encoding="utf-8"))
            old_identity = old["identity"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            msg = f"{run_file} is unreadable ({e}); use a new --out"
            raise DataError(msg) from None
        changes = _diff(old_identity, json.loads(json.dumps(identity)))
        if changes:
            msg = (f"{out} holds a run made with different options ({'; '.join(changes[:4])}"
                   f"{'; ...' if len(changes) > 4 else ''}); rerun with the same options to resume, or use a new --out")
            raise DataError(msg)
        return True
    if any(not p.name.startswith(".") for p in out.iterdir()):  # hidden: lock files, a shard's run.json temp
        msg = f"output folder {out} is not empty and has no {RUN_FILE}; refusing to write into it (use a new --out)"
        raise DataError(msg)
    try:
        atomic_write_text(run_file, json.dumps({"format": RUN_FORMAT, "identity": identity, "info": info},
                                               indent=2, default=str) + "\n")
    except OSError as e:
        msg = f"output folder {out} is not writable: {e.strerror or e}"
        raise DataError(msg) from None
    return False


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def good_path(spec: JobSpec) -> str:
    """`train/good/<name>.png` for the job's source image; the name is its path with separators as `_`."""
    stem = spec.source.rsplit(".", 1)[0] if "." in Path(spec.source).name else spec.source
    name = _UNSAFE.sub("_", stem.replace("/", "_")).lstrip("_.-") or "image"
    return f"train/good/{name}.png"


class RunFolder:
    """An opened output folder: resume state, the job log, output names and writing, the contact sheet.

    `open` locks the folder until `close` (or the end of a `with` block); a folder made with the constructor
    holds no lock.

    Args:
        out: the folder.
        width: digits of the output names (`NNN.png`), from the size of the whole job list.
    """

    def __init__(self, out: Path, width: int = 3) -> None:
        self.out, self.width = out, width
        self.log = JobLog(out / JOBS_FILE)
        self.done: dict[str, Done] = {}
        self.resumed = False
        self.lock: OutLock | None = None

    @classmethod
    def open(cls, out: Path, identity: Mapping[str, Any], info: Mapping[str, Any], *, width: int = 3,
             shard: tuple[int, int] = (0, 1), echo: Callable[[str], None] | None = None) -> RunFolder:
        """Create `out`, lock it for `shard` (`OutLock`), then open the run (`open_run`), clear a killed run's
        leftovers and read what is done. The lock comes before `run.json`, so a refused run writes nothing.

        Args:
            shard: `(k, n)`; `(0, 1)` is unsharded and excludes every other run into `out`.
            echo: where a notice goes (a takeover from a run that ended without releasing); default stderr.

        Raises:
            DataError: as `open_run`, or another run holds the folder (the message names it).
        """
        folder = cls(out, width)
        make_folder(out)
        folder.lock = OutLock.acquire(out, shard)
        try:
            for notice in folder.lock.notices:
                (echo or _stderr)(f"defectgen: {notice}")
            folder.resumed = open_run(out, identity, info)
            sweep_temp_files(out)
            folder.log.repair()
            folder.done = folder.log.read()
        except BaseException:
            folder.close()
            raise
        return folder

    def close(self) -> None:
        """Release the folder's lock (safe to call twice)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def is_done(self, spec: JobSpec, *, retry_failed: bool = False) -> bool:
        """The resume rule (`is_done`) for one job."""
        return is_done(self.done.get(spec.id), self.out, retry_failed=retry_failed)

    def failed_before(self, spec: JobSpec) -> bool:
        d = self.done.get(spec.id)
        return d is not None and d.status == "failed"

    def output_paths(self, spec: JobSpec) -> tuple[str, str]:
        """`(test/<type>/NNN.png, ground_truth/<type>/NNN_mask.png)`, relative to the folder."""
        return defect_relpaths(spec.defect_type, spec.name(self.width))

    def write_result(self, spec: JobSpec, image: np.ndarray, mask: np.ndarray, source: np.ndarray) -> tuple[str, str]:
        """Write a job's image and mask atomically (mask first), and its source part once under `train/good/`.

        Images keep their channels and bit depth (`read_native` arrays); masks are 8-bit 0/255. Inside
        `imageio.deferred_sync` the files reach the disk when that block flushes them (the loop's batches).

        Returns:
            The written (image, mask) paths relative to the folder.
        """
        writer = MVTecWriter(self.out)
        writer.write_defect(spec.defect_type, spec.name(self.width), image, mask)
        good = self.out / good_path(spec)
        # the source part once, so OUT is a whole MVTec category (train/good + test/<type>); an empty one is what
        # a power cut before the batch's flush can leave
        if not good.is_file() or not good.stat().st_size:
            writer.write_good("train", good.stem, source)
        return self.output_paths(spec)

    def append(self, *records: JobRecord) -> None:
        self.log.append(*records)

    def write_contact_sheet(self, *, per_type: int = 8, types: Iterable[str] | None = None) -> Path | None:
        """`OUT/contact_sheet.png`: one row per defect type, its `per_type` lowest-index finished jobs.

        Streams `jobs.jsonl` (memory bounded by `per_type` per type) and reads the chosen PNGs.

        Returns:
            The sheet's path, or None when no job has finished ok.
        """
        best: dict[str, list[tuple[int, str, str]]] = {}
        for rec in self.log.records():
            if rec.status != "ok" or not rec.outputs:
                continue
            item = (-int(rec.index), rec.outputs["image"], rec.outputs["mask"])
            heap = best.setdefault(rec.type, [])
            if item not in heap:
                (heapq.heappush if len(heap) < per_type else heapq.heappushpop)(heap, item)
        rows = []
        for t in list(types) if types is not None else sorted(best):
            cells = []
            for _, img, msk in sorted(best.get(t, []), reverse=True):
                image = read_image(self.out / img)
                cells.append((image, read_mask(self.out / msk, image.shape[:2]), f"{t} {Path(img).stem}"))
            if cells:
                rows.append(cells)
        return contact_sheet(rows, self.out / CONTACT_SHEET) if rows else None
