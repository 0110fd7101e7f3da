"""Where the step graph's time goes, and which ONNX Runtime session options help.

    python benchmarks/profile_step.py                  # 128 px random model, batch 8, wplus (the issue's target)
    python benchmarks/profile_step.py --model default  # the shipped 64 px bundle
    python benchmarks/profile_step.py --quick          # 32 px, batch 4: smoke test

1. Per-op profile (ONNX Runtime's own profiler, the runtime's session options): time per op type of the
   *optimised* graph, the slowest kernels with their input shapes, and GFLOP/s of the conv ops against the
   FLOPs counted from the exported graph.
2. Session-option sweep: each variant's step time, measured in alternating rounds against the runtime's
   default options (`OrtBackend`: all optimisations, one intra-op thread per physical core, sequential).
Results: `benchmarks/results/profile_step.{json,md,png}`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import numpy as np
import onnxruntime as ort

from defectgen.measure import bench, graph_stats, timing
from defectgen.measure.stamp import machine_stamp
from defectgen.runtime.backends.ort import physical_cores
from defectgen.runtime.bundle import Bundle

Variant = tuple[Callable[[ort.SessionOptions], None], dict[str, Any]]


def _opts(*, level: str = "all", threads: int | None = None, spin: bool | None = None,
          arena: bool | None = None, parallel: bool = False, denormal_zero: bool = False) -> Callable[..., None]:
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}

    def apply(so: ort.SessionOptions) -> None:
        so.graph_optimization_level = levels[level]
        so.intra_op_num_threads = threads or physical_cores()
        so.inter_op_num_threads = 2 if parallel else 1
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        if spin is not None:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if arena is not None:
            so.enable_cpu_mem_arena = arena
        if denormal_zero:
            so.add_session_config_entry("session.set_denormal_as_zero", "1")
        so.log_severity_level = 3

    return apply


def variants() -> dict[str, Variant]:
    """Name -> (SessionOptions changes, InferenceSession kwargs). The first is the runtime's default."""
    cores = physical_cores()
    out: dict[str, Variant] = {
        "runtime default (ALL, threads=cores, sequential)": (_opts(), {}),
        "ALL minus NCHWc layout transformer": (_opts(), {"disabled_optimizers": ["NchwcTransformer"]}),
        "EXTENDED (no layout transforms)": (_opts(level="extended"), {}),
        "spinning off": (_opts(spin=False), {}),
        "denormals as zero": (_opts(denormal_zero=True), {}),
        "memory arena off": (_opts(arena=False), {}),
        "parallel executor, inter_op=2": (_opts(parallel=True), {}),
    }
    if cores > 1:
        out["intra_op threads = 1"] = (_opts(threads=1), {})
    out[f"intra_op threads = {cores * 2}"] = (_opts(threads=cores * 2), {})
    return out


def session(path: Path, variant: Variant) -> ort.InferenceSession:
    apply, kwargs = variant
    so = ort.SessionOptions()
    apply(so)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], **kwargs)


def runner(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], iobinding: bool = False) -> Callable[[], Any]:
    if not iobinding:
        return lambda: sess.run(None, feeds)
    binding = sess.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
    for o in sess.get_outputs():
        binding.bind_output(o.name, "cpu")
    return lambda: sess.run_with_iobinding(binding)


def step_feeds(bundle: Bundle, batch: int, space: str) -> dict[str, np.ndarray]:
    jobs = bench.make_jobs(bundle, batch)
    args = bench.step_inputs(bundle, jobs, space)
    names = [t.name for t in bundle.entry(bundle.step_file(space, batch)).inputs]
    return {n: np.ascontiguousarray(args[n]) for n in names}


def sweep(path: Path, feeds: dict[str, np.ndarray], *, quick: bool) -> list[dict[str, Any]]:
    """Step time of every session variant, each in alternating rounds against the default."""
    vs = variants()
    default_name = next(iter(vs))
    base = runner(session(path, vs[default_name]), feeds)
    rows = []
    contenders = [(n, v, False) for n, v in vs.items() if n != default_name]
    contenders.append(("IOBinding (inputs bound once, outputs ORT-allocated)", vs[default_name], True))
    for name, variant, iob in contenders:
        t = common.interleaved({"default": base, "variant": runner(session(path, variant), feeds, iob)},
                               rounds=2 if quick else 3, per_round=2 if quick else 3)
        v, d = t["variant"]["median_s"], t["default"]["median_s"]
        rows.append({"variant": name, "median_s": v, "default_median_s": d, "speedup_vs_default": d / v,
                     "timing": t["variant"], "default_timing": t["default"]})
        print(f"  {name:<52} {rows[-1]['median_s'] * 1e3:8.1f} ms  x{rows[-1]['speedup_vs_default']:.2f}", flush=True)
    return rows


def conv_efficiency(prof: dict[str, Any], flops: dict[str, Any] | None) -> list[dict[str, Any]]:
    """GFLOP/s of Conv and ConvTranspose kernels: counted FLOPs / profiled time (fused convs count as Conv)."""
    if not flops:
        return []
    ms = {"Conv": 0.0, "ConvTranspose": 0.0}
    for op in prof["ops"]:
        if op["op"] in ("Conv", "FusedConv", "NchwcConv"):
            ms["Conv"] += op["ms_per_run"]
        elif op["op"] == "ConvTranspose":
            ms["ConvTranspose"] += op["ms_per_run"]
    return [{"op": k, "gflop": flops["by_op"].get(k, 0) / 1e9, "ms_per_run": v,
             "gflops": flops["by_op"].get(k, 0) / 1e6 / v if v else None} for k, v in ms.items()]


def main() -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--model", default="128", help="'default' (shipped bundle) or a resolution for a random model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--space", default="wplus")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads of the per-op profile (default: the runtime's, one per physical core)")
    a = ap.parse_args()
    started, stamp = time.time(), machine_stamp()
    res, batch = (32, 4) if a.quick else (None, a.batch)
    if a.model == "default" and not a.quick:
        found = common.default_model()
        if found is None:
            raise SystemExit("the default model is not there yet (defectgen/assets/default_bundle, models/default)")
        bundle_path = found[0]
    else:
        bundle_path = common.random_model(res or int(a.model), batches=(batch,), spaces=(a.space,))[0]
    bundle = Bundle.load(bundle_path)
    path = bundle.path_of(bundle.step_file(a.space, batch))
    feeds = step_feeds(bundle, batch, a.space)
    flops = graph_stats.count_flops(path)
    print(f"{path}: {flops['flops'] / 1e9:.2f} GFLOP per step", flush=True)
    prof_threads = a.threads or physical_cores()
    ceiling = timing.matmul_ceiling(threads=prof_threads, sizes=(512,) if a.quick else (1024, 2048),
                                   repeats=3 if a.quick else 5)
    prof = graph_stats.profile_ops(path, feeds, runs=2 if a.quick else 5, threads=prof_threads)
    rows = sweep(path, feeds, quick=a.quick)
    default_s = float(np.median([r["default_median_s"] for r in rows]))
    share = flops["flops"] / (prof["wall_ms_per_run"] / 1e3) / (ceiling["ceiling_gflops"] * 1e9)
    best = max(rows, key=lambda r: r["speedup_vs_default"])
    summary = {"step_ms_default_options": default_s * 1e3, "step_ms_profiled": prof["wall_ms_per_run"],
               "profile_threads": prof_threads, "step_flops_share_of_ceiling_profiled": share,
               "best_variant": best["variant"], "best_variant_speedup": best["speedup_vs_default"],
               "top_op": prof["ops"][0]["op"], "top_op_share": prof["ops"][0]["share"]}
    eff = conv_efficiency(prof, flops)
    tables = [
        (f"Per-op time (optimised graph, runtime's session options, {prof_threads} thread(s))", common.md_table(
            ["op", "ms / step", "share", "nodes"],
            [[o["op"], common.fmt(o["ms_per_run"], 1), f"{100 * o['share']:.1f} %", o["nodes"]]
             for o in prof["ops"][:15]])),
        ("Slowest kernels (op, input shapes)", common.md_table(
            ["op", "input shapes", "ms / step", "share"],
            [[k["op"], "`" + " ".join("x".join(map(str, s)) for s in k["input_shapes"]) + "`",
              common.fmt(k["ms_per_run"], 1), f"{100 * k['share']:.1f} %"] for k in prof["top_kernels"][:15]])),
        ("Conv efficiency (FLOPs counted on the exported graph / profiled time)", common.md_table(
            ["op", "GFLOP / step", "ms / step", "GFLOP/s", "matmul ceiling GFLOP/s"],
            [[e["op"], common.fmt(e["gflop"], 3), common.fmt(e["ms_per_run"], 1), common.fmt(e["gflops"], 1),
              common.fmt(ceiling["ceiling_gflops"], 1)] for e in eff])),
        ("Session options (each alternated with the default; speed-up = default / variant)", common.md_table(
            ["variant", "ms / step", "default ms (same rounds)", "speed-up", "IQR / median"],
            [[r["variant"], common.fmt(r["median_s"] * 1e3, 1), common.fmt(r["default_median_s"] * 1e3, 1),
              common.fmt(r["speedup_vs_default"], 2), common.fmt(r["timing"]["iqr_rel"], 2)] for r in rows])),
    ]
    fig, ax = common.new_figure(1, 2, (12, 4.8))
    top = prof["ops"][:10][::-1]
    ax[0, 0].barh([o["op"] for o in top], [o["ms_per_run"] for o in top], color="tab:blue")
    ax[0, 0].set_xlabel("ms per step")
    ax[0, 0].set_title(f"per-op time, {bundle.resolution} px batch {batch}, {prof_threads} thread(s)")
    ax[0, 1].barh([r["variant"][:40] for r in rows][::-1], [r["speedup_vs_default"] for r in rows][::-1],
                  color="tab:green")
    ax[0, 1].axvline(1.0, color="0.3", lw=0.8)
    ax[0, 1].set_xlabel("speed-up vs the runtime's default options")
    ax[0, 1].set_title("session options")
    fig.subplots_adjust(left=0.12, wspace=0.75)
    which = "the default bundle" if a.model == "default" else "a random-weight model"
    notes = [f"graph: `{bundle.step_file(a.space, batch)}` of {which} ({bundle.resolution} px, {a.space}); "
             f"{flops['flops'] / 1e9:.2f} GFLOP per step counted as 2 x MACs of Conv/ConvTranspose/MatMul/Gemm",
             f"matmul ceiling {ceiling['ceiling_gflops']:.1f} GFLOP/s ({ceiling['engine']}, n={ceiling['n']}, "
             f"{prof_threads} thread(s)), measured in this run; the share uses the profiled runs' wall time; the "
             "machine is shared, so absolute times move with its load (load averages)",
             "op names are the optimised graph's: ReorderInput/ReorderOutput are the NCHWc layout conversions, "
             "Where + Greater the leaky-ReLU backward, depthwise ConvTranspose the 2x FIR upsampling"]
    paths = common.write_results("profile_step", summary=summary, data={
        "graph": str(path), "flops": flops, "ceiling": ceiling, "profile_threads": prof_threads, "profile": prof,
        "conv_efficiency": eff,
        "session_options": rows}, tables=tables, figure=fig, quick=a.quick, out_dir=a.out_dir, notes=notes,
        machine=stamp, started=started)
    print("\n".join(f"wrote {p}" for p in paths.values()))


if __name__ == "__main__":
    main()
