"""Timing with warm-up and spread, and the machine's fp32 matmul ceiling that FLOP shares are quoted against.

The ceiling's one-node ONNX model is written by hand (a few protobuf fields), so measuring needs neither the
`onnx` package nor torch: `defectgen bench` runs on an edge box that has only `pip install defectgen`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median and spread of repeated timings (seconds)."""
    a = np.asarray(samples, dtype=np.float64)
    p25, med, p75 = np.percentile(a, [25, 50, 75])
    return {"n": len(a), "median_s": float(med), "p25_s": float(p25), "p75_s": float(p75),
            "min_s": float(a.min()), "max_s": float(a.max()),
            "iqr_rel": float((p75 - p25) / med) if med > 0 else None}


def timed(fn: Callable[[], object], *, repeats: int, warmup: int = 1, budget_s: float | None = None) -> dict[str, Any]:
    """Time `fn()`: `warmup` untimed calls, then up to `repeats` timed ones.

    Args:
        fn: the work to time.
        repeats: timed calls (at least 1).
        warmup: untimed calls first (session creation, caches, lazy loading).
        budget_s: stop repeating once this much time went into timed calls (after at least 3 of them).

    Returns:
        `summarize` of the timed calls.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    for i in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if budget_s is not None and i >= 2 and sum(samples) > budget_s:
            break
    return summarize(samples)


# ---- the matmul ceiling ----------------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb(num: int, value: int | bytes | str) -> bytes:
    """One protobuf field: varint for ints, length-delimited for bytes/str."""
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, dims: Sequence[str]) -> bytes:
    shape = b"".join(_pb(1, _pb(2, d)) for d in dims)  # TensorShapeProto.dim { dim_param }
    tensor = _pb(1, 1) + _pb(2, shape)  # TypeProto.Tensor: elem_type FLOAT, shape
    return _pb(1, name) + _pb(2, _pb(1, tensor))  # ValueInfoProto: name, type.tensor_type


def matmul_model_bytes() -> bytes:
    """A serialized ONNX model `Y = MatMul(A, B)`, A (M,K), B (K,N) float32, opset 18, built without `onnx`."""
    node = _pb(1, "A") + _pb(1, "B") + _pb(2, "Y") + _pb(3, "matmul") + _pb(4, "MatMul")
    graph = (_pb(1, node) + _pb(2, "matmul_ceiling") + _pb(11, _value_info("A", "MK"))
             + _pb(11, _value_info("B", "KN")) + _pb(12, _value_info("Y", "MN")))
    return _pb(1, 8) + _pb(2, "defectgen.bench") + _pb(7, graph) + _pb(8, _pb(1, "") + _pb(2, 18))


def matmul_ceiling(*, threads: int | None = None, sizes: Sequence[int] = (1024, 2048), repeats: int = 5,
                   numpy: bool | None = None) -> dict[str, Any]:
    """Measure the machine's fp32 matmul GFLOP/s: the ceiling that FLOP shares are quoted against.

    Square n x n @ n x n products (2 n^3 FLOPs) with ONNX Runtime's CPU `MatMul` (`threads` intra-op threads,
    default: the runtime's, one per physical core) and with `numpy.matmul` (its BLAS's default threads, all
    cores: so by default only included when `threads` is the physical core count).

    Args:
        threads: ORT intra-op threads.
        sizes: matrix sides to try.
        repeats: timed runs per engine and size (after one warm-up).
        numpy: also time numpy (default: when `threads` equals the physical core count).

    Returns:
        `{"ceiling_gflops": best median GFLOP/s, "engine": ..., "n": ..., "rows": [per engine and size]}`.
    """
    import onnxruntime as ort

    from defectgen.runtime.backends.ort import physical_cores

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or physical_cores()
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(matmul_model_bytes(), so, providers=["CPUExecutionProvider"])
    with_numpy = so.intra_op_num_threads == physical_cores() if numpy is None else numpy
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        engines: dict[str, Callable[[], object]] = {
            "onnxruntime MatMul": lambda a=a, b=b: sess.run(None, {"A": a, "B": b}),
            "numpy.matmul": lambda a=a, b=b: a @ b,
        }
        if not with_numpy:
            del engines["numpy.matmul"]
        for engine, fn in engines.items():
            t = timed(fn, repeats=repeats, warmup=1)
            rows.append({"engine": engine, "n": n, "gflops_median": 2 * n**3 / t["median_s"] / 1e9,
                         "gflops_best": 2 * n**3 / t["min_s"] / 1e9, "threads": so.intra_op_num_threads
                         if engine.startswith("onnx") else None, "timing": t})
    best = max(rows, key=lambda r: r["gflops_median"])
    return {"ceiling_gflops": best["gflops_median"], "engine": best["engine"], "n": best["n"], "rows": rows,
            "threads": so.intra_op_num_threads,
            "definition": "best median GFLOP/s over engines and sizes of an fp32 n x n @ n x n matmul (2 n^3 FLOPs)"}
