"""`defectgen bench` (defectgen/runtime/bench.py): its measuring pieces and the quick mode on the toy bundle.

No speed assertions anywhere: timings depend on the machine and its load; these tests check that the numbers
exist, are finite and land in well-formed JSON with the summary keys of issue 7.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from defectgen.cli import app
from defectgen.runtime import bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toy_bundle import make_toy_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_bundle(tmp_path_factory.mktemp("bench") / "toy")


def test_matmul_model_is_valid_onnx_and_multiplies() -> None:
    model = onnx.load_from_string(bench.matmul_model_bytes())
    onnx.checker.check_model(model, full_check=True)
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((3, 4), np.float32)
    sess = ort.InferenceSession(bench.matmul_model_bytes(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"A": a, "B": b})[0], a @ b)


def test_matmul_ceiling_reports_positive_gflops() -> None:
    c = bench.matmul_ceiling(sizes=(64,), repeats=2)
    assert c["ceiling_gflops"] > 0 and np.isfinite(c["ceiling_gflops"])
    assert {r["engine"] for r in c["rows"]} == {"onnxruntime MatMul", "numpy.matmul"}


def _flop_graph(path: Path) -> None:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in [
        ("wc", (8, 3, 3, 3)),  # Conv 3->8, 3x3, pad 1, on 2x3x16x16
        ("wt", (8, 4, 4, 4)),  # ConvTranspose 8->4, 4x4, stride 2, pad 1: 16x16 -> 32x32
        ("wm", (32, 5)),  # MatMul (2,4,32,32) @ (32,5)
        ("wg", (10, 7)),  # Gemm (2,10) @ (10,7)
    ]]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "wt"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("MatMul", ["t", "wm"], ["m"]),
        helper.make_node("Gemm", ["g", "wg"], ["y"]),
        helper.make_node("Relu", ["m"], ["r"]),
    ]
    graph = helper.make_graph(nodes, "flops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16, 16]),
                                               helper.make_tensor_value_info("g", TensorProto.FLOAT, [2, 10])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def test_count_flops_matches_hand_count(tmp_path: Path) -> None:
    _flop_graph(tmp_path / "g.onnx")
    got = bench.count_flops(tmp_path / "g.onnx")
    assert got is not None
    want = {"Conv": 2 * (2 * 8 * 16 * 16) * (3 * 9), "ConvTranspose": 2 * (2 * 8 * 16 * 16) * (4 * 16),
            "MatMul": 2 * (2 * 4 * 32 * 5) * 32, "Gemm": 2 * (2 * 7) * 10}
    assert got["by_op"] == want
    assert got["flops"] == sum(want.values()) and got["unknown_shape_nodes"] == 0


def test_profile_ops_aggregates_per_op(tmp_path: Path) -> None:
    _flop_graph(tmp_path / "g.onnx")
    feeds = {"x": np.ones((2, 3, 16, 16), np.float32), "g": np.ones((2, 10), np.float32)}
    prof = bench.profile_ops(tmp_path / "g.onnx", feeds, runs=2, threads=1)
    assert prof["runs"] == 2 and prof["ops"]
    assert abs(sum(o["share"] for o in prof["ops"]) - 1) < 1e-6
    assert prof["kernel_ms_per_run"] > 0


def test_quality_metrics() -> None:
    mask = np.zeros((2, 1, 4, 4), np.float32)
    mask[:, :, :2] = 1
    logit = np.where(mask > 0, 3.0, -3.0).astype(np.float32)
    logit[1, 0, 3] = 3.0  # 4 extra pixels: IoU 8/12
    np.testing.assert_allclose(bench.mask_iou(logit, mask), [1.0, 8 / 12])
    good = np.zeros((2, 3, 4, 4), np.float32)
    img = good.copy()
    img[0] += 0.02 * (1 - mask[0])  # background error 0.02 -> PSNR 10 log10(4 / 4e-4) = 40 dB
    img[1] += 5 * mask[1]  # only inside the mask: background exact (capped by the 1e-12 floor)
    psnr = bench.background_psnr(img, good, mask)
    assert psnr[0] == pytest.approx(40.0, abs=1e-3) and psnr[1] > 100


def test_run_bench_quick_on_toy_bundle(toy: Path) -> None:
    r = bench.run_bench(toy, batches=(1, 4), backend="ort-cpu", quick=True, profile=True)
    assert set(r["summary"]) == set(bench.SUMMARY_KEYS)
    assert r["summary"]["ort_vs_torch_step_speedup"] is None  # needs torch: measured by benchmarks/throughput.py
    assert r["summary"]["step_flops_share_of_ceiling"] > 0
    assert [s["batch"] for s in r["step"]] == [1, 4] and all(s["median_s"] > 0 for s in r["step"])
    assert [(e["batch"], e["steps"]) for e in r["end_to_end"]] == [(1, 5), (4, 5)]
    assert all(np.isfinite(e["quality"]["objective"]) for e in r["end_to_end"])
    assert r["profile"]["ops"] and r["quick"] is True
    assert "AMD" in r["machine"]["cpu_model"] or r["machine"]["cpu_model"]
    assert "load avg" in bench.stamp_line(r["machine"])


def test_cli_bench_quick_writes_json(toy: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", "--bundle", str(toy), "--batch", "1,4", "--backend", "ort-cpu",
                                   "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())  # strict JSON: no NaN/Infinity
    assert set(data["summary"]) == set(bench.SUMMARY_KEYS)
    assert "end to end" in res.output


def test_cli_bench_bad_backend_is_one_line_error(toy: Path) -> None:
    res = CliRunner().invoke(app, ["bench", "--bundle", str(toy), "--backend", "ort-cpux", "--quick"])
    assert res.exit_code == 2
    assert "did you mean 'ort-cpu'" in res.output


def test_bench_runs_without_torch(toy: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        class _NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked: the runtime must not import it")
        sys.meta_path.insert(0, _NoTorch())
        from defectgen.runtime.bench import run_bench
        r = run_bench({str(toy)!r}, batches=(1,), backend="ort-cpu", quick=True)
        assert r["step"] and "torch" not in sys.modules
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
