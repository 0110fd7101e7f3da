"""What an ONNX graph costs: FLOPs counted from its shapes (needs the optional `onnx` package) and ONNX
Runtime's own per-op profile.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

FLOP_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _shapes(model: Any) -> dict[str, list[int | None]]:
    def dims(t: Any) -> list[int | None]:
        return [d.dim_value if d.HasField("dim_value") else None for d in t.type.tensor_type.shape.dim]

    g = model.graph
    out = {v.name: dims(v) for v in list(g.value_info) + list(g.input) + list(g.output)}
    out.update({t.name: list(t.dims) for t in g.initializer})
    for node in g.node:  # Constant nodes carry their value as an attribute
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = list(a.t.dims)
    return out


def _attr(node: Any, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _known(*shapes: list[int | None] | None) -> bool:
    return all(s is not None and all(isinstance(d, int) and d > 0 for d in s) for s in shapes)


def node_macs(node: Any, shapes: dict[str, list[int | None]]) -> int | None:
    """Multiply-accumulates of one Conv / ConvTranspose / MatMul / Gemm node (None when a shape is unknown)."""
    ins = [shapes.get(n) for n in node.input[:2]]
    y = shapes.get(node.output[0])
    if node.op_type == "Conv":  # every output element: Cin/groups x kernel MACs
        if not _known(ins[1], y):
            return None
        return math.prod(y) * math.prod(ins[1][1:])  # type: ignore[index,arg-type]
    if node.op_type == "ConvTranspose":  # every input element scatters into Cout/groups x kernel outputs
        if not _known(ins[0], ins[1]):
            return None
        return math.prod(ins[0]) * math.prod(ins[1][1:])  # type: ignore[index,arg-type]
    if node.op_type in ("MatMul", "Gemm"):
        if not _known(ins[0], y):
            return None
        a = ins[0]
        k = a[0] if node.op_type == "Gemm" and _attr(node, "transA", 0) else a[-1]  # type: ignore[index]
        return math.prod(y) * k  # type: ignore[arg-type]
    return None


def count_flops(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """FLOPs of one run of an ONNX graph: 2 x MACs of its Conv, ConvTranspose, MatMul and Gemm nodes.

    Shapes come from `onnx.shape_inference` (the step graphs have fixed shapes). Elementwise, reduction and
    layout ops are not counted: they are memory-bound and would inflate a "share of the matmul ceiling".

    Args:
        path: the ONNX file.

    Returns:
        `{"flops": total, "by_op": {op: flops}, "nodes": {op: count}, "unknown_shape_nodes": n}`, or None when
        the `onnx` package is not installed.
    """
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True)
    shapes = _shapes(model)
    by_op: dict[str, int] = {}
    nodes: dict[str, int] = {}
    unknown = 0
    for node in model.graph.node:
        if node.op_type not in FLOP_OPS:
            continue
        macs = node_macs(node, shapes)
        nodes[node.op_type] = nodes.get(node.op_type, 0) + 1
        if macs is None:
            unknown += 1
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + 2 * macs
    return {"flops": sum(by_op.values()), "by_op": by_op, "nodes": nodes, "unknown_shape_nodes": unknown}


# ---- per-op profile --------------------------------------------------------------------------------------------
def profile_ops(path: str | os.PathLike[str], feeds: dict[str, np.ndarray], *, runs: int = 5,
                threads: int | None = None, options: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Per-op-type kernel time of an ONNX graph under ONNX Runtime's profiler (CPU provider).

    Args:
        path: the ONNX file.
        feeds: its inputs.
        runs: profiled runs after one warm-up run (whose events are dropped).
        threads: intra-op threads (default: one per physical core, as the runtime).
        options: extra changes to the `SessionOptions` (e.g. an optimisation level), applied last.

    Returns:
        `{"ops": [{"op", "ms_per_run", "share", "nodes"}...] (slowest first), "top_kernels": the 25 slowest
        (op, input shapes) groups, "kernel_ms_per_run", "wall_ms_per_run"}`; op names are the *optimised*
        graph's (e.g. `FusedConv`, `ReorderInput`).
    """
    import onnxruntime as ort

    from defectgen.runtime.backends.ort import physical_cores

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads or physical_cores()
        so.inter_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        so.log_severity_level = 3
        if options is not None:
            options(so)
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    return _aggregate_profile(events, runs)


def _aggregate_profile(events: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])
    start = model_runs[0]["ts"] + model_runs[0]["dur"] if len(model_runs) > runs else 0  # drop the warm-up run
    per_op: dict[str, float] = {}
    per_shape: dict[tuple[str, str], float] = {}
    node_names: dict[str, set[str]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        args = e.get("args", {})
        op = args.get("op_name", "?")
        per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3
        node_names.setdefault(op, set()).add(e["name"])
        shapes = json.dumps([list(t.values())[0] for t in args.get("input_type_shape", [])])
        per_shape[op, shapes] = per_shape.get((op, shapes), 0.0) + e["dur"] / 1e3
    total = sum(per_op.values())
    ops = [{"op": op, "ms_per_run": ms / runs, "share": ms / total if total else None, "nodes": len(node_names[op])}
           for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])]
    top = [{"op": op, "input_shapes": json.loads(shapes), "ms_per_run": ms / runs,
            "share": ms / total if total else None}
           for (op, shapes), ms in sorted(per_shape.items(), key=lambda kv: -kv[1])[:25]]
    wall = [e["dur"] / 1e3 for e in model_runs if e["ts"] >= start]
    return {"ops": ops, "top_kernels": top, "kernel_ms_per_run": total / runs, "runs": runs,
            "wall_ms_per_run": float(np.median(wall)) if wall else None}
