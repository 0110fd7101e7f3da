"""ONNX Runtime backend: `ort-cpu`, `ort-cuda` (CUDA EP + CPU) and `ort-trt` (TensorRT EP + CUDA + CPU).

Cold start matters on a line-side box, so sessions are created lazily, one per graph file, on first use (a job
in `w` space never loads the `wplus` graphs), and on the CPU provider the optimised graph is cached:

- the first session of a file runs all graph optimisations (`ORT_ENABLE_ALL`) and saves the result to
  the bundle's `ort` cache folder (`Bundle.cache_dir`: `<user cache>/bundles/<key>/ort/<stem>-<key>.onnx`);
  later processes load that file with optimisations disabled
  (measured on the 64 px PoC step graph, 2 CPU cores: 126 ms -> 40 ms session creation, identical outputs).
  Its initializers of 1 KiB and more go to a data file of its own beside it (`<stem>-<key>.<token>.data`):
  left to itself ORT keeps the untouched ones pointing at the bundle's shared `weights.bin`, which it then
  looks for in the cache folder, so the cache never loaded and every run re-optimised.
- `key` hashes the onnxruntime version, the provider, the file's sha256, the CPU architecture and model name:
  `ORT_ENABLE_ALL` includes the NCHWc layout transform, whose blocked layout depends on the CPU's vector
  width, so ORT itself warns that such a model only runs correctly "in the same environment".
- CPU provider only. With the CUDA EP the saved graph carries CUDA-specific fusions, and the TensorRT EP's
  compiled partitions cannot be saved as ONNX at all; it has its own engine cache instead
  (`trt_engine_cache_path`, under the bundle's `ort_trt` cache folder).

IOBinding was measured for the step graph on the CPU provider (toy step graph 0.038 vs 0.041 ms; 64 px PoC step
graph, B=4, 216 vs 216 ms median, interleaved A/B runs): no gain, so plain `session.run` is used. It would pay
on CUDA only with device-resident inputs across Adam steps, which this per-call API does not keep.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import platform
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from defectgen.errors import BundleError, choice_error
from defectgen.runtime.backends.base import GraphBackend
from defectgen.runtime.bundle.loader import Bundle
from defectgen.runtime.bundle.manifest import TensorSpec, compare_io

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}
log = logging.getLogger(__name__)
Provider = str | tuple[str, dict[str, Any]]
PROVIDER_SETS = ("ort-cpu", "ort-cuda", "ort-trt")
_DATA_SUFFIX = ".data"  # the cached graph's own external-data file
_EXTERNAL_MIN_BYTES = 1024  # smaller initializers stay inline: ORT must read shape constants (Split sizes) at load


def physical_cores() -> int:
    """Physical CPU cores usable by this process (hyper-threads don't help ORT's GEMM/Conv); >= 1.

    Reads `/proc/cpuinfo` (physical id, core id pairs) and caps by the CPU affinity mask; falls back to
    `os.cpu_count()` where that file does not exist.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return max(1, usable)
    cores, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            cores.add((phys, value.strip()))
    return max(1, min(len(cores) or usable, usable))


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "CPU part")):
                return line.partition(":")[2].strip()
    return platform.processor()


def optimized_cache_key(file_sha256: str, provider: str = "CPUExecutionProvider") -> str:
    """Cache key of an ORT-optimised graph: ORT version, provider, source checksum, CPU arch and model."""
    parts = [ort.__version__, provider, file_sha256, platform.machine(), _cpu_model(), "ORT_ENABLE_ALL"]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def providers_for(name: str, bundle: Bundle, *, fp16: bool = True, device_id: int = 0) -> list[Provider]:
    """ORT provider list for a registry name (`ort-cpu`, `ort-cuda`, `ort-trt`).

    Raises:
        BundleError: unknown name (with a suggestion).
    """
    cpu: list[Provider] = ["CPUExecutionProvider"]
    cuda: list[Provider] = [("CUDAExecutionProvider", {"device_id": device_id}), *cpu]
    if name == "ort-cpu":
        return cpu
    if name == "ort-cuda":
        return cuda
    if name == "ort-trt":
        cache = str(bundle.cache_dir("ort_trt"))
        trt = {"device_id": device_id, "trt_fp16_enable": fp16, "trt_engine_cache_enable": True,
               "trt_engine_cache_path": cache, "trt_timing_cache_enable": True, "trt_timing_cache_path": cache}
        return [("TensorrtExecutionProvider", trt), *cuda]
    raise BundleError(choice_error("onnxruntime backend", name, PROVIDER_SETS))


class OrtBackend(GraphBackend):
    """Runs the bundle's graphs with ONNX Runtime.

    Args:
        bundle: the loaded bundle.
        providers: ORT providers in priority order (see `providers_for`); default CPU.
        name: registry name reported by `backend.name`.
        threads: intra-op threads; default `physical_cores()`.
        cache_optimized: cache optimised graphs on disk (CPU provider only, see module doc).
        max_batch: largest batch for symbolic-batch graphs under the TensorRT EP profile (default: largest
            step batch); ignored by other providers.
    """

    def __init__(self, bundle: Bundle, providers: Sequence[Provider] | None = None, *, name: str = "ort-cpu",
                 threads: int | None = None, cache_optimized: bool = True, max_batch: int | None = None) -> None:
        super().__init__(bundle)
        self.name = name
        self.providers: list[Provider] = list(providers or ["CPUExecutionProvider"])
        self.threads = threads or physical_cores()
        self.cache_optimized = cache_optimized and self._provider_names() == ["CPUExecutionProvider"]
        self.max_batch = max_batch or max(bundle.manifest.step_batches)
        self._sessions: dict[str, ort.InferenceSession] = {}
        if self.cache_optimized:
            bundle.cache_dir("ort")  # an unusable cache folder is a fatal error now, not every job's failure

    @classmethod
    def for_name(cls, bundle: Bundle, name: str, *, fp16: bool = True, device_id: int = 0,
                 **kwargs: Any) -> OrtBackend:
        """Build from a registry name (`ort-cpu`, `ort-cuda`, `ort-trt`); extra kwargs go to `__init__`."""
        return cls(bundle, providers_for(name, bundle, fp16=fp16, device_id=device_id), name=name, **kwargs)

    def close(self) -> None:
        """Drop all sessions (they free their memory when garbage-collected)."""
        self._sessions.clear()

    def _provider_names(self) -> list[str]:
        return [p if isinstance(p, str) else p[0] for p in self.providers]

    def _run(self, file: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = self.session(file)
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds), strict=True))

    # ---- sessions ----------------------------------------------------------------------------------------
    def session(self, file: str) -> ort.InferenceSession:
        """The (lazily created) session of one graph file; its I/O names are checked against the manifest."""
        if file not in self._sessions:
            sess = self._create(file)
            self._check_io(file, sess)
            wanted = self._provider_names()[0]
            if wanted not in sess.get_providers():  # ORT falls back silently when a GPU library fails to load
                log.warning("%s: %s could not be used at run time; running on %s", file, wanted,
                            ", ".join(sess.get_providers()))
            self._sessions[file] = sess
        return self._sessions[file]

    def _options(self, level: ort.GraphOptimizationLevel) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1  # the graphs are one chain; parallelism is inside ops
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        return so

    def _create(self, file: str) -> ort.InferenceSession:
        src = self.bundle.path_of(file)
        providers = self._providers_for_file(file)
        if not self.cache_optimized:
            return ort.InferenceSession(str(src), self._options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                                        providers=providers)
        key = optimized_cache_key(self.bundle.entry(file).sha256)
        cached = self.bundle.cache_dir("ort") / f"{Path(file).stem}-{key}.onnx"
        if cached.is_file():
            try:  # already optimised: re-running the optimisers would only cost start-up time
                return ort.InferenceSession(str(cached), self._options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                                            providers=providers)
            except Exception as e:  # noqa: BLE001 - a truncated/foreign cache file: rebuilt (and replaced) below
                log.warning("%s: cached optimised graph %s does not load (%s); rebuilding it", file, cached,
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
        return self._optimize_into(src, cached, providers)

    def _optimize_into(self, src: Path, cached: Path, providers: list[Provider]) -> ort.InferenceSession:
        """Create the session from `src` with all optimisations and install the optimised graph as `cached`.

        The graph's large initializers go to a data file of its own beside it (`<stem>-<key>.<token>.data`),
        so the cache never points back at the bundle's external data (`weights.bin`, which ORT would look for
        in the cache folder). The token is unique per writer and the graph is renamed into place last, so a
        concurrent process sees no graph or a whole graph with its whole data file; data files of graphs this
        one replaced are deleted.
        """
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        tmp = cached.with_name(f".{cached.name}.{token}.tmp")
        data = cached.with_name(f"{cached.stem}.{token}{_DATA_SUFFIX}")
        so = self._options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        so.optimized_model_filepath = str(tmp)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", data.name)
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                    str(_EXTERNAL_MIN_BYTES))
        so.log_severity_level = 3  # ORT warns the NCHWc graph is hardware specific: the cache key says so already
        try:
            sess = ort.InferenceSession(str(src), so, providers=providers)
        except BaseException:
            for p in (tmp, data):
                p.unlink(missing_ok=True)
            raise
        if tmp.is_file():
            os.replace(tmp, cached)  # atomic: a concurrent process sees no file or a whole one
            for old in cached.parent.glob(f"{glob.escape(cached.stem)}.*{_DATA_SUFFIX}"):
                if old != data:
                    old.unlink(missing_ok=True)
        else:
            data.unlink(missing_ok=True)
        return sess

    def _providers_for_file(self, file: str) -> list[Provider]:
        """Provider list for one file.

        Under the TensorRT EP, symbolic-batch graphs get an explicit batch profile, so TensorRT builds one engine
        for batches 1..max_batch instead of one per batch size seen.
        """
        entry = self.bundle.entry(file)
        if entry.role == "step" or "TensorrtExecutionProvider" not in self._provider_names():
            return list(self.providers)

        def shapes(batch: int) -> str:
            return ",".join(f"{t.name}:" + "x".join(str(batch if isinstance(d, str) else d) for d in t.shape)
                            for t in entry.inputs)

        out: list[Provider] = []
        for p in self.providers:
            if not isinstance(p, str) and p[0] == "TensorrtExecutionProvider":
                opts = {**p[1], "trt_profile_min_shapes": shapes(1), "trt_profile_opt_shapes": shapes(self.max_batch),
                        "trt_profile_max_shapes": shapes(self.max_batch)}
                p = (p[0], opts)
            out.append(p)
        return out

    def _check_io(self, file: str, sess: ort.InferenceSession) -> None:
        """The graph's real inputs and outputs are what the manifest declares (the same check as at load)."""
        entry = self.bundle.entry(file)
        for kind, got, want in (("inputs", sess.get_inputs(), entry.inputs),
                                ("outputs", sess.get_outputs(), entry.outputs)):
            real = [TensorSpec(t.name, [d if isinstance(d, int) else str(d) for d in t.shape],
                               _ORT_DTYPES.get(t.type, t.type)) for t in got]
            compare_io(f"{file} (graph)", kind, real, want)
