"""Downstream benchmark: the defectgen row's bundle must be fair. Fairness is read from the bundle's
provenance.json; the embedded default bundle (the default without --bundle) has its provenance committed beside
the protocol, bound to its manifest's hash, and a default bundle that record does not describe is refused unless
--allow-default-bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from downstream import bundle_info

ROOT = Path(__file__).resolve().parents[2]


def _fake_bundle(folder: Path, defaults: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    manifest = {"resolution": 16, "defect_types": ["good", "hole"], "defaults": defaults or {"steps": 3}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _refused(capsys: pytest.CaptureFixture[str], fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(SystemExit) as e:
        fn(*args, **kw)  # type: ignore[operator]
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err


def test_the_embedded_default_bundle_is_the_fair_default() -> None:
    default = bundle_info.default_bundle_path()
    assert bundle_info.check_bundle(None, allow_default=False, train_budget=0) == default
    assert bundle_info.check_bundle(None, allow_default=False, train_budget=5) is None  # trained here instead
    rec = bundle_info.describe(default, how="test")
    assert rec["default_bundle"] and rec["fair"] is True and rec["not_fair_because"] is None
    assert "held-in third" in rec["trained_on"] and "--patch models/default/patch_gan" in rec["train_command"]
    held_in = json.loads((ROOT / "models" / "default" / "patch_gan" / "held_in.json").read_text())
    assert bundle_info.check_held_in(rec, held_in)["fair"] and rec["held_in_checked"]  # what the trainer saw
    rec = bundle_info.check_held_in(bundle_info.describe(default, how="test"), {"hole": ["000.png"]})
    assert rec["fair"] is False and "crack/000.png" in rec["not_fair_because"]  # a smaller held-in set: not fair


def test_a_copy_of_the_default_bundle_gets_the_committed_provenance(tmp_path: Path) -> None:
    copy = tmp_path / "renamed"
    copy.mkdir()
    shutil.copyfile(bundle_info.default_bundle_path() / "manifest.json", copy / "manifest.json")
    (copy / "provenance.json").write_text(json.dumps({"trained_on": "something else"}))  # not the one read
    assert bundle_info.check_bundle(copy, allow_default=False, train_budget=0) == copy
    rec = bundle_info.describe(copy, how="test")
    assert rec["default_bundle"] and rec["fair"] and "held-in third" in rec["trained_on"]


def test_a_default_bundle_the_record_does_not_describe_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    reexported = _fake_bundle(tmp_path / "default_bundle")  # as if the default bundle were exported again
    monkeypatch.setattr(bundle_info, "default_bundle_path", lambda: reexported)
    assert bundle_info.default_provenance() is None  # the committed record names another manifest hash
    err = _refused(capsys, bundle_info.check_bundle, None, allow_default=False, train_budget=0)
    assert "default bundle" in err and "--allow-default-bundle" in err and "provenance" in err
    assert bundle_info.check_bundle(None, allow_default=True, train_budget=0) == reexported
    rec = bundle_info.describe(reexported, how="test")
    assert rec["fair"] is False and bundle_info.DEFAULT_PROVENANCE.name in rec["not_fair_because"]


def test_not_a_bundle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(capsys, bundle_info.check_bundle, tmp_path, allow_default=False, train_budget=0)
    assert str(tmp_path) in err


def test_provenance_makes_a_bundle_fair(tmp_path: Path) -> None:
    b = _fake_bundle(tmp_path / "b", {"guide_weight": 0.5})
    assert bundle_info.check_bundle(b, allow_default=False, train_budget=0) == b
    rec = bundle_info.describe(b, how="given")
    assert rec["fair"] is False and rec["trained_on"] is None and rec["train_seconds"] is None
    assert "provenance.json" in rec["not_fair_because"] and rec["run_defaults"]["guide_weight"] == 0.5
    assert rec["run_defaults"]["proposal_lr"] == 0.005  # what the bundle does not name is filled in, as run does
    bundle_info.write_provenance(b, trained_on="train/good + held-in third", train_command="defectgen train gan",
                                 train_seconds=123.4)
    rec = bundle_info.describe(b, how="given")
    assert rec["fair"] is True and rec["not_fair_because"] is None
    assert (rec["trained_on"], rec["train_command"], rec["train_seconds"]) == (
        "train/good + held-in third", "defectgen train gan", 123.4)


def test_provenance_held_in_lists_are_checked_against_the_split(tmp_path: Path) -> None:
    b = _fake_bundle(tmp_path / "b")
    split = {"hole": ["000.png", "001.png"], "cut": ["000.png"]}
    prov = {"trained_on": "held-in", "train_command": "x", "train_seconds": 1}
    (b / "provenance.json").write_text(json.dumps(prov))
    rec = bundle_info.check_held_in(bundle_info.describe(b, how="given"), split)
    assert rec["fair"] and rec["held_in_checked"] is False  # nothing listed: trusted as written
    (b / "provenance.json").write_text(json.dumps({**prov, "held_in": {"hole": ["001.png"], "cut": ["000.png"]}}))
    rec = bundle_info.check_held_in(bundle_info.describe(b, how="given"), split)
    assert rec["fair"] and rec["held_in_checked"] is True
    (b / "provenance.json").write_text(json.dumps({**prov, "held_in": {"hole": ["001.png", "007.png"]}}))
    rec = bundle_info.check_held_in(bundle_info.describe(b, how="given"), split)
    assert rec["fair"] is False and "hole/007.png" in rec["not_fair_because"]


def test_zip_bundle_reads_the_provenance_beside_it(tmp_path: Path) -> None:
    folder = _fake_bundle(tmp_path / "b")
    zpath = tmp_path / "b.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(folder / "manifest.json", "manifest.json")
    assert bundle_info.check_bundle(zpath, allow_default=False, train_budget=0) == zpath
    assert bundle_info.provenance_path(zpath) == tmp_path / "b.provenance.json"
    (tmp_path / "b.provenance.json").write_text(json.dumps({"trained_on": "held-in", "train_seconds": 5}))
    rec = bundle_info.describe(zpath, how="given")
    assert rec["fair"] and rec["train_command"] is None and rec["resolution"] == 16


def test_the_script_refuses_a_bad_bundle_in_one_line_before_any_work(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "downstream.py"), "--quick", "--bundle",
                           str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "not a bundle" in proc.stderr
    assert not (tmp_path / "work" / "data").exists()  # refused before any work


def test_quick_and_unfair_runs_may_not_overwrite_the_committed_results(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "downstream.py"), "--quick",
                           "--out", str(ROOT / "benchmarks" / "results"), "--work",
                           str(tmp_path / "work")], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "may not overwrite" in proc.stderr, proc.stderr
