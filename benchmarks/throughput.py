"""Throughput per backend: one optimisation step, and end-to-end defects/s against the idinvert reference.

    python benchmarks/throughput.py                    # default bundle (when shipped) + 128 px model, batch 1/4/8
    python benchmarks/throughput.py --models 128 --batches 8
    python benchmarks/throughput.py --quick            # 32 px random model, batch 1, K=5: smoke test (< 1 min)

Per model and batch size (latent space wplus):

- **step** (forward + backward, `backend.step`): torch eager (`export.torch_backend.TorchBackend`, the nets and
  the objective of `export.objective.make_step` run by torch: the reference an idinvert user runs today), ONNX
  Runtime CPU on the exported step graph, and ONNX Runtime CUDA / TensorRT EP / native TensorRT FP32 and FP16
  where they can run (listed with the reason where not). Contenders are timed in alternating rounds (warm-up
  excluded; median, p25-p75). FLOPs per step are counted on the exported graph (2 x MACs of Conv,
  ConvTranspose, MatMul, Gemm) and shown as a share of the matmul ceiling measured in the same run.
- **end to end** (`defectgen.measure.bench.end_to_end`: encoder init + K Adam steps + synthesis + feathered
  composite at the part's full resolution, early stop off) for K = 5, 10, 20 on each runtime backend, and the
  idinvert reference: torch eager, Adam lr 0.01 constant, 100 steps, from `w_avg`, through the same `invert`.

The "128 px model" is randomly initialised with the default channel config and exported through
`defectgen.export`: untrained weights time the same as trained ones, but its mask IoU / PSNR mean nothing
(quality is compared on the trained default model and in `convergence.py`).
Results: `benchmarks/results/throughput.{json,md,png}`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import common

from defectgen.measure import bench, timing
from defectgen.measure.stamp import machine_stamp
from defectgen.runtime.backends import BackendUnavailable, backend_status, load_backend
from defectgen.runtime.backends.ort import physical_cores
from defectgen.runtime.bundle import Bundle

SPACE = "wplus"
GPU_BACKENDS = (("ort-cuda", "ort-cuda", {}), ("ort-trt", "ort-trt", {}),
                ("tensorrt fp32", "tensorrt", {"fp16": False}), ("tensorrt fp16", "tensorrt", {"fp16": True}))


def gpu_backends(bundle: Bundle) -> tuple[dict[str, Any], dict[str, str]]:
    """Every GPU backend that can run here; the others with the reason they cannot."""
    backends: dict[str, Any] = {}
    missing: dict[str, str] = {}
    status = backend_status()
    for label, name, opts in GPU_BACKENDS:
        if status[name] is not None:
            missing[label] = status[name]  # type: ignore[assignment]
            continue
        try:
            backends[label] = load_backend(bundle, name, **opts)
        except BackendUnavailable as e:
            missing[label] = str(e)
    return backends, missing


def step_rows(label: str, bundle: Bundle, backends: dict[str, Any], batch: int, ceiling: dict[str, Any],
              threads: int, quick: bool) -> list[dict[str, Any]]:
    """Time one step of every backend at one batch size, alternating between them."""
    jobs = bench.make_jobs(bundle, batch, seed=batch)
    args = bench.step_inputs(bundle, jobs, SPACE)
    fns = {name: (lambda be=be: be.step(**args)) for name, be in backends.items()}
    times = common.interleaved(fns, rounds=2 if quick else 3, per_round=2 if quick else 3,
                               budget_s=10 if quick else 240)
    graph = bench.step_graph_flops(bundle, SPACE, batch)
    flops = graph["flops"]
    torch_s = times.get("torch eager", {}).get("median_s")
    rows = []
    for name, t in times.items():
        on_cpu = name in ("ort-cpu", "torch eager")
        rows.append({"model": label, "resolution": bundle.resolution, "batch": batch, "backend": name,
                     "threads": threads if on_cpu else None, **t, "graph": graph["graph"],
                     "graph_calls": graph["graph_calls"],
                     "flops": flops["flops"] if flops else None,
                     "share_of_ceiling": bench.step_share(flops, t["median_s"], ceiling) if on_cpu else None,
                     "speedup_vs_torch": torch_s / t["median_s"] if torch_s else None})
        print(f"  step {label} b{batch} {name:<14} {threads} thr {t['median_s'] * 1e3:9.1f} ms", flush=True)
    return rows


def e2e_rows(label: str, bundle: Bundle, backends: dict[str, Any], torch_be: Any, batch: int, steps: list[int],
             with_reference: bool, threads: int, quick: bool) -> list[dict[str, Any]]:
    """End-to-end defects/s of the runtime backends at each K, and of the idinvert reference."""
    jobs = bench.make_jobs(bundle, batch, seed=100 + batch)
    rows = []
    runs = [(name, be, bench.product_config(bundle, k, space=SPACE)) for k in steps for name, be in backends.items()]
    if with_reference:
        runs.append(("torch eager (idinvert reference)", torch_be, common.idinvert_config(SPACE)))
    for name, be, cfg in runs:
        ref = name.endswith("reference)")
        # the reference inverts onto the same targets from w_avg: G-proposed ones count as given masks for it
        r = bench.time_end_to_end(be, bundle, jobs.as_given_targets() if ref else jobs, cfg,
                                  repeats=1 if ref or quick else 3, warmup=0 if ref else 1, budget_s=60)
        rows.append({"model": label, "resolution": bundle.resolution, "backend": name, "reference": ref,
                     "threads": threads if name.startswith(("ort-cpu", "torch")) else None, **r})
        print(f"  e2e  {label} b{batch} {name:<14} {threads} thr K={cfg.steps:<3} {r['defects_per_s']:8.3f}/s",
              flush=True)
    ref_rate = next((r["defects_per_s"] for r in rows if r["reference"]), None)
    for r in rows:
        r["speedup_vs_idinvert"] = r["defects_per_s"] / ref_rate if ref_rate else None
    return rows


def measure_model(label: str, model: tuple[Any, Any, Any, Any], *, batches: list[int], steps: list[int],
                  ref_batches: list[int], threads_list: list[int], headline_threads: int,
                  quick: bool) -> dict[str, Any]:
    """Step rows of one model at every thread count; GPU backends and end to end (with the idinvert reference)
    at `headline_threads` only."""
    path, G, E, D = model
    bundle = Bundle.load(path)
    gpu, missing = gpu_backends(bundle)
    print(f"{label}: {path} ({bundle.resolution} px); not available: {', '.join(missing) or 'none'}", flush=True)
    out: dict[str, Any] = {"label": label, "bundle": str(path), "resolution": bundle.resolution, "ceilings": {},
                           "unavailable": missing, "step": [], "end_to_end": []}
    for threads in threads_list:
        main = threads == headline_threads
        torch_be = common.torch_backend(G, E, D, threads)
        cpu = load_backend(bundle, "ort-cpu", threads=threads)
        ceiling = timing.matmul_ceiling(threads=threads, sizes=(512,) if quick else (1024, 2048),
                                       repeats=3 if quick else 5)
        out["ceilings"][threads] = ceiling
        print(f"  matmul ceiling {ceiling['ceiling_gflops']:.1f} GFLOP/s at {threads} thread(s)", flush=True)
        runtime = {"ort-cpu": cpu, **(gpu if main else {})}
        for b in batches:
            out["step"] += step_rows(label, bundle, {"torch eager": torch_be, **runtime}, b, ceiling, threads, quick)
        for b in batches if main else []:  # end to end at the headline thread count only (CPU time is shared)
            out["end_to_end"] += e2e_rows(label, bundle, runtime, torch_be, b, steps, b in ref_batches, threads,
                                          quick)
        cpu.close()
    for be in gpu.values():
        be.close()
    return out


def headline(models: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """Issue 7's throughput keys: the 128 px model (else the largest), its largest batch, `threads` CPU threads,
    end to end at the smallest K."""
    summary = dict.fromkeys(common.SUMMARY_KEYS)
    if not models:
        return summary
    m = max(models, key=lambda m: (m["resolution"] == 128, m["resolution"]))
    b = max(r["batch"] for r in m["step"])
    ort = next(r for r in m["step"] if r["batch"] == b and r["backend"] == "ort-cpu" and r["threads"] == threads)
    summary["ort_vs_torch_step_speedup"] = ort["speedup_vs_torch"]
    summary["step_flops_share_of_ceiling"] = ort["share_of_ceiling"]
    k = min(r["steps"] for r in m["end_to_end"] if not r["reference"])
    ref_b = max((r["batch"] for r in m["end_to_end"] if r["reference"]), default=b)  # the reference runs at few
    e2e = [r for r in m["end_to_end"] if r["batch"] == ref_b and r["backend"] == "ort-cpu" and r["steps"] == k
           and r["threads"] == threads]
    summary["end_to_end_speedup_vs_idinvert"] = e2e[0]["speedup_vs_idinvert"] if e2e else None
    summary["_at"] = (f"{m['label']} ({m['resolution']} px), step at batch {b}, ort-cpu vs torch eager at {threads} "
                      f"thread(s) each; end to end at batch {ref_b}, K={k}")
    return summary


def tables(models: list[dict[str, Any]]) -> list[tuple[str, str]]:
    f = common.fmt
    step = [[m["label"], r["batch"], r["backend"], f(r["threads"]), f(r["median_s"] * 1e3, 1),
             f"{r['p25_s'] * 1e3:.1f}–{r['p75_s'] * 1e3:.1f}", f(r["median_s"] * 1e3 / r["batch"], 1),
             f(r["flops"] / 1e9 if r["flops"] else None, 2),
             f(r["flops"] / r["median_s"] / 1e9 if r["flops"] else None, 1),
             f"{100 * r['share_of_ceiling']:.0f} %" if r["share_of_ceiling"] is not None else "–",
             f(r["speedup_vs_torch"], 2)] for m in models for r in m["step"]]
    e2e = [[m["label"], r["batch"], r["backend"], f(r["threads"]), r["init"], r["steps"], r["lr"],
            f(r["median_s"], 3), f(r["defects_per_s"], 2), f(r["speedup_vs_idinvert"], 1),
            f(r["quality"]["mask_iou"], 3), f(r["quality"]["bg_psnr_db"], 2), f(r["quality"]["objective"], 4)]
           for m in models for r in m["end_to_end"]]
    ceil = [[m["label"], t, f(c["ceiling_gflops"], 1), f"{c['engine']} n={c['n']}",
             ", ".join(m["unavailable"]) or "–"] for m in models for t, c in m["ceilings"].items()]
    return [("One optimisation step (forward + backward), wplus", common.md_table(
        ["model", "batch", "backend", "threads", "median ms", "p25–p75 ms", "ms / sample", "GFLOP / step",
         "GFLOP/s", "share of ceiling", "× torch eager (same threads)"], step)),
        ("End to end (init + K steps + synthesis + composite)", common.md_table(
            ["model", "batch", "backend", "threads", "init", "K", "lr", "median s / batch", "defects/s",
             "× idinvert", "mask IoU", "bg PSNR dB", "objective"], e2e)),
        ("Matmul ceiling (measured in this run) and backends", common.md_table(
            ["model", "threads", "ceiling GFLOP/s", "engine", "not available here"], ceil))]


def figure(models: list[dict[str, Any]]) -> Any:
    fig, ax = common.new_figure(1, 2, (12, 4.6))
    for m in models:
        for backend, threads in dict.fromkeys((r["backend"], r["threads"]) for r in m["step"]):
            rows = [r for r in m["step"] if r["backend"] == backend and r["threads"] == threads]
            ax[0, 0].plot([r["batch"] for r in rows], [r["median_s"] * 1e3 / r["batch"] for r in rows],
                          "o-" if backend == "ort-cpu" else "s--", label=f"{m['label']}: {backend}, {threads} thr")
    ax[0, 0].set_xlabel("batch")
    ax[0, 0].set_ylabel("ms per sample per step (median)")
    ax[0, 0].set_yscale("log")
    ax[0, 0].set_title("one optimisation step")
    ax[0, 0].legend(fontsize=6)

    def name(m: dict[str, Any], r: dict[str, Any]) -> str:
        what = "idinvert 100" if r["reference"] else f"{r['backend']} K={r['steps']}"
        return f"{m['label']} b{r['batch']} {r['threads']} thr: {what}"

    bars = [(name(m, r), r["defects_per_s"], r["reference"]) for m in models for r in m["end_to_end"]
            if r["batch"] == max(x["batch"] for x in m["end_to_end"])]
    ax[0, 1].barh([b[0] for b in bars], [b[1] for b in bars], color=["tab:red" if b[2] else "tab:blue" for b in bars])
    ax[0, 1].set_xscale("log")
    ax[0, 1].set_xlabel("defects/s (end to end, largest batch)")
    ax[0, 1].tick_params(axis="y", labelsize=6)
    ax[0, 1].set_title("end to end vs the idinvert reference (red)")
    fig.subplots_adjust(left=0.07, wspace=0.75)
    return fig


def main() -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--models", default=None,
                    help="comma list: 'default' and/or resolutions of random nets (default: default,128; quick: 32)")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--steps", default="5,10,20", help="K values of the end-to-end runs")
    ap.add_argument("--ref-batches", default=None,
                    help="batches at which the (slow) 100-step idinvert reference runs (default: all for the "
                         "default model, the largest for random models)")
    ap.add_argument("--threads", default=None,
                    help="CPU thread counts to measure, each engine at the same count (default: 1,<physical cores>)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models of an existing results file (each model keeps its own stamp)")
    ap.add_argument("--headline-threads", type=int, default=1,
                    help="thread count of the summary figures, GPU backends and the idinvert reference (default 1)")
    a = ap.parse_args()
    started, stamp = time.time(), machine_stamp()
    batches, steps = [int(x) for x in a.batches.split(",")], [int(x) for x in a.steps.split(",")]
    names = (a.models or ("32" if a.quick else "default,128")).split(",")
    threads_list = [int(x) for x in a.threads.split(",")] if a.threads else sorted({1, physical_cores()})
    if a.quick:
        batches, steps, threads_list = [1], [5], [a.headline_threads]
    if a.headline_threads not in threads_list:
        threads_list.append(a.headline_threads)
    models, skipped = [], []
    for name in names:
        if name == "default":
            model = common.default_model()
            if model is None:
                skipped.append("default model: not shipped yet (defectgen/assets/default_bundle, models/default)")
                continue
            shipped = Bundle.load(model[0]).step_batches(SPACE)  # time what ships (the runtime pads the rest)
            label, ref = "default", [b for b in batches if b in shipped] or shipped
        else:
            exported = batches if a.quick else sorted(set(batches) | {1, 4, 8})
            model = common.random_model(int(name), batches=exported, spaces=(SPACE,))
            label, ref = f"random {name} px", [min(batches) if a.quick else max(batches)]
        if a.ref_batches:
            ref = [int(x) for x in a.ref_batches.split(",")]
        model_batches = ref if name == "default" and not a.ref_batches else batches
        models.append(measure_model(label, model, batches=model_batches, steps=steps, ref_batches=ref, quick=a.quick,
                                    threads_list=threads_list, headline_threads=a.headline_threads))
        models[-1].update({"machine": machine_stamp(), "command": common.command_line()})
    old = common.results_dir(a.quick, a.out_dir) / "throughput.json"
    if a.merge and old.is_file():
        done = {m["label"] for m in models}
        models = [m for m in json.loads(old.read_text())["models"] if m["label"] not in done] + models
    summary = headline(models, a.headline_threads)
    at = summary.pop("_at", None)
    notes = [f"summary figures: {at}" if at else "summary: nothing measured",
             "torch eager runs the nets and objective the step graph was traced from (same graph, same maths), "
             "at the same intra-op thread count as ONNX Runtime in each row; the matmul ceiling is measured at "
             "that thread count too",
             f"why {a.headline_threads} thread(s) for the headline: this {physical_cores()}-core machine is shared "
             "with a training run and other work (see the load averages); with more threads than free cores every "
             "op waits for descheduled workers, which hit torch's OpenMP far harder than ONNX Runtime and would "
             "inflate the ratio; the rows at other thread counts are in the table",
             "timings: warm-up excluded, contenders alternated in rounds, median with p25–p75; the idinvert "
             "reference (100 steps) is one timed run per batch",
             "end to end excludes reading/preparing jobs (files, random masks, stitching); early stopping is off, "
             "so every run does exactly K steps (+1 evaluation)",
             "random-weight models time like trained ones, but their mask IoU / PSNR / objective are meaningless",
             *sorted({f"not available here: {k}: {v}" for m in models for k, v in m["unavailable"].items()}),
             *[f"{m['label']}: measured by `{m['command']}` at {m['machine']['date_utc']} (load avg "
               f"{m['machine']['loadavg']})" for m in models if m.get("machine")],
             *skipped]
    common.write_results("throughput", summary=summary, data={"models": models}, tables=tables(models),
                         figure=figure(models) if models else None, quick=a.quick, out_dir=a.out_dir, notes=notes,
                         machine=stamp, started=started)
    print({k: common.fmt(v, 3) for k, v in summary.items()})


if __name__ == "__main__":
    main()
