"""The output folder: torn lines, last-line-wins, the resume rule, run.json identity checks, output names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from defectgen.errors import DataError
from defectgen.runtime.jobs.record import JobRecord
from defectgen.runtime.jobs.run_folder import Done, JobLog, RunFolder, good_path, is_done, open_run, sweep_temp_files
from defectgen.runtime.jobs.sources import JobSpec

_FIELDS = {"index": 0, "error": None, "type": "crack", "seed": 1, "inputs": {}, "space": "wplus", "init": "encoder",
           "steps": 1, "lr": 0.1, "lambdas": {}, "mask_mode": "target", "detail": True, "guide_weight": 0.0,
           "mask_shape": "reference"}


def _rec(job_id: str, status: str, image: str | None = None, mask: str | None = None, **kw: object) -> JobRecord:
    outputs = {"image": image, "mask": mask} if image else None
    return JobRecord(**{**_FIELDS, "id": job_id, "status": status, "outputs": outputs, **kw})  # type: ignore[arg-type]


def _spec(**kw: object) -> JobSpec:
    base = {"index": 7, "key": "k", "id": "abc", "seed": 3, "image": Path("/x/a.png"), "mask": None,
            "defect_type": "crack", "source": "sub/a b.png"}
    return JobSpec(**{**base, **kw})  # type: ignore[arg-type]


def test_append_read_and_torn_tail(tmp_path: Path) -> None:
    log = JobLog(tmp_path / "jobs.jsonl")
    assert log.read() == {} and not log.repair()
    log.append(_rec("a", "ok", "i.png", "m.png"))
    log.append(_rec("b", "failed", error="x"))
    with log.path.open("ab") as f:
        f.write(b'{"id": "c", "status": "o')  # a crash mid-append
    assert set(log.read()) == {"a", "b"}
    assert log.repair() and not log.repair()
    log.append(_rec("b", "ok", "j.png", "n.png"))
    lines = log.path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x) for x in lines)
    assert log.read()["b"] == Done("ok", "j.png", "n.png")


def test_append_writes_a_batch_of_lines_with_one_write_and_one_fsync(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    log, calls = JobLog(tmp_path / "jobs.jsonl"), []
    real_write, real_fsync = os.write, os.fsync
    monkeypatch.setattr(os, "write", lambda fd, data: calls.append("write") or real_write(fd, data))
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    log.append(_rec("a", "ok", "i.png", "m.png"), _rec("b", "failed", error="x"), _rec("c", "ok", "j.png", "n.png"))
    log.append()  # an empty batch touches nothing
    assert calls == ["write", "fsync"]
    assert list(log.read()) == ["a", "b", "c"] and log.path.read_text().count("\n") == 3


def test_repair_whole_file_torn(tmp_path: Path) -> None:
    p = tmp_path / "jobs.jsonl"
    p.write_bytes(b'{"id": "a"')
    assert JobLog(p).repair() and p.read_bytes() == b""


def test_append_refuses_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        JobLog(tmp_path / "j.jsonl").append(_rec("a", "failed", time_s=float("nan")))


def test_lines_that_are_not_records_are_skipped(tmp_path: Path) -> None:
    log = JobLog(tmp_path / "jobs.jsonl")
    log.append(_rec("a", "ok", "i.png", "m.png"))
    with log.path.open("a") as f:
        f.write('{"id": "x", "status": "ok"}\n[1, 2]\n{"id": "y", "status": "weird", "index": 0}\nnot json\n')
    log.append(_rec("b", "failed"))
    assert set(log.read()) == {"a", "b"}


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


def test_output_names() -> None:
    names = RunFolder(Path("o"), width=3).output_paths(_spec())
    assert names == ("test/crack/007.png", "ground_truth/crack/007_mask.png")
    assert RunFolder(Path("o"), width=5).output_paths(_spec(index=12345))[0] == "test/crack/12345.png"
    assert good_path(_spec()) == "train/good/sub_a_b.png"
    assert good_path(_spec(source="train/good/000.png")) != good_path(_spec(source="test/good/000.png"))


def test_run_folder_writes_where_it_names_and_resumes(tmp_path: Path) -> None:
    import numpy as np

    out = tmp_path / "out"
    folder = RunFolder.open(out, {"seed": 0}, {}, width=3)
    assert not folder.resumed and folder.done == {}
    image, mask = np.full((8, 10, 3), 90, np.uint8), np.zeros((8, 10), np.uint8)
    mask[2:4, 3:6] = 1
    rel = folder.write_result(_spec(), image, mask, image)
    assert rel == folder.output_paths(_spec()) and all((out / r).is_file() for r in rel)
    assert (out / good_path(_spec())).is_file()
    folder.append(_rec(_spec().id, "ok", *rel))
    folder.close()  # its lock: one writer per folder
    again = RunFolder.open(out, {"seed": 0}, {}, width=3)
    assert again.resumed and again.is_done(_spec()) and not again.is_done(_spec(id="other"))
    assert again.write_contact_sheet(types=["crack"]) == out / "contact_sheet.png"
