"""`defectgen bench`: time the runtime's step graph and end-to-end defects/s on a bundle, with the runtime only.

Torch-free (DESIGN.md dependency rule), so it runs on an edge box that has only `pip install defectgen`. The
repository's `benchmarks/` scripts import the measuring pieces from here, so the edge command and the workstation
benchmarks time, count and stamp the same way:

- `machine_stamp()`: CPU model, cores, memory, library versions, git commit, load average: every absolute time
  is stamped with the machine it was measured on.
- `timed(fn)`: warm-up calls excluded, then repeated calls; the median and the spread (p25/p75, min/max).
- `matmul_ceiling()`: the machine's measured fp32 matmul GFLOP/s, the ceiling FLOP shares are quoted against:
  an ONNX Runtime `MatMul` (the engine that runs the step graph, same thread count) and `numpy.matmul`; the
  ceiling is the best median of the two. The one-node ONNX model is written by hand (a few protobuf fields), so
  this needs neither the `onnx` package nor torch.
- `count_flops(path)`: FLOPs of one run of an ONNX graph, 2 x multiply-accumulates of its Conv, ConvTranspose,
  MatMul and Gemm nodes from the shapes onnx shape inference gives (elementwise ops are not counted). Needs the
  `onnx` package (not a runtime dependency): without it FLOP shares are reported as null.
- `profile_ops(path, feeds)`: ONNX Runtime's own profiler, per-op-type kernel time per run (warm-up excluded).
- `make_jobs` / `time_step` / `time_end_to_end`: realistic jobs (the shipped example parts, random masks of each
  type, a real defect from the bundle's bank stitched in) timed through the one inversion loop (`invert`) and
  the runtime's compositing. End to end = encoder init + K Adam steps + synthesis + feathered composite at the
  part's full resolution; reading and preparing the job (files, masks, stitching) happens before and is not
  timed. Early stopping is off while timing, so every run does exactly K steps.

Results are a JSON-ready dict whose `summary` holds the headline figures under the keys of issue 7
(`SUMMARY_KEYS`); figures that need torch (the speed-up over torch eager and over the idinvert reference) are
null here and measured by `benchmarks/throughput.py`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.data.imageio import from_model, read_image, read_mask, to_model
from defectgen.data.masks import part_mask, random_mask, stitch
from defectgen.errors import JobError
from defectgen.runtime.backend import Backend, load_backend, plan_chunks, resolve_backend_name
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.compose import Crop, alpha_for, composite, model_inputs
from defectgen.runtime.invert import InversionBatch, InversionConfig, InversionResult, invert

SUMMARY_KEYS = ("ort_vs_torch_step_speedup", "end_to_end_speedup_vs_idinvert", "step_flops_share_of_ceiling")
EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
FLOP_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "onnxscript", "opencv-python-headless", "torch",
            "tensorrt", "defectgen")


# ---- machine stamp ---------------------------------------------------------------------------------------------
def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> dict[str, Any] | None:
    """HEAD of the repository this package is imported from (None for an installed wheel)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(dirty)}


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def machine_stamp() -> dict[str, Any]:
    """Where and with what a measurement was taken (goes into every result file).

    Returns:
        CPU model and core counts, memory, OS, Python and package versions, git commit, UTC time and the
        1/5/15-minute load averages (a loaded machine explains noisy timings).
    """
    from defectgen.runtime.ort import _cpu_model, physical_cores

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {
        "cpu_model": _cpu_model(), "arch": platform.machine(), "physical_cores": physical_cores(),
        "usable_cpus": usable, "memory_gib": _memory_gib(), "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: v for p in PACKAGES if (v := _version(p)) is not None},
        "git": _git_commit(), "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg": load,
    }


def stamp_line(stamp: dict[str, Any]) -> str:
    """One line naming the machine and versions, for table headers and plot footers."""
    v = stamp.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "onnxruntime-gpu", "torch", "numpy") if k in v)
    git = stamp.get("git") or {}
    commit = f", git {git['commit']}{'+dirty' if git.get('dirty') else ''}" if git else ""
    return (f"{stamp['cpu_model']} ({stamp['physical_cores']} cores), {libs}, Python {stamp['python']}"
            f"{commit}, {stamp['date_utc']}, load avg {stamp.get('loadavg')}")


# ---- timing ----------------------------------------------------------------------------------------------------
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

    from defectgen.runtime.ort import physical_cores

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


# ---- FLOPs from a graph ----------------------------------------------------------------------------------------
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

    from defectgen.runtime.ort import physical_cores

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


# ---- jobs --------------------------------------------------------------------------------------------------------
@dataclass
class BenchJobs:
    """A batch of prepared jobs: full-resolution parts and masks plus the model inputs `invert` takes."""

    images: list[np.ndarray]  # uint8 HxWx3 good parts, full resolution
    masks: list[np.ndarray]  # uint8 HxW {0,1} target masks, full resolution
    batch: InversionBatch  # model-resolution good / mask / stitched / types
    feather_px: float = 3.0  # compositing feather in model pixels (the bundle's default)
    crops: list[Crop] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def _example_parts() -> list[np.ndarray]:
    paths = sorted(EXAMPLES.glob("*.png"))
    if not paths:
        msg = f"no example parts in {EXAMPLES} (broken install?)"
        raise JobError(msg)
    return [read_image(p) for p in paths]


def make_jobs(bundle: Bundle, n: int, *, seed: int = 0, types: Sequence[str] | None = None,
              parts: Sequence[np.ndarray] | None = None) -> BenchJobs:
    """`n` realistic jobs: example parts (cycled), a random mask of each defect type (cycled), and a real defect
    of that type from the bundle's bank stitched in (S = I where the bank has none), as `defectgen run` does.

    Args:
        bundle: the bundle (resolution, defect types, bank).
        n: number of jobs.
        seed: randomness of masks, references and stitching.
        types: defect types to cycle through (default: every non-"good" type of the bundle).
        parts: good images (uint8 HxWx3) to use instead of the shipped example parts.

    Returns:
        The prepared jobs.
    """
    rng = np.random.default_rng(seed)
    parts = list(parts) if parts is not None else _example_parts()
    types = list(types or bundle.defect_types[1:] or bundle.defect_types)
    feather = float(bundle.defaults.get("feather_px", 3))
    res = bundle.resolution
    images, masks, crops, goods, mms, sts, tys = [], [], [], [], [], [], []
    for i in range(n):
        image, ty = parts[i % len(parts)], types[i % len(types)]
        mask = random_mask(ty, part_mask(image), rng)
        crop = Crop.full(image.shape)
        good, mask_m = model_inputs(image, mask, crop, res)
        stitched = good.copy()
        if bank := bundle.bank(ty):
            ref_path, ref_mask_path = bank[int(rng.integers(len(bank)))]
            ref_img = read_image(ref_path)
            s = stitch(from_model(good), ref_img, read_mask(ref_mask_path, ref_img.shape[:2]),
                       mask_m[0].astype(np.uint8), feather_px=max(1, round(feather)), rng=rng)
            stitched = to_model(s, res)
        images.append(image)
        masks.append(mask)
        crops.append(crop)
        goods.append(good)
        mms.append(mask_m)
        sts.append(stitched)
        tys.append(ty)
    batch = InversionBatch(good=np.stack(goods), mask=np.stack(mms), stitched=np.stack(sts), types=tys)
    return BenchJobs(images=images, masks=masks, batch=batch, feather_px=feather, crops=crops)


# ---- quality of one inversion ----------------------------------------------------------------------------------
def mask_iou(mask_logit: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-sample IoU of the generated mask (σ(logit) > 0.5) with the target mask, (B,)."""
    gen, tgt = mask_logit > 0, mask > 0.5
    inter = (gen & tgt).reshape(len(gen), -1).sum(1)
    union = (gen | tgt).reshape(len(gen), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def background_psnr(image: np.ndarray, good: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-sample PSNR (dB) of the generated image vs the good image outside the target mask, (B,).

    Images in [-1, 1] (peak-to-peak 2); the generated image is clipped to that range first, as the composite does.
    """
    bg = 1.0 - (mask > 0.5)
    err = ((np.clip(image, -1, 1) - good) ** 2 * bg).reshape(len(image), -1).sum(1)
    n = np.maximum(bg.reshape(len(image), -1).sum(1) * image.shape[1], 1)
    mse = np.maximum(err / n, 1e-12)
    return 10.0 * np.log10(4.0 / mse)


def quality(result: InversionResult, batch: InversionBatch) -> dict[str, float]:
    """Mean mask IoU, background PSNR and objective of an inversion result."""
    return {"mask_iou": float(mask_iou(result.mask_logit, batch.mask).mean()),
            "bg_psnr_db": float(background_psnr(result.image, batch.good, batch.mask).mean()),
            "objective": float(np.nanmean(result.final_objective))}


# ---- what is timed ------------------------------------------------------------------------------------------
def step_inputs(bundle: Bundle, jobs: BenchJobs, space: str) -> dict[str, Any]:
    """Arguments of `backend.step` for a batch of jobs, the latent at the type's `w_avg` (timing only)."""
    b = jobs.batch
    w = np.stack([bundle.w_avg(t) for t in b.types]).astype(np.float32)
    latent = {"wplus": np.repeat(w[:, None], bundle.num_ws, 1), "w": w,
              "z": np.zeros((len(b), bundle.z_dim), np.float32)}[space]
    return {"space": space, "latent": np.ascontiguousarray(latent), "good": b.good, "mask": b.mask,
            "stitched": b.stitched, "lambdas": bundle.lambda_vector(),
            "type_onehot": bundle.type_onehot(b.types) if space == "z" else None}


def time_step(backend: Backend, bundle: Bundle, jobs: BenchJobs, *, space: str = "wplus", repeats: int = 10,
              warmup: int = 2, budget_s: float | None = None) -> dict[str, Any]:
    """Time one optimisation step (`backend.step`: forward + backward) on a batch of jobs.

    Returns:
        `timed` statistics plus `batch`.
    """
    args = step_inputs(bundle, jobs, space)
    stats = timed(lambda: backend.step(**args), repeats=repeats, warmup=warmup, budget_s=budget_s)
    return {"batch": len(jobs), **stats}


def end_to_end(backend: Backend, bundle: Bundle, jobs: BenchJobs, config: InversionConfig,
               ) -> tuple[InversionResult, list[np.ndarray]]:
    """One end-to-end run: `invert` (init + steps + synthesis) then the feathered full-resolution composite."""
    result = invert(backend, bundle, jobs.batch, config=config)
    res = bundle.resolution
    finals = [composite(img, result.image[i], alpha_for(m, crop, res, jobs.feather_px), crop)
              for i, (img, m, crop) in enumerate(zip(jobs.images, jobs.masks, jobs.crops, strict=True))]
    return result, finals


def product_config(bundle: Bundle, steps: int, **overrides: Any) -> InversionConfig:
    """The runtime's inversion at `steps` Adam steps (bundle defaults otherwise), early stop off for timing."""
    d = bundle.defaults
    kw: dict[str, Any] = {"space": d.get("space", "wplus"), "steps": steps, "lr": float(d.get("lr", 0.05)),
                          "init": d.get("init", "encoder"), "early_stop_patience": 0}
    kw.update(overrides)
    return InversionConfig(**kw)


def idinvert_config(space: str = "wplus") -> InversionConfig:
    """The idinvert reference setting: Adam, lr 0.01 constant, 100 steps, from `w_avg` (issue 7)."""
    return InversionConfig(space=space, steps=100, lr=0.01, init="wavg", lr_schedule="constant",
                           early_stop_patience=0)


def time_end_to_end(backend: Backend, bundle: Bundle, jobs: BenchJobs, config: InversionConfig, *,
                    repeats: int = 3, warmup: int = 1, budget_s: float | None = None) -> dict[str, Any]:
    """Defects/s of `end_to_end` for one batch of jobs, with the quality of the (last) result.

    Returns:
        `timed` statistics, `defects_per_s` (batch / median), the config's steps/lr/init, and `quality`.
    """
    last: list[InversionResult] = []

    def run() -> None:
        last[:] = [end_to_end(backend, bundle, jobs, config)[0]]

    stats = timed(run, repeats=repeats, warmup=warmup, budget_s=budget_s)
    return {"batch": len(jobs), "steps": config.steps, "lr": config.lr, "init": config.init,
            "space": config.space, "lr_schedule": config.lr_schedule, **stats,
            "defects_per_s": len(jobs) / stats["median_s"], "quality": quality(last[0], jobs.batch)}


# ---- `defectgen bench` -----------------------------------------------------------------------------------------
def step_graph_flops(bundle: Bundle, space: str, batch: int) -> dict[str, Any]:
    """The step graph calls `backend.step` makes for `batch` samples (padded / chunked to exported batches, as
    `plan_chunks` does) and their FLOPs: `{"graph": names, "graph_calls": n, "flops": count_flops-style or None}`.
    """
    chunks = plan_chunks(batch, bundle.step_batches(space))
    files = [bundle.step_file(space, b) for _, _, b in chunks]
    counted = {f: count_flops(bundle.path_of(f)) for f in set(files)}
    flops = None
    if all(counted.values()):
        flops = {"flops": sum(counted[f]["flops"] for f in files)}  # type: ignore[index]
    return {"graph": ", ".join(dict.fromkeys(files)), "graph_calls": len(files), "flops": flops}


def step_share(flops: dict[str, Any] | None, median_s: float, ceiling: dict[str, Any] | None) -> float | None:
    """Achieved step FLOP/s as a share of the matmul ceiling (None when either is unknown)."""
    if not flops or not ceiling or not flops.get("flops") or median_s <= 0:
        return None
    return flops["flops"] / median_s / (ceiling["ceiling_gflops"] * 1e9)


def run_bench(bundle_path: str | os.PathLike[str] | None = None, *, batches: Sequence[int] = (1, 4, 8),
              backend: str = "auto", quick: bool = False, steps: Sequence[int] = (5, 10, 20),
              space: str = "wplus", profile: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Time the step graph and end-to-end defects/s of a bundle on one backend (runtime only, no torch).

    Args:
        bundle_path: bundle folder or .zip (default: the embedded one).
        batches: batch sizes to time.
        backend: `auto`, `ort-cpu`, `ort-cuda`, `ort-trt` or `tensorrt`.
        quick: few repeats, K = 5 only, smaller matmul ceiling (a smoke test; labelled `quick` in the result).
        steps: Adam steps K of the end-to-end runs.
        space: latent space.
        profile: also profile the largest batch's step graph per op (ONNX Runtime CPU).
        threads: ONNX Runtime intra-op threads (default: the runtime's, one per physical core). On a box
            shared with other work, 1 thread can be faster: waiting for a descheduled worker at every op costs.

    Returns:
        JSON-ready results: `summary` (issue 7's throughput keys), `machine`, `ceiling`, `step`, `end_to_end`.

    Raises:
        BundleError: bad bundle, space or batch. BackendUnavailable: the backend cannot run here.
    """
    bundle = Bundle.load(bundle_path)
    bundle.check_space(space)
    name = resolve_backend_name(backend)
    repeats, e2e_repeats = (3, 1) if quick else (15, 3)
    steps = (min(steps),) if quick else tuple(steps)
    stamp = machine_stamp()
    on_cpu = name == "ort-cpu"
    ceiling = matmul_ceiling(threads=threads, sizes=(512,) if quick else (1024, 2048),
                             repeats=3 if quick else 5) if on_cpu else None
    rows_step, rows_e2e = [], []
    with load_backend(bundle, name, **({"threads": threads} if threads else {})) as be:
        for b in batches:
            jobs = make_jobs(bundle, b, seed=b)
            row = time_step(be, bundle, jobs, space=space, repeats=repeats, budget_s=10 if quick else 60)
            row.update(step_graph_flops(bundle, space, b))
            row["share_of_ceiling"] = step_share(row["flops"], row["median_s"], ceiling)
            rows_step.append(row)
            for k in steps:
                rows_e2e.append(time_end_to_end(be, bundle, jobs, product_config(bundle, k, space=space),
                                                repeats=e2e_repeats, budget_s=20 if quick else 120))
    prof = None
    if profile and on_cpu:
        b = max(bundle.step_batches(space))
        args = step_inputs(bundle, make_jobs(bundle, b), space)
        feeds = {k: args[k] for k in ("latent", "good", "mask", "stitched", "lambdas")}
        if space == "z":
            feeds["type_onehot"] = args["type_onehot"]
        prof = profile_ops(bundle.path_of(bundle.step_file(space, b)), feeds, runs=2 if quick else 5,
                           threads=threads)
    top = rows_step[-1] if rows_step else None
    summary = dict.fromkeys(SUMMARY_KEYS)
    summary["step_flops_share_of_ceiling"] = top["share_of_ceiling"] if top else None
    return {"benchmark": "defectgen bench", "quick": quick, "summary": summary, "machine": stamp,
            "bundle": {"source": str(bundle.source), "resolution": bundle.resolution, "space": space},
            "backend": name, "threads": threads, "ceiling": ceiling, "step": rows_step, "end_to_end": rows_e2e,
            "profile": prof,
            "notes": ["torch-free: ort_vs_torch_step_speedup and end_to_end_speedup_vs_idinvert need the torch "
                      "reference (benchmarks/throughput.py) and are null here",
                      "end to end = encoder init + K Adam steps + synthesis + feathered full-resolution composite; "
                      "job preparation (reading, masks, stitching) is not timed; early stop off"]}


def _ms(s: float | None) -> str:
    return "–" if s is None else f"{s * 1e3:.1f}"


def format_report(result: dict[str, Any]) -> str:
    """Plain-text tables of a `run_bench` result."""
    lines = [f"defectgen bench{' (quick)' if result['quick'] else ''}: {result['bundle']['source']} "
             f"({result['bundle']['resolution']} px, {result['bundle']['space']}) on {result['backend']}",
             f"machine: {stamp_line(result['machine'])}"]
    if result["ceiling"]:
        c = result["ceiling"]
        lines.append(f"matmul ceiling: {c['ceiling_gflops']:.1f} GFLOP/s ({c['engine']}, n={c['n']}, "
                     f"{c['threads']} ORT threads)")
    lines.append("step (forward+backward):  batch  median ms  [p25, p75]  ms/sample  GFLOP/step  % of ceiling")
    for r in result["step"]:
        gf = r["flops"]["flops"] / 1e9 if r.get("flops") else None
        share = f"{100 * r['share_of_ceiling']:.0f} %" if r.get("share_of_ceiling") is not None else "–"
        lines.append(f"{'':26}{r['batch']:>5}  {_ms(r['median_s']):>9}  [{_ms(r['p25_s'])}, {_ms(r['p75_s'])}]"
                     f"  {_ms(r['median_s'] / r['batch']):>9}  {'–' if gf is None else f'{gf:.2f}':>10}  {share:>12}")
    lines.append("end to end:               batch  K   median s  defects/s  mask IoU  bg PSNR dB")
    for r in result["end_to_end"]:
        q = r["quality"]
        lines.append(f"{'':26}{r['batch']:>5}  {r['steps']:<3} {r['median_s']:>8.3f}  {r['defects_per_s']:>9.2f}"
                     f"  {q['mask_iou']:>8.3f}  {q['bg_psnr_db']:>10.2f}")
    if result.get("profile"):
        lines.append("step profile (ONNX Runtime, largest batch), top ops:")
        for op in result["profile"]["ops"][:8]:
            lines.append(f"{'':26}{op['op']:<24} {op['ms_per_run']:8.2f} ms/run  {100 * op['share']:5.1f} %")
    return "\n".join(lines)


def bench_cli(*, bundle: Path | None, batch: Sequence[int], backend: str, quick: bool, out: Path | None,
              profile: bool = False, threads: int | None = None) -> dict[str, Any]:
    """`defectgen bench`: run, print the tables, and write the JSON to `out` when given.

    Returns:
        The result dict.
    """
    result = run_bench(bundle, batches=batch, backend=backend, quick=quick, profile=profile, threads=threads)
    print(format_report(result))
    if out is not None:
        from defectgen.data.imageio import atomic_write_text

        atomic_write_text(out, json.dumps(result, indent=1, default=_json_default) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return result


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    msg = f"not JSON serializable: {type(o).__name__}"
    raise TypeError(msg)
