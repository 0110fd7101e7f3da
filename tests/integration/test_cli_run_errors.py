"""The bad-input matrix of `defectgen run`: one-line errors naming the file or option, the right exit code, and
nothing half-written (fatal errors write nothing; per-job errors leave the other jobs' results intact)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke, jobs_log, make_images, pngs

from defectgen.data.imageio import read_image, write_mask


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, run_bundle: Callable[..., Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    make_images(root / "images", 2, masks=root / "masks")
    return {"root": root, "bundle": run_bundle(root / "bundle"),
            "nan": run_bundle(root / "nan_bundle", nan_above=-10.0)}


def _error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.startswith("defectgen: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- fatal: checked up front, exit 2, the output folder is never created --------------------------------------
FATAL = [
    (["--random-masks", 1, "--types", "crak"], "unknown defect type 'crak' (did you mean 'crack'?)"),
    (["--random-masks", 1, "--space", "wplsu"], "unknown latent space 'wplsu' (did you mean 'wplus'?)"),
    (["--random-masks", 1, "--batch", 3], "no step graph for space 'wplus' with batch 3"),
    (["--random-masks", 1, "--init", "encodr"], "unknown init 'encodr'"),
    (["--random-masks", 1, "--lambda", "deff=1"], "unknown loss term 'deff' (did you mean 'def'?)"),
    (["--random-masks", 1, "--lambda", "def"], "--lambda 'def' is not name=value"),
    (["--random-masks", 1, "--shard", "3/3"], "--shard '3/3'"),
    (["--random-masks", 1, "--steps", -1], "steps must be >= 0"),
    (["--random-masks", 1, "--backend", "tensorrtt"], "unknown backend 'tensorrtt'"),
    (["--random-masks", 1, "--mask-mode", "gen"], "unknown mask mode 'gen'"),
    (["--random-masks", 0], "--random-masks must be >= 1"),
    (["--random-masks", 1, "--guide-weight", 1.5], "--guide-weight must be within [0, 1], got 1.5"),
    (["--random-masks", 1, "--min-change", -1], "--min-change must be within [0, 255] grey levels, got -1.0"),
    (["--random-masks", 1, "--threads", 0], "--threads must be >= 1, got 0"),
    (["--random-masks", 1, "--mask-shape", "ref"], "unknown mask shape 'ref'"),
    (["--random-masks", 1, "--detail-from", "refrence"],
     "unknown detail source 'refrence' (did you mean 'reference'?)"),
    (["--random-masks", 1, "--no-detail", "--detail-from", "surface"], "--detail-from surface needs the detail layer"),
    ([], "--images needs --masks DIR"),
]


@pytest.mark.parametrize(("extra", "message"), FATAL, ids=[m[:24] for _, m in FATAL])
def test_fatal_option_errors(setup: dict[str, Path], tmp_path: Path, extra: list[object], message: str) -> None:
    out = tmp_path / "out"
    code, _, stderr = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images", "--out", out,
                             *extra)
    assert code == 2
    assert message in _error_line(stderr)
    assert not out.exists()


def test_missing_input_folder_and_mask(setup: dict[str, Path], tmp_path: Path) -> None:
    code, _, stderr = invoke("run", "--bundle", setup["bundle"], "--images", tmp_path / "nope", "--random-masks", 1,
                             "--out", tmp_path / "out")
    assert code == 2 and f"image folder does not exist: {tmp_path / 'nope'}" in _error_line(stderr)
    masks = _copy(setup["root"] / "masks", tmp_path / "masks")
    (masks / "part_01.png").unlink()
    code, _, stderr = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images", "--masks", masks,
                             "--out", tmp_path / "out")
    assert code == 2 and "no mask for image" in _error_line(stderr) and "part_01.png" in _error_line(stderr)
    assert not (tmp_path / "out").exists()


def test_tampered_and_mismatched_bundles(setup: dict[str, Path], tmp_path: Path) -> None:
    tampered = _copy(setup["bundle"], tmp_path / "tampered")
    data = bytearray((tampered / "encoder.onnx").read_bytes())
    data[-5] ^= 0xFF
    (tampered / "encoder.onnx").write_bytes(bytes(data))
    code, _, stderr = invoke("run", "--bundle", tampered, "--images", setup["root"] / "images", "--random-masks", 1,
                             "--out", tmp_path / "out")
    assert code == 2 and "checksum mismatch: encoder.onnx" in _error_line(stderr)
    future = _copy(setup["bundle"], tmp_path / "future")
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["format_version"] = 99
    (future / "manifest.json").write_text(json.dumps(manifest))
    code, _, stderr = invoke("run", "--bundle", future, "--images", setup["root"] / "images", "--random-masks", 1,
                             "--out", tmp_path / "out")
    assert code == 2 and "format_version" in _error_line(stderr)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("line", "message"), [
    ({"image": 7}, "list.jsonl:2: 'image' must be a non-empty path string (relative to the job list's folder"),
    ({"image": "missing.png"}, "list.jsonl:2: image file does not exist"),
    ({"image": "a.png", "type": "hol"}, "list.jsonl:2: unknown defect type 'hol' (did you mean 'hole'?)"),
])
def test_job_list_errors_name_the_line(setup: dict[str, Path], tmp_path: Path, line: dict, message: str) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    shutil.copy(setup["root"] / "images" / "part_00.png", folder / "a.png")
    (folder / "list.jsonl").write_text(json.dumps({"image": "a.png"}) + "\n" + json.dumps(line) + "\n")
    code, _, stderr = invoke("run", "--bundle", setup["bundle"], "--jobs", folder / "list.jsonl",
                             "--out", tmp_path / "out")
    assert code == 2 and message in _error_line(stderr)
    assert not (tmp_path / "out").exists()


def test_output_folder_not_usable(setup: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    code, _, stderr = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images",
                             "--random-masks", 1, "--out", tmp_path / "file" / "out")
    assert code == 2 and "cannot be created" in _error_line(stderr) and str(tmp_path / "file") in _error_line(stderr)
    code, _, _ = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images", "--random-masks", 1,
                        "--out", tmp_path / "out")
    assert code == 0
    code, _, stderr = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images",
                             "--random-masks", 1, "--out", tmp_path / "out", "--steps", 3)
    assert code == 2 and "different options (steps: 10 -> 3)" in _error_line(stderr)


# ---- per job: recorded as failed, the other jobs finish, exit 1 ----------------------------------------------
def _folder_with_one_bad(setup: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    images = _copy(setup["root"] / "images", tmp_path / "images")
    masks = _copy(setup["root"] / "masks", tmp_path / "masks")
    make_images(images, 1, seed=9)  # part_00 is overwritten below; this keeps 2 good jobs
    shutil.copy(images / "part_01.png", images / "part_02.png")
    shutil.copy(masks / "part_01.png", masks / "part_02.png")
    return images, masks


@pytest.mark.parametrize("case", ["corrupt image", "mask size", "empty mask", "non-binary mask"])
def test_per_job_failures_are_recorded_and_the_run_goes_on(setup: dict[str, Path], tmp_path: Path,
                                                           case: str) -> None:
    images, masks = _folder_with_one_bad(setup, tmp_path)
    bad = {"corrupt image": images / "part_00.png", "mask size": masks / "part_00.png",
           "empty mask": masks / "part_00.png", "non-binary mask": masks / "part_00.png"}[case]
    if case == "corrupt image":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    elif case == "mask size":
        write_mask(bad, np.ones((10, 10), np.uint8))
    elif case == "empty mask":
        write_mask(bad, np.zeros((40, 56), np.uint8))
    else:
        import cv2

        cv2.imwrite(str(bad), np.full((40, 56), 128, np.uint8))
    out = tmp_path / "out"
    code, _, stderr = invoke("run", "--bundle", setup["bundle"], "--images", images, "--masks", masks, "--out", out)
    assert code == 1
    failed_lines = [x for x in stderr.splitlines() if x.startswith("defectgen: job 000 (part_00.png) failed: ")]
    assert len(failed_lines) == 1 and str(bad) in failed_lines[0]
    assert "1 job(s) failed" in _error_line(stderr)
    log = {r["index"]: r for r in jobs_log(out)}
    assert log[0]["status"] == "failed" and str(bad) in log[0]["error"] and log[0]["outputs"] is None
    assert log[1]["status"] == log[2]["status"] == "ok"
    written = sorted(p.name for p in pngs(out / "test"))
    assert written == ["001.png", "002.png"]  # nothing of the failed job
    assert all(read_image(p).shape == (40, 56, 3) for p in pngs(out / "test") + pngs(out / "train"))
    code, stdout, _ = invoke("run", "--bundle", setup["bundle"], "--images", images, "--masks", masks, "--out", out)
    assert code == 1 and "3 already done" in stdout and len(jobs_log(out)) == 3  # recorded failures are not rerun


def test_nan_objective_fails_the_job_and_the_run_exits_nonzero(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, stderr = invoke("run", "--bundle", setup["nan"], "--images", setup["root"] / "images",
                             "--random-masks", 1, "--out", out)
    assert code == 1
    assert "non-finite (NaN/inf)" in _error_line(stderr)
    log = jobs_log(out)
    assert len(log) == 2 and {r["status"] for r in log} == {"failed"}
    assert all(r["objective"][0] is None or isinstance(r["objective"][0], float) for r in log)
    assert not (out / "test").exists()
    # --retry-failed runs them again (still NaN here): a second line per id, the last one wins
    code, _, _ = invoke("run", "--bundle", setup["nan"], "--images", setup["root"] / "images", "--random-masks", 1,
                        "--out", out, "--retry-failed")
    assert code == 1 and len(jobs_log(out)) == 4


def test_demo_says_when_the_default_bundle_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An install whose assets lost the bundle (e.g. a wheel built without package data) must say so plainly.
    import defectgen.runtime.bundle as bundle_mod
    import defectgen.runtime.commands.run as cli_run_mod

    for mod in (bundle_mod, cli_run_mod):
        monkeypatch.setattr(mod, "default_bundle_path", lambda: tmp_path / "no_bundle")
    code, _, stderr = invoke("demo", "--out", tmp_path / "demo")
    assert code == 2 and "default bundle is not shipped yet" in _error_line(stderr)
    assert not (tmp_path / "demo").exists()


def test_disk_full_mid_run_stops_with_a_clear_error(setup: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from defectgen.data.mvtec import MVTecWriter

    calls = {"n": 0}
    real = MVTecWriter.write_defect

    def flaky(self: MVTecWriter, *args: object) -> object:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(MVTecWriter, "write_defect", flaky)
    out = tmp_path / "out"
    code, _, stderr = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images",
                             "--random-masks", 2, "--batch", 1, "--out", out)
    assert code == 2 and "No space left on device" in _error_line(stderr)
    assert [r["status"] for r in jobs_log(out)] == ["ok"]  # the job written before stays recorded
    monkeypatch.setattr(MVTecWriter, "write_defect", real)
    code, stdout, _ = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images",
                             "--random-masks", 2, "--batch", 1, "--out", out)
    assert code == 0 and "3 generated, 1 already done" in stdout
