"""`defectgen bench`: time the runtime's step graph and end-to-end defects/s on a bundle, with the runtime only.

Torch-free, so it runs on an edge box that has only `pip install defectgen`; the repository's `benchmarks/`
scripts time with the same pieces. What is timed is the job path of `defectgen run` itself: jobs are the demo's
(the shipped example parts, a random mask of each type, a real defect of the bank stitched in), prepared by the
runtime's `prepare` with the bundle's recommended settings (`resolve_settings`), inverted by `invert` and
composited by `compose_output` at the part's full resolution. Reading and preparing a job happens before the
clock starts; early stopping is off while timing, so every run does exactly K steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectgen import EXAMPLES_DIR
from defectgen.errors import JobError
from defectgen.measure.graph_stats import count_flops, profile_ops
from defectgen.measure.stamp import machine_stamp, stamp_line
from defectgen.measure.timing import matmul_ceiling, timed
from defectgen.runtime.backends import Backend, load_backend, plan_chunks, resolve_backend_name
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.jobs.compose import upsample_mask
from defectgen.runtime.jobs.invert import InversionBatch, InversionConfig, InversionResult, invert
from defectgen.runtime.jobs.output import compose_output
from defectgen.runtime.jobs.prepare import Prepared, inversion_batch, prepare, propose
from defectgen.runtime.jobs.settings import RunSettings, resolve_settings
from defectgen.runtime.jobs.sources import JobSpec, check_types, image_jobs


# ---- jobs --------------------------------------------------------------------------------------------------------
@dataclass
class BenchJobs:
    """Jobs prepared exactly as `defectgen run` prepares them, and the settings they were prepared with."""

    prepared: list[Prepared]
    settings: RunSettings
    batch: InversionBatch  # their stacked model inputs (`inversion_batch`)

    def __len__(self) -> int:
        return len(self.prepared)

    def as_given_targets(self) -> BenchJobs:
        """The same targets as given masks: no proposal to redraw, every sample starts from the configured init
        and is labelled with its target (mask mode "target"), as a reference method that inverts onto the targets
        does (idinvert from w_avg: its G mask may end up anywhere, and it has no G-mask label to give).
        """
        prepared = [dataclasses.replace(p, start=None, proposal=None) for p in self.prepared]
        settings = dataclasses.replace(self.settings, mask_mode="target")
        return BenchJobs(prepared=prepared, settings=settings, batch=inversion_batch(prepared))


def example_specs(bundle: Bundle, n: int, *, seed: int = 0, types: Sequence[str] | None = None,
                  parts: Sequence[Path] | None = None) -> list[JobSpec]:
    """The first `n` jobs of the demo's job source (each part gets each type, random masks), with run seeds
    `seed`, `seed + 1`, ... for as many passes as `n` needs.

    Raises:
        JobError: no parts (a broken install without its example images).
    """
    files = list(parts) if parts is not None else sorted(EXAMPLES_DIR.glob("*.png"))
    if not files:
        msg = f"no example parts in {EXAMPLES_DIR} (broken install?)"
        raise JobError(msg)
    types = check_types(types, bundle.defect_types)
    specs: list[JobSpec] = []
    run = 0
    while len(specs) < n:
        specs += list(image_jobs([(p, p.name) for p in files], None, len(types), types, seed + run))
        run += 1
    return specs[:n]


def make_jobs(bundle: Bundle, n: int, *, seed: int = 0, types: Sequence[str] | None = None,
              parts: Sequence[Path] | None = None, settings: RunSettings | None = None,
              backend: Backend | None = None) -> BenchJobs:
    """`n` realistic jobs (`example_specs`) through the runtime's own `prepare`.

    Args:
        bundle: the bundle (resolution, defect types, bank).
        n: number of jobs.
        seed: run seed of the job source (masks, references, stitching follow from it, as in a run).
        types: defect types to cycle through (default: every non-"good" type of the bundle).
        parts: good-part image files to use instead of the shipped example parts.
        settings: run settings (default: the bundle's recommended ones).
        backend: the engine G proposes targets with (`--mask-shape generated`); None: a one-thread ONNX
            Runtime CPU backend when the settings need one.

    Returns:
        The prepared jobs.
    """
    settings = settings or resolve_settings(bundle)
    specs = example_specs(bundle, n, seed=seed, types=types, parts=parts)
    if backend is None and settings.mask_shape == "generated":
        from defectgen.runtime.backends.ort import OrtBackend

        with OrtBackend(bundle, threads=1) as be:
            prepared = [prepare(s, bundle, settings, be) for s in specs]
    else:
        prepared = [prepare(s, bundle, settings, backend) for s in specs]
    return BenchJobs(prepared=prepared, settings=settings, batch=inversion_batch(prepared))


# ---- quality of one inversion ----------------------------------------------------------------------------------
def mask_iou(mask_logit: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-sample IoU of the generated mask (σ(logit) > 0.5) with the target mask, (B,)."""
    gen, tgt = mask_logit > 0, mask > 0.5
    inter = (gen & tgt).reshape(len(gen), -1).sum(1)
    union = (gen | tgt).reshape(len(gen), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def target_iou(mask_logit: np.ndarray, prepared: Sequence[Prepared]) -> np.ndarray:
    """Per-job IoU of G's mask (σ(logit) > 0.5, upsampled to the crop as `run` does) with the job's target at the
    data's resolution, (B,).

    Why not `mask_iou` on the model inputs: at a pixel scale above 1 the model's target is the target dilated
    by ceil(1.41 x scale) data px before it is shrunk (so that no target pixel is lost), and a G mask that fits
    the real target inside it scores low there.
    """
    out = np.empty(len(prepared))
    for i, p in enumerate(prepared):
        gen = upsample_mask(mask_logit[i], p.crop.size)
        tgt = p.crop.of(p.mask) > 0
        union = (gen | tgt).sum()
        out[i] = (gen & tgt).sum() / union if union else 1.0
    return out


def background_psnr(image: np.ndarray, good: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-sample PSNR (dB) of the generated image vs the good image outside the target mask, (B,).

    Images in [-1, 1] (peak-to-peak 2); the generated image is clipped to that range first, as the composite does.
    """
    bg = 1.0 - (mask > 0.5)
    err = ((np.clip(image, -1, 1) - good) ** 2 * bg).reshape(len(image), -1).sum(1)
    n = np.maximum(bg.reshape(len(image), -1).sum(1) * image.shape[1], 1)
    mse = np.maximum(err / n, 1e-12)
    return 10.0 * np.log10(4.0 / mse)


def quality(result: InversionResult, jobs: BenchJobs) -> dict[str, float]:
    """Mean mask IoU (with the target at the data's resolution, `target_iou`), background PSNR and objective (at
    each sample's last evaluation) of an inversion result.
    """
    batch = jobs.batch
    return {"mask_iou": float(target_iou(result.mask_logit, jobs.prepared).mean()),
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
    """One end-to-end run: G's target proposals (jobs that have one: the same draws again), `invert` (init +
    steps + synthesis), then `compose_output` at full resolution.
    """
    for p in jobs.prepared:
        if p.proposal is not None:
            propose(backend, bundle, p.spec, dataclasses.replace(jobs.settings, inversion=config), good_m=p.good,
                    crop=p.crop, shape=p.mask.shape)
    result = invert(backend, bundle, jobs.batch, config=config)
    finals = [compose_output(p, result.image[i], result.mask_logit[i], jobs.settings, bundle.resolution,
                             patch_design=bundle.patch_design)[0]
              for i, p in enumerate(jobs.prepared)]
    return result, finals


def product_config(bundle: Bundle, steps: int | None = None, **overrides: Any) -> InversionConfig:
    """The runtime's inversion (`resolve_settings`) at `steps` Adam steps for every job (None: the bundle's own
    steps and proposal steps, what `defectgen run` does), early stop off for timing.
    """
    return resolve_settings(bundle, steps=steps, early_stop_patience=0, **overrides).inversion


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
    return {"batch": len(jobs), "steps": config.steps, "lr": config.lr, "proposal_lr": config.proposal_lr,
            "proposal_steps": config.proposal_steps,
            "init": config.init, "space": config.space, "lr_schedule": config.lr_schedule, **stats,
            "defects_per_s": len(jobs) / stats["median_s"], "quality": quality(last[0], jobs)}


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
        JSON-ready results: `machine`, `ceiling`, `step` (per batch, with its share of the ceiling),
        `end_to_end` (per batch and K, with defects/s and the result's quality), `profile`.

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
    settings = resolve_settings(bundle, space=space)
    rows_step, rows_e2e = [], []
    with load_backend(bundle, name, **({"threads": threads} if threads else {})) as be:
        for b in batches:
            jobs = make_jobs(bundle, b, seed=b, settings=settings, backend=be)
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
        args = step_inputs(bundle, make_jobs(bundle, b, settings=settings), space)
        feeds = {k: args[k] for k in ("latent", "good", "mask", "stitched", "lambdas")}
        if space == "z":
            feeds["type_onehot"] = args["type_onehot"]
        prof = profile_ops(bundle.path_of(bundle.step_file(space, b)), feeds, runs=2 if quick else 5,
                           threads=threads)
    return {"benchmark": "defectgen bench", "quick": quick, "machine": stamp,
            "bundle": {"source": str(bundle.source), "resolution": bundle.resolution, "space": space},
            "backend": name, "threads": threads, "ceiling": ceiling, "step": rows_step, "end_to_end": rows_e2e,
            "profile": prof,
            "notes": ["end to end = G's target proposals (random targets with --mask-shape generated) + encoder init "
                      "+ K Adam steps + synthesis + feathered full-resolution composite; jobs are otherwise prepared "
                      "by the runtime's `prepare` as in `defectgen run` (reading, placing, stitching: not timed); "
                      "early stop off"]}


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
