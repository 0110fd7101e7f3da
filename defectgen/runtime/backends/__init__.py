"""Engines that run a bundle's graphs: the `Backend` protocol (`base`), ONNX Runtime (`ort`), TensorRT
(`tensorrt`) and the registry that picks one (`registry`). Import the engines' modules directly; this package
re-exports only the names every caller needs.
"""

from defectgen.runtime.backends.base import Backend, BackendUnavailable, GraphBackend, plan_chunks
from defectgen.runtime.backends.registry import backend_status, load_backend, resolve_backend_name

__all__ = ["Backend", "BackendUnavailable", "GraphBackend", "backend_status", "load_backend", "plan_chunks",
           "resolve_backend_name"]
