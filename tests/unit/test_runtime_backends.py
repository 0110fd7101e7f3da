"""Backend protocol, fixed-batch padding/chunking, the ORT backend and the backend registry (toy bundle)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import pytest

from defectgen.errors import DefectgenError, JobError
from defectgen.runtime.backends import registry as backend_mod
from defectgen.runtime.backends.base import Backend, BackendUnavailable, pad_rows, plan_chunks
from defectgen.runtime.backends.ort import OrtBackend, optimized_cache_key, physical_cores, providers_for
from defectgen.runtime.backends.registry import BACKENDS, load_backend, resolve_backend_name
from defectgen.runtime.bundle import Bundle

if TYPE_CHECKING:
    from toy_bundle import ToyModel


SPACES = ("wplus", "w", "z")


def test_plan_chunks() -> None:
    assert plan_chunks(1, [1, 4]) == [(0, 1, 1)]
    assert plan_chunks(3, [1, 4, 8]) == [(0, 3, 4)]
    assert plan_chunks(8, [1, 4, 8]) == [(0, 8, 8)]
    assert plan_chunks(11, [1, 4, 8]) == [(0, 8, 8), (8, 3, 4)]
    assert plan_chunks(9, [4]) == [(0, 4, 4), (4, 4, 4), (8, 1, 4)]
    assert plan_chunks(0, [1]) == []


def test_pad_rows() -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(pad_rows(x, 5), [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    assert pad_rows(x, 3) is x


def test_protocol_conformance(backend: OrtBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.name == "ort-cpu"
    assert backend.step_batches("w") == [1, 4]


def test_graphs_match_numpy_reference(backend: OrtBackend, toy: ToyModel, bundle: Bundle) -> None:
    good, mask, stitched, types = toy.inputs(5)
    np.testing.assert_allclose(backend.encode(good, mask), toy.encode(good, mask), rtol=1e-5, atol=1e-6)
    onehot = bundle.type_onehot(types)
    z = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(backend.map(z, onehot), toy.map(z, onehot), rtol=1e-5, atol=1e-6)
    img, logit = backend.synthesize("z", z, onehot)
    img_w, logit_w = backend.synthesize("w", toy.map(z, onehot).astype(np.float32))
    np.testing.assert_allclose(img, img_w, rtol=1e-5, atol=1e-6)
    assert img.shape == (5, 3, 8, 8) and logit.shape == (5, 1, 8, 8)


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("n", [1, 3, 4, 6, 9])
def test_step_padding_and_chunking_match_single_samples(backend: OrtBackend, toy: ToyModel, bundle: Bundle,
                                                        space: str, n: int) -> None:
    good, mask, stitched, types = toy.inputs(n, seed=n)
    onehot = bundle.type_onehot(types) if space == "z" else None
    lam = bundle.lambda_vector()
    latent = np.random.default_rng(n).standard_normal((n, *bundle.latent_shape(space))).astype(np.float32)
    terms, grad = backend.step(space, latent, good, mask, stitched, lam, onehot)
    assert terms.shape == (n, 6) and grad.shape == latent.shape
    for i in range(n):
        t1, g1 = backend.step(space, latent[i:i + 1], good[i:i + 1], mask[i:i + 1], stitched[i:i + 1], lam,
                              None if onehot is None else onehot[i:i + 1])
        np.testing.assert_allclose(terms[i], t1[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(grad[i], g1[0], rtol=1e-6, atol=1e-7)
    ref = toy.terms(space, latent, good, mask, stitched, lam, onehot)
    np.testing.assert_allclose(terms, ref, rtol=1e-4, atol=1e-6)


def test_step_gradient_is_analytic(backend: OrtBackend, toy: ToyModel, bundle: Bundle) -> None:
    good, mask, stitched, _ = toy.inputs(2)
    lam = bundle.lambda_vector()
    c = np.zeros((2, 4), np.float32)
    _, grad = backend.step("w", c, good, mask, stitched, lam)
    opt = toy.optimum("w", good, mask, stitched, lam)
    np.testing.assert_allclose(grad, 2 / 4 * lam.sum() * (c - opt), rtol=1e-4, atol=1e-6)


def test_input_validation(backend: OrtBackend, toy: ToyModel, bundle: Bundle) -> None:
    good, mask, stitched, _ = toy.inputs(2)
    lam = bundle.lambda_vector()
    with pytest.raises(JobError, match=r"latent must have shape \(B, 4\)"):
        backend.step("w", np.zeros((2, 5), np.float32), good, mask, stitched, lam)
    with pytest.raises(JobError, match="mask has batch 1"):
        backend.step("w", np.zeros((2, 4), np.float32), good, mask[:1], stitched, lam)
    with pytest.raises(JobError, match="needs type_onehot"):
        backend.step("z", np.zeros((2, 4), np.float32), good, mask, stitched, lam)
    with pytest.raises(JobError, match="lambdas must have shape"):
        backend.step("w", np.zeros((2, 4), np.float32), good, mask, stitched, lam[:3])
    with pytest.raises(DefectgenError, match="did you mean 'wplus'"):
        backend.synthesize("wplsu", np.zeros((2, 4), np.float32))


def test_sessions_are_lazy_and_optimized_model_cached(bundle: Bundle, toy: ToyModel) -> None:
    b = OrtBackend(bundle, threads=1)
    assert b._sessions == {}
    good, mask, _, _ = toy.inputs(2)
    wp = b.encode(good, mask)
    assert list(b._sessions) == ["encoder.onnx"]
    key = optimized_cache_key(bundle.entry("encoder.onnx").sha256)
    cached = bundle.cache_dir("ort") / f"encoder-{key}.onnx"
    assert cached.is_file()
    b2 = OrtBackend(bundle, threads=1)  # a new process would load the cached, pre-optimised graph
    np.testing.assert_array_equal(b2.encode(good, mask), wp)
    cached.write_bytes(b"garbage")  # a corrupt cache entry is rebuilt, not fatal
    np.testing.assert_array_equal(OrtBackend(bundle, threads=1).encode(good, mask), wp)
    assert cached.stat().st_size > 100


def test_cache_key_depends_on_version_and_checksum() -> None:
    assert optimized_cache_key("a" * 64) == optimized_cache_key("a" * 64)
    assert optimized_cache_key("a" * 64) != optimized_cache_key("b" * 64)
    assert optimized_cache_key("a" * 64) != optimized_cache_key("a" * 64, "CUDAExecutionProvider")


def test_provider_lists(bundle: Bundle) -> None:
    assert providers_for("ort-cpu", bundle) == ["CPUExecutionProvider"]
    assert [p if isinstance(p, str) else p[0] for p in providers_for("ort-cuda", bundle)] == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = providers_for("ort-trt", bundle, fp16=False)
    assert trt[0][0] == "TensorrtExecutionProvider" and trt[0][1]["trt_fp16_enable"] is False
    assert trt[0][1]["trt_engine_cache_path"] == str(bundle.cache_dir("ort_trt"))
    # symbolic graphs get an explicit batch profile under the TensorRT EP; step graphs don't need one
    b = OrtBackend(bundle, trt, name="ort-trt")
    opts = b._providers_for_file("encoder.onnx")[0][1]
    assert opts["trt_profile_max_shapes"] == "image:4x3x8x8,mask:4x1x8x8"
    assert "trt_profile_max_shapes" not in b._providers_for_file("step_w_b4.onnx")[0][1]
    assert b.cache_optimized is False


def test_physical_cores() -> None:
    assert 1 <= physical_cores() <= (__import__("os").cpu_count() or 1)


def test_registry_and_load(bundle: Bundle) -> None:
    assert set(BACKENDS) == {"ort-cpu", "ort-cuda", "ort-trt", "tensorrt"}
    with pytest.raises(BackendUnavailable, match="did you mean 'ort-cpu'"):
        resolve_backend_name("ort-cpy")
    with load_backend(bundle, "ort-cpu", threads=1) as b:
        assert isinstance(b, OrtBackend) and b.name == "ort-cpu"
    assert issubclass(BackendUnavailable, DefectgenError)


def test_unavailable_backend_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_mod, "_ort_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailable, match="ort-cuda.*no CUDAExecutionProvider.*onnxruntime-gpu"):
        resolve_backend_name("ort-cuda")
    monkeypatch.setattr(backend_mod, "_ort_providers", lambda: [])
    with pytest.raises(BackendUnavailable, match="onnxruntime is not installed"):
        resolve_backend_name("ort-cpu")


@pytest.mark.parametrize(("usable", "expected"), [
    ({"tensorrt", "ort-trt", "ort-cuda", "ort-cpu"}, "tensorrt"),
    ({"ort-trt", "ort-cuda", "ort-cpu"}, "ort-trt"),
    ({"ort-cuda", "ort-cpu"}, "ort-cuda"),
    ({"ort-cpu"}, "ort-cpu"),
])
def test_auto_order(monkeypatch: pytest.MonkeyPatch, usable: set[str], expected: str) -> None:
    fake = {name: backend_mod.BackendSpec(name, spec.description, (lambda n=name: None if n in usable else "nope"),
                                          spec.create) for name, spec in BACKENDS.items()}
    monkeypatch.setattr(backend_mod, "BACKENDS", fake)
    assert resolve_backend_name("auto") == expected


def test_auto_nothing_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {name: backend_mod.BackendSpec(name, "", lambda: "gone", spec.create) for name, spec in BACKENDS.items()}
    monkeypatch.setattr(backend_mod, "BACKENDS", fake)
    with pytest.raises(BackendUnavailable, match="no backend can run here.*ort-cpu: gone"):
        resolve_backend_name("auto")


def test_auto_here_is_cpu_without_gpu() -> None:
    if backend_mod.BACKENDS["tensorrt"].missing() is None:
        pytest.skip("tensorrt and a GPU are present")
    assert resolve_backend_name("auto") in {"ort-cpu", "ort-cuda", "ort-trt"}


def test_ort_trt_needs_tensorrt_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes.util

    monkeypatch.setattr(backend_mod, "_ort_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(backend_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendUnavailable, match="libnvinfer is not installed"):
        resolve_backend_name("ort-trt")
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libnvinfer.so.10")
    assert resolve_backend_name("ort-trt") == "ort-trt"


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
def test_provider_fallback_is_logged(bundle: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    b = OrtBackend(bundle, ["CUDAExecutionProvider", "CPUExecutionProvider"], name="ort-cuda", threads=1)
    if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("CUDA provider present")
    with caplog.at_level("WARNING"):
        b.session("mapping.onnx")
    assert "CUDAExecutionProvider could not be used" in caplog.text


def test_optimized_cache_of_external_data_graphs_loads_in_a_later_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped bundle keeps its weights in `weights.bin` (ONNX external data): the cached optimised graph
    must carry its own data, so a second backend loads it instead of re-optimising (and deleting) it."""
    monkeypatch.setenv("DEFECTGEN_CACHE", str(tmp_path))
    bundle = Bundle.load(None)
    file = bundle.step_file("wplus", 1)
    assert (bundle.root / "weights.bin").is_file()  # the case under test: graphs with external data
    r = bundle.resolution
    rng = np.random.default_rng(0)
    good = rng.uniform(-1, 1, (1, 3, r, r)).astype(np.float32)
    mask = np.zeros((1, 1, r, r), np.float32)
    mask[..., r // 4:r // 2, r // 4:r // 2] = 1
    latent = rng.standard_normal((1, *bundle.latent_shape("wplus"))).astype(np.float32)

    def run() -> tuple[np.ndarray, np.ndarray]:
        with OrtBackend(bundle, threads=1) as b:
            return b.step("wplus", latent, good, mask, good, bundle.lambda_vector())

    first = run()
    cache = bundle.cache_dir("ort")
    files = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert any(n.endswith(".onnx") for n in files), files
    optimized: list[str] = []  # sessions asked to write an optimised graph
    real = ort.InferenceSession

    def spy(path: str, so: ort.SessionOptions | None = None, **kw: object) -> ort.InferenceSession:
        if so is not None and so.optimized_model_filepath:
            optimized.append(path)
        return real(path, so, **kw)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    second = run()
    assert optimized == [], f"{file} was optimised again"
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == files  # nothing rewritten or deleted
    np.testing.assert_array_equal(second[0], first[0])
    np.testing.assert_array_equal(second[1], first[1])


def test_rebuilt_cache_replaces_the_old_graphs_data(bundle: Bundle, toy: ToyModel) -> None:
    """A cache entry that does not load is rebuilt; the data file of the graph it replaced goes with it."""
    good, mask, _, _ = toy.inputs(2)
    want = OrtBackend(bundle, threads=1).encode(good, mask)
    key = optimized_cache_key(bundle.entry("encoder.onnx").sha256)
    cached = bundle.cache_dir("ort") / f"encoder-{key}.onnx"
    stale = cached.with_name(f"{cached.stem}.1-deadbeef.data")
    stale.write_bytes(b"old")
    cached.write_bytes(b"garbage")
    np.testing.assert_array_equal(OrtBackend(bundle, threads=1).encode(good, mask), want)
    assert cached.stat().st_size > 100
    assert not stale.exists()
    assert not [p for p in cached.parent.iterdir() if p.name.endswith(".tmp")]
