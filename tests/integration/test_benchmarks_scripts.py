"""The benchmark scripts' `--quick` modes run and write well-formed, stamped results with their summary keys.

convergence and footprint run on the toy bundle (ONNX Runtime only); throughput needs torch nets, so it exports a
tiny random model (32 px, its quick default) into a temporary cache. No speed assertions: numbers only have to exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "throughput": {"ort_vs_torch_step_speedup", "end_to_end_speedup_vs_idinvert", "step_flops_share_of_ceiling"},
    "convergence": {"encoder_init_steps_to_match_wavg_100"},
    "footprint": {"cold_start_s", "peak_rss_mb", "runtime_venv_mb", "train_venv_mb"},
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory, toy_bundle_factory: Callable[..., Path]) -> Path:
    return toy_bundle_factory(tmp_path_factory.mktemp("scripts") / "toy")


def _run(script: str, *args: str, out: Path, timeout: int = 300, env: dict[str, str] | None = None) -> dict:
    r = subprocess.run([sys.executable, f"benchmarks/{script}.py", "--quick", "--out-dir", str(out), *args],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((out / f"{script}.json").read_text())  # strict JSON (NaN would fail to parse back)
    assert data["quick"] is True and data["benchmark"] == script
    assert set(data["summary"]) == KEYS[script]
    assert data["machine"]["cpu_model"] and data["machine"]["versions"]["onnxruntime"]
    md = (out / f"{script}.md").read_text()
    assert "QUICK" in md and "Command: `python benchmarks/" in md and "Machine:" in md
    assert (out / f"{script}.png").stat().st_size > 1000
    return data


def test_convergence_quick(toy: Path, tmp_path: Path) -> None:
    data = _run("convergence", "--bundle", str(toy), out=tmp_path)
    runs = data["runs"]
    assert {r["init"] for r in runs} == {"encoder", "wavg", "random"}
    assert all(len(r["mean"]["objective"]) == r["steps"] + 1 for r in runs)
    assert any(r["reference"] for r in runs)


def test_convergence_quick_on_a_patch_bundle(tmp_path: Path, toy_bundle_factory: Callable[..., Path]) -> None:
    """A layered G draws over the good window: the script's synthesis must pass it (it did not, once)."""
    patch = toy_bundle_factory(tmp_path / "patch", patch_scale=1.0)
    data = _run("convergence", "--bundle", str(patch), "--inits", "wavg,random", out=tmp_path / "out")
    assert {r["init"] for r in data["runs"]} == {"wavg", "random"}
    assert all(np.isfinite(r["mean"]["mask_iou"]).all() for r in data["runs"])


def test_footprint_quick(toy: Path, tmp_path: Path) -> None:
    data = _run("footprint", "--bundle", str(toy), "--no-build", out=tmp_path)
    s = data["summary"]
    assert s["cold_start_s"] > 0 and s["peak_rss_mb"] > 0 and s["train_venv_mb"] > 0
    assert s["runtime_venv_mb"] is None  # not built in a smoke run


@pytest.mark.slow
def test_throughput_quick(tmp_path: Path) -> None:
    data = _run("throughput", out=tmp_path / "res", timeout=900,
                env={"DEFECTGEN_BENCH_CACHE": str(tmp_path / "cache")})
    s = data["summary"]
    assert s["ort_vs_torch_step_speedup"] > 0 and s["end_to_end_speedup_vs_idinvert"] > 0
    assert s["step_flops_share_of_ceiling"] > 0
    (model,) = data["models"]
    assert {r["backend"] for r in model["step"]} >= {"torch eager", "ort-cpu"}
    assert any(r["reference"] for r in model["end_to_end"])


def test_blockiness_quick(tmp_path: Path, toy_model: Callable[..., object],
                          toy_bundle_factory: Callable[..., Path]) -> None:
    bundle = toy_bundle_factory(tmp_path / "patch", model=toy_model(res=16), patch_scale=1.5)
    r = subprocess.run([sys.executable, "benchmarks/blockiness.py", "--quick", "--bundle", str(bundle),
                        "--out-dir", str(tmp_path / "out"), "--run-args", "--steps 1"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "blockiness.json").read_text())
    s = data["summary"]
    assert data["quick"] is True and s["defects"] == 2 and 0 <= s["flat_2x2_share_input"] <= 1
    assert 0 <= s["defects_with_flat_blocks"] <= 2
    assert s["flat_2x2_percent_generated"] == pytest.approx(100 * s["flat_2x2_share_generated"])
    assert all(row["window"]["scale"] >= 6 for row in data["rows"])  # the bundle's 1.5 x the part's zoom of 4
    assert (tmp_path / "out" / "blockiness_sheet.png").is_file() and (tmp_path / "out" / "blockiness.png").is_file()


def test_flat_block_share_counts_upscaled_blocks() -> None:
    import numpy as np
    from blockiness import flat_block_share

    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    blocky = np.repeat(np.repeat(noise[:8, :8], 2, 0), 2, 1)  # nearest-neighbour x2: every other block is flat
    mask = np.ones((16, 16), np.uint8)
    assert flat_block_share(noise, mask) == 0.0
    assert flat_block_share(blocky, mask) == pytest.approx(64 / 225)
