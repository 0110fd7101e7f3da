"""TensorRT backend: cache keys, availability and the engine-build flow everywhere (with a stand-in `tensorrt`
module); the real build + run only where `tensorrt` and a CUDA GPU exist."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from defectgen.errors import BundleError
from defectgen.runtime.backends import BackendUnavailable, load_backend
from defectgen.runtime.backends import tensorrt as trt_mod
from defectgen.runtime.backends.tensorrt import build_engine, engine_cache_path
from defectgen.runtime.bundle import Bundle, default_bundle_path
from defectgen.runtime.jobs.invert import InversionBatch, InversionConfig, invert

if TYPE_CHECKING:
    from toy_bundle import ToyModel


HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def test_engine_cache_path_key(bundle: Bundle) -> None:
    def path(file: str = "step_w_b4.onnx", fp16: bool = True, **kw: object) -> Path:
        args = {"trt_version": "10.3.0", "gpu": "Orin (sm_87)"} | kw
        return engine_cache_path(bundle, file, fp16, **args)  # type: ignore[arg-type]

    p = path()
    assert p.parent == bundle.cache_dir("trt") and p.name.startswith("step_w_b4-") and p.suffix == ".engine"
    assert path() == p  # stable
    assert path(fp16=False) != p
    assert path(trt_version="10.4.0") != p
    assert path(gpu="NVIDIA H100 (sm_90)") != p
    assert path(batch_profile=(1, 4, 4)) != p
    assert path("step_w_b1.onnx").name.startswith("step_w_b1-")
    assert path("step_wplus_b4.onnx").name.split("-")[1] != p.name.split("-")[1]  # other ONNX sha256, other key


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed: the 'missing' message is not shown")
def test_missing_tensorrt_is_reported(bundle: Bundle) -> None:
    assert "tensorrt" in (trt_mod.missing() or "")
    with pytest.raises(BackendUnavailable, match="backend 'tensorrt' is not available here: .*tensorrt"):
        load_backend(bundle, "tensorrt")
    with pytest.raises(BackendUnavailable, match="needs the `tensorrt` package"):
        trt_mod.TensorRTBackend(bundle)


# ---- the build flow against a stand-in tensorrt module (records calls; no GPU) -------------------------------
class _Input:
    def __init__(self, name: str, shape: list[int]) -> None:
        self.name, self.shape = name, shape


def _fake_trt(inputs: list[_Input], *, parse_ok: bool = True, fast_fp16: bool = True) -> types.ModuleType:
    calls: dict[str, object] = {"flags": [], "profiles": [], "shapes": {}}

    class Network:
        num_inputs = len(inputs)

        def get_input(self, i: int) -> _Input:
            return inputs[i]

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network: Network, logger: object) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            calls["parsed"] = path
            return parse_ok

        def get_error(self, i: int) -> str:
            return "In node 3 (Foo): unsupported op"

    class Profile:
        def set_shape(self, name: str, mn: list[int], opt: list[int], mx: list[int]) -> None:
            calls["shapes"][name] = (mn, opt, mx)  # type: ignore[index]

    class Config:
        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            calls["workspace"] = (pool, size)

        def set_flag(self, flag: str) -> None:
            calls["flags"].append(flag)  # type: ignore[attr-defined]

        def add_optimization_profile(self, p: Profile) -> None:
            calls["profiles"].append(p)  # type: ignore[attr-defined]

    class Builder:
        platform_has_fast_fp16 = fast_fp16

        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            return b"ENGINE"

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    mod = types.ModuleType("tensorrt")
    mod.__version__ = "10.3.0"
    mod.Logger, mod.Builder, mod.OnnxParser = Logger, Builder, Parser
    mod.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    mod.BuilderFlag = types.SimpleNamespace(FP16="FP16")
    mod.calls = calls
    return mod


def test_build_engine_flow_symbolic_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_trt([_Input("image", [-1, 3, 8, 8]), _Input("mask", [-1, 1, 8, 8])])
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    out = build_engine(tmp_path / "encoder.onnx", tmp_path / "e.engine", fp16=True, workspace_bytes=123,
                       batch_profile=(1, 4, 8))
    assert out.read_bytes() == b"ENGINE" and not list(tmp_path.glob(".*tmp"))
    c = fake.calls
    assert c["network_flags"] == 0 and c["workspace"] == ("WORKSPACE", 123) and c["flags"] == ["FP16"]
    assert c["shapes"]["image"] == ([1, 3, 8, 8], [4, 3, 8, 8], [8, 3, 8, 8])
    assert len(c["profiles"]) == 1


def test_build_engine_fixed_batch_no_fp16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_trt([_Input("latent", [4, 3, 4])], fast_fp16=False)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    build_engine(tmp_path / "step.onnx", tmp_path / "s.engine", fp16=True)
    assert fake.calls["flags"] == [] and fake.calls["profiles"] == []


def test_build_engine_reports_parser_errors_and_bad_dims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt([], parse_ok=False))
    with pytest.raises(BundleError, match=r"cannot parse .*bad.onnx: In node 3 \(Foo\): unsupported op"):
        build_engine(tmp_path / "bad.onnx", tmp_path / "x.engine")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt([_Input("image", [-1, 3, -1, -1])]))
    with pytest.raises(BundleError, match="only a dynamic batch"):
        build_engine(tmp_path / "enc.onnx", tmp_path / "x.engine", batch_profile=(1, 1, 1))
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt([_Input("image", [-1, 3, 8, 8])]))
    with pytest.raises(BundleError, match="batch_profile"):
        build_engine(tmp_path / "enc.onnx", tmp_path / "x.engine")


# ---- real TensorRT (skipped here) ------------------------------------------------------------------------------
@pytest.mark.trt
@pytest.mark.skipif(not HAVE_TRT, reason="needs the `tensorrt` package and a CUDA GPU (none in CPU CI)")
def test_tensorrt_matches_onnxruntime(bundle: Bundle, toy_model: type[ToyModel]) -> None:
    if (why := trt_mod.missing()) is not None:
        pytest.skip(why)
    from defectgen.runtime.backends.ort import OrtBackend

    toy = toy_model()
    good, mask, stitched, types_ = toy.inputs(6)
    lam = bundle.lambda_vector()
    latent = np.random.default_rng(0).standard_normal((6, 3, 4)).astype(np.float32)
    with trt_mod.TensorRTBackend(bundle, fp16=False) as trt_b, OrtBackend(bundle, threads=1) as ort_b:
        for a, b in zip(trt_b.step("wplus", latent, good, mask, stitched, lam),
                        ort_b.step("wplus", latent, good, mask, stitched, lam), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(trt_b.encode(good, mask), ort_b.encode(good, mask), rtol=1e-3, atol=1e-5)
        assert trt_b.engine_path("encoder.onnx").is_file()
        res = invert(trt_b, bundle, InversionBatch(good, mask, stitched, types_), config=InversionConfig(steps=5))
        assert not res.failed.any() and (res.final_objective < res.objective[0]).all()


@pytest.mark.trt
@pytest.mark.skipif(not HAVE_TRT, reason="needs the `tensorrt` package and a CUDA GPU (none in CPU CI)")
def test_tensorrt_runs_the_format_2_default_bundle() -> None:
    """The shipped bundle keeps its weights in one external `weights.bin`: TensorRT's parser must find them."""
    if (why := trt_mod.missing()) is not None:
        pytest.skip(why)
    from defectgen.runtime.backends.ort import OrtBackend

    b = Bundle.load()
    assert b.manifest.format_version == 2 and any(p.name == "weights.bin" for p in default_bundle_path().iterdir())
    rng = np.random.default_rng(0)
    r = b.resolution
    good = rng.uniform(-1, 1, (1, 3, r, r)).astype(np.float32)
    mask = (rng.uniform(0, 1, (1, 1, r, r)) > 0.7).astype(np.float32)
    latent = np.repeat(b.w_avg("crack")[None, None], b.num_ws, axis=1).astype(np.float32)
    with trt_mod.TensorRTBackend(b, fp16=False) as trt_b, OrtBackend(b, threads=1) as ort_b:
        for a, o in zip(trt_b.step("wplus", latent, good, mask, good, b.lambda_vector()),
                        ort_b.step("wplus", latent, good, mask, good, b.lambda_vector()), strict=True):
            np.testing.assert_allclose(a, o, rtol=1e-3, atol=1e-4)
