"""`defectgen bench` (`defectgen.measure`): its measuring pieces, that it times the exact job path of
`defectgen run`, and the quick mode on the toy bundle.

No speed assertions anywhere: timings depend on the machine and its load; these tests check that the numbers
exist, are finite and land in well-formed JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from defectgen.cli import app
from defectgen.measure import bench, graph_stats, timing
from defectgen.measure.stamp import stamp_line
from defectgen.runtime.bundle import Bundle


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory, toy_bundle_factory: Callable[..., Path]) -> Path:
    return toy_bundle_factory(tmp_path_factory.mktemp("bench") / "toy")


def test_matmul_model_is_valid_onnx_and_multiplies() -> None:
    model = onnx.load_from_string(timing.matmul_model_bytes())
    onnx.checker.check_model(model, full_check=True)
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((3, 4), np.float32)
    sess = ort.InferenceSession(timing.matmul_model_bytes(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"A": a, "B": b})[0], a @ b)


def test_matmul_ceiling_reports_positive_gflops() -> None:
    c = timing.matmul_ceiling(sizes=(64,), repeats=2)
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
    got = graph_stats.count_flops(tmp_path / "g.onnx")
    assert got is not None
    want = {"Conv": 2 * (2 * 8 * 16 * 16) * (3 * 9), "ConvTranspose": 2 * (2 * 8 * 16 * 16) * (4 * 16),
            "MatMul": 2 * (2 * 4 * 32 * 5) * 32, "Gemm": 2 * (2 * 7) * 10}
    assert got["by_op"] == want
    assert got["flops"] == sum(want.values()) and got["unknown_shape_nodes"] == 0


def test_profile_ops_aggregates_per_op(tmp_path: Path) -> None:
    _flop_graph(tmp_path / "g.onnx")
    feeds = {"x": np.ones((2, 3, 16, 16), np.float32), "g": np.ones((2, 10), np.float32)}
    prof = graph_stats.profile_ops(tmp_path / "g.onnx", feeds, runs=2, threads=1)
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
    assert "summary" not in r  # headline figures that need torch live in benchmarks/throughput.py
    assert r["step"][-1]["share_of_ceiling"] > 0
    assert [s["batch"] for s in r["step"]] == [1, 4] and all(s["median_s"] > 0 for s in r["step"])
    assert [(e["batch"], e["steps"]) for e in r["end_to_end"]] == [(1, 5), (4, 5)]
    assert all(np.isfinite(e["quality"]["objective"]) for e in r["end_to_end"])
    assert r["profile"]["ops"] and r["quick"] is True
    assert r["machine"]["cpu_model"]
    assert "load avg" in stamp_line(r["machine"])


@pytest.mark.parametrize("mask_shape", ["reference", "generated"])
def test_bench_and_run_give_the_model_identical_inputs(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       mask_shape: str) -> None:
    """The same jobs through `defectgen run` (the demo's source) and `defectgen bench` reach `invert` with
    identical model inputs and inversion settings (bench only turns early stopping off), G's proposed targets
    and their start latents included."""
    import defectgen.measure.bench as bench_mod
    import defectgen.runtime.jobs.prepare as prepare_mod
    from defectgen.runtime.backends import load_backend
    from defectgen.runtime.commands.run import EXAMPLES
    from defectgen.runtime.jobs.folder_run import Source, make_request, run_request

    seen: dict[str, list[tuple[Any, Any]]] = {"run": [], "bench": []}

    def recording(key: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def invert(backend: Any, bundle: Any, batch: Any, *, config: Any) -> Any:
            seen[key].append((batch, config))
            return real(backend, bundle, batch, config=config)
        return invert

    monkeypatch.setattr(prepare_mod, "invert", recording("run", prepare_mod.invert))
    monkeypatch.setattr(bench_mod, "invert", recording("bench", bench_mod.invert))
    bundle = Bundle.load(toy)
    request = make_request(bundle=bundle, source=Source("examples", EXAMPLES), types=None, seed=3, batch=4,
                           mask_shape=mask_shape)
    run_request(request, out=tmp_path / "out", backend="ort-cpu", progress=False)
    jobs = bench.make_jobs(bundle, 4, seed=3, settings=request.settings)
    with load_backend(bundle, "ort-cpu", threads=1) as be:
        bench.end_to_end(be, bundle, jobs, bench.product_config(bundle))
    (run_batch, run_cfg), (bench_batch, bench_cfg) = seen["run"][0], seen["bench"][0]
    assert run_batch.types == bench_batch.types and len(run_batch) == 4
    for name in ("good", "mask", "stitched"):
        np.testing.assert_array_equal(getattr(run_batch, name), getattr(bench_batch, name))
    if mask_shape == "generated":
        assert run_batch.starts is not None and all(s is not None for s in run_batch.starts)
        for a, b in zip(run_batch.starts, bench_batch.starts, strict=True):
            np.testing.assert_array_equal(a, b)
        given = jobs.as_given_targets()  # a reference method's view: same targets, its own init, nothing to redraw
        assert given.batch.starts is None and all(p.proposal is None for p in given.prepared)
        assert given.settings.mask_mode == "target"  # labelled with its targets, whatever G's mask does
        np.testing.assert_array_equal(given.batch.mask, jobs.batch.mask)
    else:
        assert run_batch.starts is None and bench_batch.starts is None
    assert bench_cfg.early_stop_patience == 0
    assert dataclasses.replace(bench_cfg, early_stop_patience=run_cfg.early_stop_patience, seed=run_cfg.seed) == run_cfg
    if mask_shape == "reference":
        assert bench.make_jobs(bundle, 4, seed=3).settings == request.settings  # bench's default: the bundle's


def test_cli_bench_quick_writes_json(toy: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", "--bundle", str(toy), "--batch", "1,4", "--backend", "ort-cpu",
                                   "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())  # strict JSON: no NaN/Infinity
    assert [s["batch"] for s in data["step"]] == [1, 4]
    assert "end to end" in res.output


def test_cli_bench_bad_backend_is_one_line_error(toy: Path) -> None:
    res = CliRunner().invoke(app, ["bench", "--bundle", str(toy), "--backend", "ort-cpux", "--quick"])
    assert res.exit_code == 2
    assert "did you mean 'ort-cpu'" in res.output


def test_target_iou_compares_with_the_target_at_the_data_resolution() -> None:
    """At a pixel scale above 1 the model's target is dilated; the bench's IoU takes the undilated target, so a
    G mask that is exactly the target scores 1 (and one half its size about 0.5)."""
    from defectgen.runtime.jobs.compose import Crop, model_inputs

    res = 16
    image = np.zeros((48, 48, 3), np.uint8)
    target = np.zeros((48, 48), np.uint8)
    target[12:36, 12:36] = 1  # 24 px square in a 48 px crop: scale 3
    crop = Crop.full(target.shape)
    _, mask_m = model_inputs(image, target, crop, res)
    p = dataclasses.make_dataclass("P", ["crop", "mask"])(crop, target)
    exact = np.where(target[::3, ::3] > 0, 8.0, -8.0).astype(np.float32)[None, None]
    assert bench.mask_iou(exact, mask_m[None]) < 0.7  # the dilated model target penalises an exact fit
    assert bench.target_iou(exact, [p])[0] == pytest.approx(1.0, abs=0.02)
    half = np.full_like(exact, -8.0)
    half[..., 4:12, 4:8] = 8.0  # the left half of the square
    assert bench.target_iou(half, [p])[0] == pytest.approx(0.5, abs=0.06)
