"""TensorRT 10 backend (JetPack 6 / TensorRT 10.3 API): builds engines from the bundle's ONNX on the device.

Only the TensorRT 10 tensor API is used (`num_io_tensors`, `get_tensor_name`, `get_tensor_mode`,
`set_input_shape`, `set_tensor_address`, `execute_async_v3`); no bindings API. `tensorrt` and the CUDA runtime
bindings (`cuda-python`: `cuda.bindings.runtime`, or `cuda.cudart` on older releases; the NVIDIA samples use the
same) are imported lazily, so this module imports on any box. cuda-python rather than pycuda because its runtime
API works in the CUDA primary context that TensorRT itself uses, with no context push/pop, and returns error
codes that one `cuda_check` helper turns into exceptions.

Engines are plain serialized TensorRT engines (no header), cached in the bundle's `trt` cache folder
(`Bundle.cache_dir`) under a key of
TensorRT version + GPU name/compute capability + ONNX sha256 + precision + batch profile: an engine is only valid
for the TensorRT build and GPU it was made on.

Not exercised in this repository's CI (no GPU there); `tests/unit/test_runtime_tensorrt.py` runs it where
`tensorrt` and a GPU exist and tests the pure-python parts everywhere.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from defectgen.errors import BundleError
from defectgen.runtime.backends.base import BackendUnavailable, GraphBackend
from defectgen.runtime.bundle.loader import Bundle

log = logging.getLogger(__name__)
DEFAULT_WORKSPACE = 1 << 30  # 1 GiB: plenty for 64-256 px generators, small enough for an 8 GB Jetson


# ---- lazy imports ------------------------------------------------------------------------------------------
def _import_trt() -> ModuleType:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as e:
        msg = f"the tensorrt backend needs the `tensorrt` package (JetPack ships it; else `pip install " \
              f"'defectgen[trt]'`): {e}"
        raise BackendUnavailable(msg) from None


def _import_cudart() -> ModuleType:
    for mod in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(mod)
        except ImportError:
            continue
    msg = "the tensorrt backend needs the CUDA runtime bindings: `pip install cuda-python` (matching your CUDA)"
    raise BackendUnavailable(msg)


def cuda_check(result: Any) -> Any:
    """Unwrap a cuda-python call result `(err, *values)`: raise `RuntimeError` on error, return the value(s)."""
    cudart = _import_cudart()
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(err)
        msg = f"CUDA error {name.decode() if isinstance(name, bytes) else name} ({int(err)})"
        raise RuntimeError(msg)
    return values[0] if len(values) == 1 else values or None


def missing() -> str | None:
    """None if the tensorrt backend can run here, else what is missing (package, CUDA bindings or GPU)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "the `tensorrt` Python package is not installed (JetPack ships it; or `pip install 'defectgen[trt]'`)"
    try:
        _import_cudart()
        if cuda_check(_import_cudart().cudaGetDeviceCount()) < 1:
            return "no CUDA GPU is visible"
    except (BackendUnavailable, RuntimeError) as e:
        return str(e)
    return None


def gpu_name(device: int = 0) -> str:
    """GPU name plus compute capability, e.g. `Orin (sm_87)`: part of the engine cache key."""
    prop = cuda_check(_import_cudart().cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return f"{name.rstrip(chr(0))} (sm_{prop.major}{prop.minor})"


# ---- engine building and caching ---------------------------------------------------------------------------
def engine_cache_path(bundle: Bundle, file: str, fp16: bool, *, batch_profile: tuple[int, int, int] | None = None,
                      trt_version: str | None = None, gpu: str | None = None) -> Path:
    """Where the engine for one graph file is cached: `<bundle's trt cache>/<stem>-<key>.engine`.

    Args:
        bundle: the bundle (the cache lives beside its files, or in the user cache if that is read-only).
        file: graph file name in the bundle.
        fp16: whether FP16 kernels were allowed.
        batch_profile: (min, opt, max) batch of a symbolic-batch graph; None for fixed-batch graphs.
        trt_version: TensorRT version; default the installed one.
        gpu: GPU name; default `gpu_name()`.

    Returns:
        The path (the file may not exist yet).
    """
    trt_version = trt_version or _import_trt().__version__
    gpu = gpu or gpu_name()
    parts = [trt_version, gpu, bundle.entry(file).sha256, "fp16" if fp16 else "fp32", batch_profile]
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    return bundle.cache_dir("trt") / f"{Path(file).stem}-{key}.engine"


def build_engine(onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], *, fp16: bool = True,
                 workspace_bytes: int = DEFAULT_WORKSPACE,
                 batch_profile: tuple[int, int, int] | None = None) -> Path:
    """Build a TensorRT engine from an ONNX file and write it (atomically) to `engine_path`.

    Args:
        onnx_path: the ONNX graph (external data beside it is found by the parser).
        engine_path: where to write the serialized engine (plain TensorRT bytes, no header).
        fp16: allow FP16 kernels when the platform has fast FP16 (I/O stays float32).
        workspace_bytes: builder workspace memory pool limit.
        batch_profile: (min, opt, max) for a symbolic batch dimension 0; required if the graph has one.

    Returns:
        `engine_path`.

    Raises:
        BundleError: the parser rejects the graph (with the parser's messages and the file name), a dynamic
            dimension other than the batch, or the build fails.
    """
    trt = _import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        msg = f"TensorRT cannot parse {onnx_path}: {errors}"
        raise BundleError(msg)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16 and getattr(builder, "platform_has_fast_fp16", True):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = _batch_profile(builder, network, batch_profile, onnx_path)
    if profile is not None:
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        msg = f"TensorRT failed to build an engine for {onnx_path} (see the TensorRT log above)"
        raise BundleError(msg)
    engine_path = Path(engine_path)
    tmp = engine_path.with_name(f".{engine_path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)
    return engine_path


def _batch_profile(builder: Any, network: Any, batch: tuple[int, int, int] | None, onnx_path: Any) -> Any:
    """Optimisation profile with `batch` = (min, opt, max) on dim 0 of every input whose dim 0 is dynamic."""
    profile, dynamic = builder.create_optimization_profile(), False
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape = list(inp.shape)
        if all(d >= 0 for d in shape):
            continue
        if any(d < 0 for d in shape[1:]) or batch is None:
            msg = f"{onnx_path}: input {inp.name!r} has dynamic dims {shape}; only a dynamic batch (dim 0) " \
                  f"with a batch_profile is supported"
            raise BundleError(msg)
        dynamic = True
        profile.set_shape(inp.name, *[[b, *shape[1:]] for b in batch])
    return profile if dynamic else None


# ---- CUDA memory, RAII -------------------------------------------------------------------------------------
class CudaStream:
    """A CUDA stream that destroys itself (`close()` or `with`)."""

    def __init__(self) -> None:
        self._cudart = _import_cudart()
        self.stream = cuda_check(self._cudart.cudaStreamCreate())

    @property
    def handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        cuda_check(self._cudart.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        if self.stream is not None:
            cuda_check(self._cudart.cudaStreamDestroy(self.stream))
            self.stream = None

    def __enter__(self) -> CudaStream:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class HostDeviceBuffer:
    """Pinned host + device float32 buffers of `size` elements, for one engine I/O tensor at its max shape."""

    def __init__(self, size: int) -> None:
        self._cudart = _import_cudart()
        self.nbytes = max(1, size) * 4
        self.host_ptr = cuda_check(self._cudart.cudaMallocHost(self.nbytes))
        try:
            self.device = cuda_check(self._cudart.cudaMalloc(self.nbytes))
        except BaseException:
            cuda_check(self._cudart.cudaFreeHost(self.host_ptr))
            raise
        self.host = np.ctypeslib.as_array(ctypes.cast(self.host_ptr, ctypes.POINTER(ctypes.c_float)), (max(1, size),))

    def to_device(self, x: np.ndarray, stream: CudaStream) -> None:
        """Stage `x` in pinned memory and queue the copy to the device."""
        n = x.size
        self.host[:n] = x.reshape(-1)
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_check(self._cudart.cudaMemcpyAsync(self.device, self.host_ptr, n * 4, kind, stream.stream))

    def queue_to_host(self, n: int, stream: CudaStream) -> None:
        """Queue the copy of the first `n` elements back to pinned memory (read `host` after synchronize)."""
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(self._cudart.cudaMemcpyAsync(self.host_ptr, self.device, n * 4, kind, stream.stream))

    def close(self) -> None:
        if self.host_ptr is not None:
            self.host = np.empty(0, np.float32)  # drop the view before the memory goes
            cuda_check(self._cudart.cudaFree(self.device))
            cuda_check(self._cudart.cudaFreeHost(self.host_ptr))
            self.host_ptr = self.device = None

    def __enter__(self) -> HostDeviceBuffer:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class _Engine:
    """One deserialized engine, its execution context and I/O buffers sized for the profile's max shapes."""

    def __init__(self, data: bytes, file: str, trt: ModuleType) -> None:
        self.file = file
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            msg = f"cannot deserialize the cached TensorRT engine for {file}"
            raise RuntimeError(msg)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in names:
            if trt.nptype(self.engine.get_tensor_dtype(name)) != np.float32:
                msg = f"bundle file {file}: engine tensor {name!r} is not float32"
                raise BundleError(msg)
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        for name in self.inputs:  # size every buffer for profile 0's max shapes
            shape = list(self.engine.get_tensor_shape(name))
            if min(shape, default=0) < 0:
                shape = list(self.engine.get_tensor_profile_shape(name, 0)[2])
            self.context.set_input_shape(name, shape)
        self.buffers: dict[str, HostDeviceBuffer] = {}
        for name in names:
            self.buffers[name] = HostDeviceBuffer(int(np.prod(list(self.context.get_tensor_shape(name)))))
            self.context.set_tensor_address(name, int(self.buffers[name].device))

    def run(self, feeds: dict[str, np.ndarray], stream: CudaStream) -> dict[str, np.ndarray]:
        for name in self.inputs:
            x = feeds[name]
            self.context.set_input_shape(name, x.shape)
            self.buffers[name].to_device(x, stream)
        if not self.context.execute_async_v3(stream.handle):
            msg = f"TensorRT execution failed for {self.file}"
            raise RuntimeError(msg)
        shapes = {name: tuple(self.context.get_tensor_shape(name)) for name in self.outputs}
        for name in self.outputs:
            self.buffers[name].queue_to_host(int(np.prod(shapes[name])), stream)
        stream.synchronize()
        return {n: self.buffers[n].host[: int(np.prod(s))].reshape(s).copy() for n, s in shapes.items()}

    def close(self) -> None:
        for buf in self.buffers.values():
            buf.close()
        self.buffers.clear()
        self.context = self.engine = None


class TensorRTBackend(GraphBackend):
    """Runs the bundle with TensorRT engines built (once, then cached) from its ONNX graphs.

    Args:
        bundle: the loaded bundle.
        fp16: allow FP16 kernels (where the GPU has fast FP16); I/O stays float32.
        workspace_bytes: builder workspace limit.
        max_batch: largest batch of the encoder/mapping/synthesis engines' profile; bigger calls are chunked.
            Default: the largest step batch.
        device: CUDA device id.
    """

    name = "tensorrt"

    def __init__(self, bundle: Bundle, *, fp16: bool = True, workspace_bytes: int = DEFAULT_WORKSPACE,
                 max_batch: int | None = None, device: int = 0) -> None:
        super().__init__(bundle)
        self._trt = _import_trt()
        cuda_check(_import_cudart().cudaSetDevice(device))
        self.fp16, self.workspace_bytes, self.device = fp16, workspace_bytes, device
        self.max_symbolic_batch = max_batch or max(bundle.manifest.step_batches)
        self._gpu = gpu_name(device)
        self._stream: CudaStream | None = CudaStream()
        self._engines: dict[str, _Engine] = {}

    def engine_path(self, file: str) -> Path:
        """Cached engine of a graph file (built on first use)."""
        return engine_cache_path(self.bundle, file, self.fp16, batch_profile=self._profile(file),
                                 trt_version=self._trt.__version__, gpu=self._gpu)

    def _profile(self, file: str) -> tuple[int, int, int] | None:
        cap = self.max_symbolic_batch or 1
        return None if self.bundle.entry(file).role == "step" else (1, cap, cap)

    def _engine(self, file: str) -> _Engine:
        if file not in self._engines:
            path = self.engine_path(file)
            if not path.is_file():
                log.info("building TensorRT engine for %s (cached at %s)", file, path)
                build_engine(self.bundle.path_of(file), path, fp16=self.fp16,
                             workspace_bytes=self.workspace_bytes, batch_profile=self._profile(file))
            try:
                self._engines[file] = _Engine(path.read_bytes(), file, self._trt)
            except RuntimeError:  # stale or truncated cache file: rebuild once
                build_engine(self.bundle.path_of(file), path, fp16=self.fp16,
                             workspace_bytes=self.workspace_bytes, batch_profile=self._profile(file))
                self._engines[file] = _Engine(path.read_bytes(), file, self._trt)
        return self._engines[file]

    def _run(self, file: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._stream is None:
            msg = "TensorRTBackend is closed"
            raise RuntimeError(msg)
        return self._engine(file).run(feeds, self._stream)

    def close(self) -> None:
        """Free engines, device buffers and the stream. Safe to call twice."""
        for eng in self._engines.values():
            eng.close()
        self._engines.clear()
        if self._stream is not None:
            self._stream.close()
            self._stream = None
