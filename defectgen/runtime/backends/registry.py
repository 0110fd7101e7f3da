"""The backend registry: which engines exist, whether each can run here, and how to build one.

    backend = load_backend(bundle, "auto")     # tensorrt > ort-trt > ort-cuda > ort-cpu, by availability

Engines are imported lazily: importing this module loads neither onnxruntime nor tensorrt (and never torch).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from defectgen.errors import choice_error
from defectgen.runtime.backends.base import Backend, BackendUnavailable
from defectgen.runtime.bundle.loader import Bundle


@dataclass(frozen=True)
class BackendSpec:
    """One registry entry: how to check that a backend can run here, and how to build it."""

    name: str
    description: str
    missing: Callable[[], str | None]  # None when usable here, else what is missing (for the error message)
    create: Callable[..., Backend]  # (bundle, **options) -> Backend


def _ort_providers() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def _missing_ort_provider(provider: str, hint: str) -> Callable[[], str | None]:
    def check() -> str | None:
        providers = _ort_providers()
        if not providers:
            return "onnxruntime is not installed (`pip install onnxruntime`)"
        if provider not in providers:
            return f"onnxruntime has no {provider} (available: {', '.join(providers)}); {hint}"
        return None

    return check


def _missing_ort_trt() -> str | None:
    # onnxruntime-gpu lists the TensorRT EP whether or not TensorRT's libraries exist; without them every
    # session would log an error and silently fall back to CUDA, so "auto" must not pick it then
    if (why := _missing_ort_provider("TensorrtExecutionProvider", _GPU_HINT)()) is not None:
        return why
    import ctypes.util

    if importlib.util.find_spec("tensorrt") is None and ctypes.util.find_library("nvinfer") is None:
        return "onnxruntime has the TensorRT provider but TensorRT's libnvinfer is not installed"
    return None


def _missing_tensorrt() -> str | None:
    from defectgen.runtime.backends import tensorrt as trt_mod

    return trt_mod.missing()


def _create_ort(name: str) -> Callable[..., Backend]:
    def create(bundle: Bundle, **options: object) -> Backend:
        from defectgen.runtime.backends.ort import OrtBackend

        return OrtBackend.for_name(bundle, name, **options)  # type: ignore[arg-type]

    return create


def _create_tensorrt(bundle: Bundle, **options: object) -> Backend:
    from defectgen.runtime.backends.tensorrt import TensorRTBackend

    return TensorRTBackend(bundle, **options)  # type: ignore[arg-type]


_GPU_HINT = "install onnxruntime-gpu built for your CUDA (on Jetson: the JetPack wheel)"
BACKENDS: dict[str, BackendSpec] = {
    "ort-cpu": BackendSpec("ort-cpu", "ONNX Runtime, CPU provider",
                           _missing_ort_provider("CPUExecutionProvider", "reinstall onnxruntime"),
                           _create_ort("ort-cpu")),
    "ort-cuda": BackendSpec("ort-cuda", "ONNX Runtime, CUDA provider (CPU fallback)",
                            _missing_ort_provider("CUDAExecutionProvider", _GPU_HINT), _create_ort("ort-cuda")),
    "ort-trt": BackendSpec("ort-trt", "ONNX Runtime, TensorRT provider (CUDA and CPU fallback)",
                           _missing_ort_trt, _create_ort("ort-trt")),
    "tensorrt": BackendSpec("tensorrt", "TensorRT 10 engines built from the bundle (needs `defectgen[trt]`)",
                            _missing_tensorrt, _create_tensorrt),
}
AUTO_ORDER = ("tensorrt", "ort-trt", "ort-cuda", "ort-cpu")  # fastest first


def backend_status() -> dict[str, str | None]:
    """For each registered backend: None if it can run here, else what is missing."""
    return {name: spec.missing() for name, spec in BACKENDS.items()}


def resolve_backend_name(name: str = "auto") -> str:
    """The registry name `load_backend` would use for `name` ("auto" picks the first usable of `AUTO_ORDER`).

    Raises:
        BackendUnavailable: unknown name (with the closest match), or the backend cannot run here.
    """
    if name == "auto":
        reasons = {}
        for candidate in AUTO_ORDER:
            reasons[candidate] = BACKENDS[candidate].missing()
            if reasons[candidate] is None:
                return candidate
        detail = "; ".join(f"{k}: {v}" for k, v in reasons.items())
        msg = f"no backend can run here ({detail})"
        raise BackendUnavailable(msg)
    if name not in BACKENDS:
        raise BackendUnavailable(choice_error("backend", name, ["auto", *BACKENDS]))
    why = BACKENDS[name].missing()
    if why is not None:
        msg = f"backend {name!r} is not available here: {why}"
        raise BackendUnavailable(msg)
    return name


def load_backend(bundle: Bundle, name: str = "auto", **options: object) -> Backend:
    """Build a backend for `bundle`.

    Args:
        bundle: the loaded bundle.
        name: `auto`, `ort-cpu`, `ort-cuda`, `ort-trt` or `tensorrt`.
        **options: passed to the backend, e.g. `fp16=False` (ort-trt, tensorrt), `threads=4` (ort-*).

    Returns:
        A backend; use it as a context manager or call `close()` when done.

    Raises:
        BackendUnavailable: unknown name (with a suggestion) or missing package/provider/GPU (says which).
    """
    return BACKENDS[resolve_backend_name(name)].create(bundle, **options)
