"""The run loop writes in batches: one flush to disk of a batch's files, then one append (and fsync) of its lines,
and a line never reaches the disk before its files."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from defectgen.api import Generator
from defectgen.data import imageio
from defectgen.data.imageio import deferred_sync, write_image
from defectgen.runtime.jobs.run_folder import JobLog

Events = list[tuple[str, object]]


def _parts(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_image(folder / f"part_{i:02d}.png", rng.integers(40, 200, (24, 32, 3)).astype(np.uint8))
    return folder


def _spy(monkeypatch: pytest.MonkeyPatch, *, syncfs: bool = True) -> Events:
    """Record, in order: renames into place, fsyncs (by path), syncfs calls and the log's appends."""
    events: Events = []
    real_fsync, real_replace, real_syncfs, real_append = os.fsync, os.replace, imageio._syncfs, JobLog.append

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        events.append(("replace", str(dst)))

    def sync_fs(folder: Path) -> bool:
        events.append(("syncfs", str(folder)))
        return real_syncfs(folder) if syncfs else False

    def append(self: JobLog, *records: object) -> None:
        events.append(("append", [r.outputs for r in records]))  # type: ignore[attr-defined]
        real_append(self, *records)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(imageio, "_syncfs", sync_fs)
    monkeypatch.setattr(JobLog, "append", append)
    return events


def _run(bundle: Path, parts: Path, out: Path, *, masks: int, batch: int) -> None:
    with Generator.load(bundle, threads=1, batch=batch) as gen:
        summary = gen.run(out, images=parts, random_masks=masks, types=["crack"], seed=1, progress=False)
    assert summary.ok == summary.total and not summary.failed


def _flushes(events: Events) -> int:
    return sum(kind in ("fsync", "syncfs") for kind, _ in events)


def test_flushes_to_disk_scale_with_batches_not_jobs(tmp_path: Path, run_bundle: Callable[..., Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, parts = run_bundle(tmp_path / "bundle"), _parts(tmp_path / "parts", 4)
    events = _spy(monkeypatch)
    _run(bundle, parts, tmp_path / "small", masks=1, batch=4)  # 4 jobs: 1 batch
    small, appends_small = _flushes(events), sum(k == "append" for k, _ in events)
    events.clear()
    _run(bundle, parts, tmp_path / "big", masks=4, batch=4)  # 16 jobs: 4 batches
    big, appends_big = _flushes(events), sum(k == "append" for k, _ in events)
    assert (appends_small, appends_big) == (1, 4)  # one append a batch
    assert big - small == 2 * (math.ceil(16 / 4) - 1)  # a syncfs and an fsync a batch (was about 4 a job)
    assert sum(k == "syncfs" for k, _ in events) == 4 + 1  # the batches' files, then the review page's
    lines = (tmp_path / "big" / "jobs.jsonl").read_text().splitlines()
    assert len(lines) == 16 and all(json.loads(x)["status"] == "ok" for x in lines)


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync-fallback"])
def test_a_line_is_appended_only_after_its_files_reached_the_disk(tmp_path: Path, run_bundle: Callable[..., Path],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 syncfs: bool) -> None:
    bundle, parts, out = run_bundle(tmp_path / "bundle"), _parts(tmp_path / "parts", 3), tmp_path / "out"
    events = _spy(monkeypatch, syncfs=syncfs)
    _run(bundle, parts, out, masks=2, batch=4)  # 6 jobs: batches of 4 and 2
    appends = [i for i, (kind, _) in enumerate(events) if kind == "append"]
    assert len(appends) == 2
    for i in appends:
        outputs = events[i][1]
        assert isinstance(outputs, list) and outputs
        for rel in (p for o in outputs for p in (o["image"], o["mask"])):
            path = str(out / rel)
            assert (out / rel).is_file()
            written = max(j for j, e in enumerate(events[:i]) if e == ("replace", path))
            if syncfs:  # the folder's filesystem was flushed after the file was renamed into place
                assert any(kind == "syncfs" for kind, _ in events[written:i]), rel
            else:  # the file itself and its folder were fsynced
                assert ("fsync", path) in events[written:i], rel
                assert ("fsync", str(Path(path).parent)) in events[written:i], rel
        assert events[i + 1] == ("fsync", str(out / "jobs.jsonl"))  # the lines' own flush, once a batch


def test_deferred_sync_flushes_once_at_the_end_and_not_after_an_error(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    events = _spy(monkeypatch)
    with deferred_sync():
        for name in ("a.bin", "b.bin", "sub/c.bin"):
            imageio.atomic_write_bytes(tmp_path / name, b"x")
        assert _flushes(events) == 0  # written and renamed, not flushed yet
    assert [k for k, _ in events if k != "replace"] == ["syncfs"]
    events.clear()
    with pytest.raises(RuntimeError), deferred_sync():
        imageio.atomic_write_bytes(tmp_path / "d.bin", b"y")
        raise RuntimeError
    assert _flushes(events) == 0  # nothing will record a file of a failed block
    imageio.atomic_write_bytes(tmp_path / "e.bin", b"z")  # outside a block: fsynced at once, as before
    assert [k for k, _ in events if k != "replace"] == ["fsync"]
