"""Resume bookkeeping: torn lines, last-line-wins, the resume rule, run.json identity checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from defectgen.errors import DataError
from defectgen.runtime.runlog import Done, JobLog, is_done, open_run, sweep_temp_files


def test_append_read_and_torn_tail(tmp_path: Path) -> None:
    log = JobLog(tmp_path / "jobs.jsonl")
    assert log.read() == {} and not log.repair()
    log.append({"id": "a", "status": "ok", "outputs": {"image": "i.png", "mask": "m.png"}})
    log.append({"id": "b", "status": "failed", "error": "x"})
    with log.path.open("ab") as f:
        f.write(b'{"id": "c", "status": "o')  # a crash mid-append
    assert set(log.read()) == {"a", "b"}
    assert log.repair() and not log.repair()
    log.append({"id": "b", "status": "ok", "outputs": {"image": "j.png", "mask": "n.png"}})
    lines = log.path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x) for x in lines)
    assert log.read()["b"] == Done("ok", "j.png", "n.png")


def test_repair_whole_file_torn(tmp_path: Path) -> None:
    p = tmp_path / "jobs.jsonl"
    p.write_bytes(b'{"id": "a"')
    assert JobLog(p).repair() and p.read_bytes() == b""


def test_append_refuses_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        JobLog(tmp_path / "j.jsonl").append({"id": "a", "loss": float("nan")})


def test_resume_rule(tmp_path: Path) -> None:
    (tmp_path / "i.png").write_bytes(b"x")
    assert not is_done(None, tmp_path)
    assert not is_done(Done("ok", "i.png", "m.png"), tmp_path)  # mask missing: redo
    (tmp_path / "m.png").write_bytes(b"x")
    assert is_done(Done("ok", "i.png", "m.png"), tmp_path)
    assert is_done(Done("failed", None, None), tmp_path)
    assert not is_done(Done("failed", None, None), tmp_path, retry_failed=True)


def test_open_run_identity(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ident = {"seed": 0, "steps": 5, "types": ["crack"]}
    assert open_run(out, ident, {"backend": "ort-cpu"}) is False
    assert open_run(out, dict(ident), {"backend": "other"}) is True
    with pytest.raises(DataError, match=r"different options \(steps: 5 -> 6\)"):
        open_run(out, {**ident, "steps": 6}, {})


def test_open_run_refuses_foreign_or_unwritable(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    with pytest.raises(DataError, match="not empty and has no run.json"):
        open_run(tmp_path / "busy", {}, {})
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot be created"):
        open_run(tmp_path / "file" / "out", {}, {})
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(DataError, match="not writable"):
                open_run(ro, {}, {})
        finally:
            ro.chmod(0o700)


def test_sweep_only_old_temp_files(tmp_path: Path) -> None:
    folder = tmp_path / "test" / "crack"
    folder.mkdir(parents=True)
    old, fresh, png = folder / ".000.png.abc.tmp", folder / ".001.png.def.tmp", folder / "000.png"
    for p in (old, fresh, png):
        p.write_bytes(b"x")
    os.utime(old, (1, 1))
    assert sweep_temp_files(tmp_path) == 1
    assert not old.exists() and fresh.exists() and png.exists()
