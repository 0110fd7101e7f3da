"""`benchmarks/downstream.py --quick` end to end on a tiny make-data set with the toy bundle (the real script, in
a subprocess, so its import path, worker processes and `defectgen` CLI calls run as in CI)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from defectgen import DEFAULT_DEFECT_TYPES, GOOD
from defectgen.data.imageio import read_image

ROOT = Path(__file__).resolve().parents[2]

SOURCES = {"defectgen", "defectgen_g1", "defectgen_g0", "defectgen_surface", "copypaste", "draem", "cutpaste", "mix",
           "real"}
METRICS = {"pixel_auroc", "pixel_ap", "f1_max", "image_auroc"}
PROVENANCE = {"trained_on": "toy weights, no data", "train_command": "make_toy_bundle", "train_seconds": 0.5}
HELD_IN = {t: ["000.png", "001.png"] for t in DEFAULT_DEFECT_TYPES}  # the first third of make-data's 6 per type


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, toy_model: Callable[..., Any],
        toy_bundle_factory: Callable[..., Path]) -> tuple[Path, dict, float]:
    tmp = tmp_path_factory.mktemp("downstream")
    bundle = toy_bundle_factory(tmp / "bundle", model=toy_model(res=16, types=[GOOD, *DEFAULT_DEFECT_TYPES]),
                             spaces=("wplus",), batches=(1, 4))
    (bundle / "provenance.json").write_text(json.dumps({**PROVENANCE, "held_in": HELD_IN}))
    out = tmp / "results"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "downstream.py"), "--quick", "--bundle",
                           str(bundle), "--out", str(out), "--work", str(tmp / "work"), "--data-res", "32",
                           "--n-synthetic", "12", "--iou-jobs", "4", "--seg-steps", "3", "--jobs", "2"],
                          capture_output=True, text=True, timeout=170, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, json.loads((out / "downstream.json").read_text()), time.perf_counter() - t0


@pytest.mark.timeout(240)
def test_summary_has_every_source_with_mean_std_over_seeds(run: tuple[Path, dict, float]) -> None:
    _, res, seconds = run
    assert set(res["summary"]) == SOURCES
    for name, entry in res["summary"].items():
        for m in METRICS:
            assert entry[m]["n"] == 2 and _finite(entry[m]["mean"]) and _finite(entry[m]["std"]), (name, m)
            assert 0.0 <= entry[m]["mean"] <= 1.0 and entry[m]["std"] >= 0.0
        assert sorted(entry["per_type_ap"]) == sorted(DEFAULT_DEFECT_TYPES)
        assert all(_finite(v) for v in entry["per_type_ap"].values())
        for fig in ("diversity", "memorisation", "alignment"):
            assert _finite(entry[fig]) and entry[fig] >= 0.0, (name, fig)
        assert entry["alignment"] <= 1.0
    # the real row's crops are the memorisation bank itself; the toy bundle's default guide weight is 0
    assert res["summary"]["real"]["memorisation"] == pytest.approx(0.0, abs=1e-9)
    assert res["summary"]["copypaste"]["memorisation"] > 0.0
    for name in ("real", "copypaste", "defectgen"):  # typed defects: a coverage of the test's colours per type
        assert 0.0 < res["summary"][name]["colour_coverage"] <= 1.0, name
    assert res["summary"]["draem"]["colour_coverage"] is None  # its anomalies have no defect type: no figure
    assert res["protocol"]["same_as"] == {"defectgen_g0": "defectgen"}
    assert res["summary"]["defectgen_g0"] == res["summary"]["defectgen"]
    print(f"quick downstream run: {seconds:.1f} s")


@pytest.mark.timeout(240)
def test_protocol_records_split_seeds_data_and_bundle_provenance(run: tuple[Path, dict, float]) -> None:
    _, res, _ = run
    p = res["protocol"]
    assert p["held_in_per_type"] == dict.fromkeys(DEFAULT_DEFECT_TYPES, 2)  # first third of 6
    assert p["seeds"] == [0, 1] and "make-data" in p["data"]["command"] and p["data"]["held_out_defects"] == 16
    b = p["defectgen_bundle"]
    assert {k: b[k] for k in PROVENANCE} == PROVENANCE and b["fair"] is True and Path(b["path"]).is_dir()
    assert b["held_in_checked"] is True and p["data"]["split"]["held_in"] == HELD_IN
    for name in SOURCES - {"defectgen_g0"}:
        runs = res["sources"][name]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
    gen = res["sources"]["defectgen"]["generation"]
    assert gen["count"] == 12 and gen["mask_iou_jobs"] == 4
    assert res["sources"]["real"]["count"] == 8 and res["sources"]["mix"]["count"] == 12


@pytest.mark.timeout(240)
def test_defectgen_imitated_held_in_defects_only(run: tuple[Path, dict, float]) -> None:
    out, res, _ = run
    held_in = res["protocol"]["data"]["split"]["held_in"]
    work = Path(res["protocol"]["data"]["root"]).parent
    for variant in ("defectgen", "defectgen_g1"):
        for line in (work / "defectgen" / variant / "inputs" / "jobs.jsonl").read_text().splitlines():
            ref = json.loads(line)["reference"][0]
            assert Path(ref).name in held_in[Path(ref).parent.name]


@pytest.mark.timeout(240)
def test_report_files_and_rerender(run: tuple[Path, dict, float]) -> None:
    out, res, _ = run
    for name in SOURCES - {"defectgen_g0"}:
        assert read_image(out / f"downstream_{name}.png").ndim == 3
    md = (out / "downstream.md").read_text()
    assert "QUICK" in md and "NOT FAIR" not in md and "± " in md and read_image(out / "downstream.png").ndim == 3
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "downstream.py"), "--render-only", "--out",
                           str(out), "--note", "a hand-written note"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((out / "downstream.json").read_text())
    assert again["summary"] == res["summary"] and "a hand-written note" in again["notes"]
    assert "a hand-written note" in (out / "downstream.md").read_text()
