"""`benchmarks/downstream.py --quick` end to end on a tiny make-data set with the toy bundle (the real script,
in a subprocess, so its import path and `defectgen run` calls are exercised as in CI)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from defectgen import DEFAULT_DEFECT_TYPES, GOOD
from defectgen.data.imageio import read_image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from toy_bundle import ToyModel, make_toy_bundle  # noqa: E402

METRICS = {"pixel_auroc", "pixel_ap", "f1_max", "image_auroc"}


@pytest.mark.timeout(180)
def test_quick_mode_writes_the_results(tmp_path: Path) -> None:
    bundle = make_toy_bundle(tmp_path / "bundle", model=ToyModel(res=16, types=[GOOD, *DEFAULT_DEFECT_TYPES]),
                             spaces=("wplus",), batches=(1, 4))
    out = tmp_path / "results"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "downstream.py"), "--quick", "--bundle",
                           str(bundle), "--out", str(out), "--work", str(tmp_path / "work"), "--data-res", "32",
                           "--n-synthetic", "12", "--iou-jobs", "4", "--seg-steps", "3", "--threads", "1"],
                          capture_output=True, text=True, timeout=170, check=False)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads((out / "downstream.json").read_text())
    assert set(res["summary"]) == {"defectgen", "cutpaste", "draem", "copypaste"}
    for entry in res["summary"].values():
        assert METRICS <= set(entry) and entry["dataset"] == res["dataset"]["name"]
        assert all(entry[k] is None or 0.0 <= entry[k] <= 1.0 for k in METRICS)
    assert res["mode"] == "quick" and res["bundle"]["kind"] == "given"
    assert res["sources"]["defectgen"]["generation"]["count"] == 12
    assert res["sources"]["defectgen"]["generation"]["mask_iou_jobs"] == 4
    for name in res["summary"]:
        assert read_image(out / f"downstream_{name}.png").ndim == 3
        assert read_image(out / f"downstream_{name}_zoom.png").ndim == 3
    assert read_image(out / "downstream_defectgen_inversion.png").ndim == 3
    assert "QUICK" in (out / "downstream.md").read_text() and read_image(out / "downstream.png").ndim == 3
    held_in = res["dataset"]["split"]["held_in"]
    assert sorted(held_in) == sorted(DEFAULT_DEFECT_TYPES) and res["dataset"]["held_out_defects"] == 16
    # the defectgen source imitated held-in defects only
    jobs = (tmp_path / "work" / "defectgen" / "inputs" / "jobs.jsonl").read_text().splitlines()
    for line in jobs:
        ref = json.loads(line)["reference"][0]
        assert Path(ref).name in held_in[Path(ref).parent.name]
    assert len(res["pr_curves"]["defectgen"]["precision"]) == len(res["pr_curves"]["defectgen"]["recall"])
    # re-rendering from the JSON adds a note and keeps the numbers
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "downstream.py"), "--render-only", "--out",
                           str(out), "--note", "a hand-written note"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((out / "downstream.json").read_text())
    assert again["summary"] == res["summary"] and "a hand-written note" in again["notes"]
    assert "a hand-written note" in (out / "downstream.md").read_text()
    print(f"quick downstream run: {seconds:.1f} s")
