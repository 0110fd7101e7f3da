"""Steps to quality: encoder init vs `w_avg` init vs random z, per latent space, up to 200 Adam steps.

    python benchmarks/convergence.py --all-spaces          # default model, >= 50 held-out jobs, z / w / wplus
    python benchmarks/convergence.py --spaces wplus --jobs 56 --steps 200
    python benchmarks/convergence.py --quick --bundle B    # smoke test: 8 jobs, 20 steps, the bundle's first space

Jobs: held-out good parts (freshly rendered procedural parts the model never saw, or `--images DIR`), a random
target mask of every defect type in turn (shaped like a real defect, `--mask-shape reference`: the inversion onto
a given shape is what the encoder is for), a real defect from the bundle's bank stitched in, as `defectgen run`
prepares them. Every run goes through the runtime's one loop (`invert`, ONNX Runtime CPU) with a constant
learning rate (the bundle's default) and early stopping off, so the result after k steps is the prefix of one
long run: a wrapper around the backend records the latent each step is evaluated at.

Per step, averaged over jobs, for the latent `invert(steps=k)` would return (the best one so far):
objective (sum of the weighted terms), generated-mask IoU with the target (σ(mask logit) > 0.5), background PSNR
(generated image vs the good image outside the target mask, [-1, 1] range) and the defect-region feature
distance (the objective's `def` term / λ_def: MSE of the discriminator-trunk features of M ⊙ G(c) and M ⊙ S).
IoU / PSNR need a synthesis, so they are evaluated at a log-spaced subset of steps.
Table: steps each init needs to reach what `w_avg` init reaches at 100 steps (same space, same lr); and, for
reference, what the idinvert setting (w_avg init, Adam lr 0.01, 100 steps) reaches.
Results: `benchmarks/results/convergence.{json,md,png}`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

from defectgen.data.imageio import write_image
from defectgen.data.mvtec import list_images
from defectgen.data.procedural import render_part
from defectgen.measure import bench
from defectgen.measure.stamp import machine_stamp
from defectgen.runtime.backends import load_backend
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.bundle.manifest import LOSS_TERMS
from defectgen.runtime.jobs.invert import InversionBatch, InversionConfig, invert
from defectgen.runtime.jobs.settings import resolve_settings

INITS = ("encoder", "wavg", "random")
EVAL_STEPS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 70, 80, 100, 120, 150, 200)
METRICS = ("objective", "mask_iou", "bg_psnr_db", "feature_dist")


class Recorder:
    """A backend wrapper that keeps a copy of every latent `step` is evaluated at (everything else delegated)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.latents: list[np.ndarray | None] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def step(self, space: str, latent: np.ndarray, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        self.latents.append(np.array(latent, dtype=np.float32, copy=True))
        return self.backend.step(space, latent, *args, **kwargs)


def held_out_parts(n: int, res: int, images: Path | None, folder: Path) -> list[Path]:
    """Image files of `n` good parts the model never saw: `--images` files (cycled), else freshly rendered
    procedural parts written into `folder` (the runtime's job path reads files, as `defectgen run` does)."""
    if images is not None:
        paths = list_images(images)
        if not paths:
            raise SystemExit(f"no images in {images}")
        return [paths[i % len(paths)] for i in range(n)]
    side = max(64, 2 * res)  # parts are bigger than the model, as in the field: the runtime resizes them
    folder.mkdir(parents=True, exist_ok=True)
    return [write_image(folder / f"part_{i:03d}.png", render_part(np.random.default_rng([7, 2026, i]), side)[0])
            for i in range(n)]


def trajectory(backend: Any, bundle: Bundle, batch: InversionBatch, cfg: InversionConfig,
               eval_steps: list[int]) -> dict[str, np.ndarray]:
    """Per-sample metrics along one `invert` run: objective/feature distance per step, IoU/PSNR at `eval_steps`."""
    rec = Recorder(backend)
    res = invert(rec, bundle, batch, config=cfg)
    n = len(batch)
    obj = res.objective  # (steps+1, B), NaN where a sample was not run
    if any(x is None or len(x) != n for x in rec.latents) or np.isnan(obj).any():
        raise RuntimeError("a sample failed or stopped early; the trajectory is incomplete")
    lat = np.stack(rec.latents)  # (steps+1, B, ...)
    best = np.array([np.argmin(obj[: k + 1], 0) for k in range(len(obj))])  # (steps+1, B): best evaluation so far
    cols = np.arange(n)
    lam_def = float(bundle.lambda_vector(cfg.lambdas)[LOSS_TERMS.index("def")])
    feat = res.terms_history[..., LOSS_TERMS.index("def")] / lam_def if lam_def > 0 else np.full_like(obj, np.nan)
    onehot = bundle.type_onehot(batch.types) if cfg.space == "z" else None
    iou, psnr = [], []
    for k in eval_steps:
        image, mask_logit = backend.synthesize(cfg.space, lat[best[k], cols], onehot, good=batch.good)
        iou.append(bench.mask_iou(mask_logit, batch.mask))
        psnr.append(bench.background_psnr(image, batch.good, batch.mask))
    return {"objective": np.minimum.accumulate(obj, 0), "feature_dist": feat[best, cols],
            "mask_iou": np.stack(iou), "bg_psnr_db": np.stack(psnr)}


def run_config(backend: Any, bundle: Bundle, jobs: bench.BenchJobs, cfg: InversionConfig, batch: int,
               eval_steps: list[int]) -> dict[str, Any]:
    """One (space, init, lr) over all jobs, in batches; per-step means over jobs."""
    parts = []
    for s in range(0, len(jobs), batch):
        b = jobs.batch
        sub = InversionBatch(good=b.good[s:s + batch], mask=b.mask[s:s + batch], stitched=b.stitched[s:s + batch],
                             types=b.types[s:s + batch])
        parts.append(trajectory(backend, bundle, sub, cfg, eval_steps))
    per_job = {m: np.concatenate([p[m] for p in parts], 1) for m in METRICS}  # (steps, jobs)
    return {"space": cfg.space, "init": cfg.init, "lr": cfg.lr, "steps": cfg.steps, "eval_steps": eval_steps,
            "mean": {m: per_job[m].mean(1) for m in METRICS},
            "sem": {m: per_job[m].std(1) / np.sqrt(per_job[m].shape[1]) for m in METRICS}}


def value_at(run: dict[str, Any], metric: str, step: int) -> float:
    """Mean of `metric` at `step` (eval-step metrics: at the last evaluated step <= `step`)."""
    if metric in ("objective", "feature_dist"):
        return float(run["mean"][metric][step])
    i = max(j for j, s in enumerate(run["eval_steps"]) if s <= step)
    return float(run["mean"][metric][i])


def steps_to_reach(run: dict[str, Any], metric: str, target: float) -> int | None:
    """First step at which the run's mean `metric` is at least as good as `target` (None: never)."""
    higher = metric in ("mask_iou", "bg_psnr_db")
    if metric in ("objective", "feature_dist"):
        steps, vals = range(len(run["mean"][metric])), run["mean"][metric]
    else:
        steps, vals = run["eval_steps"], run["mean"][metric]
    for s, v in zip(steps, vals, strict=True):
        if (v >= target) if higher else (v <= target):
            return int(s)
    return None


def match_table(runs: list[dict[str, Any]], at: int) -> list[dict[str, Any]]:
    """For each run: steps to reach, per metric, the `w_avg` run of its space at step `at` (and the idinvert ref)."""
    out = []
    for r in runs:
        if r.get("reference"):
            continue
        wavg = next((x for x in runs if x["space"] == r["space"] and x["init"] == "wavg" and not x.get("reference")),
                    None)
        ref = next((x for x in runs if x["space"] == r["space"] and x.get("reference")), None)
        row: dict[str, Any] = {"space": r["space"], "init": r["init"], "lr": r["lr"]}
        for m in METRICS:
            if wavg is not None and wavg["steps"] >= at:
                row[f"{m}_target"] = value_at(wavg, m, at)
                row[f"{m}_steps"] = steps_to_reach(r, m, row[f"{m}_target"])
        if ref is not None:
            row["objective_idinvert_target"] = value_at(ref, "objective", ref["steps"])
            row["objective_idinvert_steps"] = steps_to_reach(r, "objective", row["objective_idinvert_target"])
        out.append(row)
    return out


def figure(runs: list[dict[str, Any]]) -> Any:
    fig, ax = common.new_figure(2, 2, (12, 8))
    titles = {"objective": "objective (best so far)", "mask_iou": "generated-mask IoU vs target",
              "bg_psnr_db": "background PSNR dB (outside the mask)", "feature_dist": "defect-region feature distance"}
    styles = {"encoder": "-", "wavg": "--", "random": ":"}
    colors = {"wplus": "tab:blue", "w": "tab:orange", "z": "tab:green"}
    for i, m in enumerate(METRICS):
        a = ax[i // 2, i % 2]
        for r in runs:
            x = np.arange(len(r["mean"][m])) if m in ("objective", "feature_dist") else np.asarray(r["eval_steps"])
            label = f"{r['space']} {r['init']} lr {r['lr']:g}" + (" (idinvert)" if r.get("reference") else "")
            a.plot(x + 1, r["mean"][m], styles.get(r["init"], "-"), color="tab:red" if r.get("reference") else
                   colors.get(r["space"], "k"), lw=1.3, label=label)
        a.set_xscale("log")
        a.set_xlabel("Adam steps + 1")
        a.set_title(titles[m], fontsize=10)
        if m in ("objective", "feature_dist"):
            a.set_yscale("log")
    ax[0, 0].legend(fontsize=6, ncol=2)
    fig.subplots_adjust(bottom=0.1, hspace=0.35)
    return fig


def main() -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle (default: the embedded default bundle)")
    ap.add_argument("--all-spaces", action="store_true",
                    help="the default model with spaces wplus, w, z (the shipped bundle if it has them)")
    ap.add_argument("--images", type=Path, default=None, help="held-out good images (default: fresh procedural parts)")
    ap.add_argument("--jobs", type=int, default=56)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--spaces", default=None, help="comma list (default: every space of the bundle)")
    ap.add_argument("--inits", default=",".join(INITS))
    ap.add_argument("--lr", type=float, default=None, help="constant Adam lr (default: the bundle's)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--other-steps", type=int, default=None,
                    help="steps for spaces other than wplus (default: --steps; e.g. 100 to save CPU time)")
    ap.add_argument("--reference-spaces", default="wplus",
                    help="spaces that also get the idinvert-setting run (lr 0.01, 100 steps); '' for none")
    ap.add_argument("--threads", type=int, default=1,
                    help="ONNX Runtime intra-op threads (default 1: fastest on a shared machine)")
    a = ap.parse_args()
    started, stamp = time.time(), machine_stamp()
    path = a.bundle or (common.default_model_all_spaces() if a.all_spaces else None) or common.DEFAULT_BUNDLE
    bundle = Bundle.load(path)
    spaces = a.spaces.split(",") if a.spaces else list(bundle.spaces)
    n_jobs, steps = a.jobs, a.steps
    if a.quick:
        n_jobs, steps, spaces = 8, 20, spaces[:1]
    ref_spaces = [x for x in a.reference_spaces.split(",") if x] if not a.quick else spaces
    batch = min(a.batch, max(bundle.step_batches(spaces[0])))
    lr = a.lr or bundle.defaults.lr
    top = max(steps, a.other_steps or 0)
    eval_steps = [s for s in EVAL_STEPS if s <= top] + ([top] if top not in EVAL_STEPS else [])
    n_parts = -(-n_jobs // max(1, len(bundle.defect_types) - 1))  # each part gets every defect type, as in the demo
    with tempfile.TemporaryDirectory() as tmp:
        parts = held_out_parts(n_parts, bundle.resolution, a.images, Path(tmp))
        # targets shaped like real defects, never G's own proposals: those would start every init at the proposal
        jobs = bench.make_jobs(bundle, n_jobs, seed=2026, parts=parts,
                               settings=resolve_settings(bundle, mask_shape="reference"))
    ref_at = min(100, steps)
    runs = []
    with load_backend(bundle, "ort-cpu", threads=a.threads) as be:
        for space in spaces:
            n = steps if space == "wplus" or a.other_steps is None or a.quick else a.other_steps
            cfgs = [(InversionConfig(space=space, steps=n, lr=lr, init=i, lr_schedule="constant",
                                     early_stop_patience=0), False) for i in a.inits.split(",")]
            if space in ref_spaces:
                ref = common.idinvert_config(space)
                ref.steps = ref_at
                cfgs.append((ref, True))
            for cfg, is_ref in cfgs:
                t0 = time.time()
                runs.append(run_config(be, bundle, jobs, cfg, batch, [s for s in eval_steps if s <= cfg.steps]))
                runs[-1]["reference"] = is_ref
                print(f"  {space:<5} {cfg.init:<7} lr {cfg.lr:<5g} {cfg.steps} steps: objective "
                      f"{runs[-1]['mean']['objective'][0]:.4f} -> {runs[-1]['mean']['objective'][-1]:.4f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
    table = match_table(runs, ref_at)
    enc = next((r for r in table if r["space"] == "wplus" and r["init"] == "encoder"), None)
    summary = {"encoder_init_steps_to_match_wavg_100": enc.get("objective_steps") if enc and ref_at == 100 else None}
    f = common.fmt
    tables = [
        (f"Steps to reach what w_avg init reaches at {ref_at} steps (same space, lr {lr:g}; – = not within "
         f"{steps})", common.md_table(
             ["space", "init", "objective", "mask IoU", "bg PSNR", "feature dist",
              f"objective of idinvert (w_avg, lr 0.01, {ref_at} steps)"],
             [[r["space"], r["init"], *[f(r.get(f"{m}_steps")) for m in METRICS],
               f(r.get("objective_idinvert_steps"))] for r in table])),
        (f"Targets: w_avg init at step {ref_at}", common.md_table(
            ["space", *METRICS, "idinvert objective"],
            [[r["space"], *[f(r.get(f"{m}_target"), 4) for m in METRICS], f(r.get("objective_idinvert_target"), 4)]
             for r in table if r["init"] == "wavg"])),
        ("Mean metrics at selected steps", common.md_table(
            ["space", "init", "lr", "step", *METRICS],
            [[r["space"], r["init"] + (" (idinvert)" if r["reference"] else ""), f(r["lr"], 3), s,
              *[f(value_at(r, m, s), 4) for m in METRICS]]
             for r in runs for s in (0, 1, 5, 10, 20, 100, 200) if s <= r["steps"]])),
    ]
    parts = f"--images {a.images}" if a.images else "fresh procedural parts"
    types = ", ".join(bundle.defect_types[1:])
    notes = [f"{n_jobs} jobs on held-out parts ({parts}), masks cycling through {types}; bundle {bundle.source} "
             f"({bundle.resolution} px); ONNX Runtime CPU, {a.threads} thread(s); batch {batch}",
             f"constant lr {lr:g} for every init (the bundle's default), early stop off; the idinvert-setting run "
             f"uses w_avg init and lr 0.01",
             "per-step values are means over jobs of the best-so-far latent (what invert(steps=k) returns with a "
             "constant lr); IoU / PSNR at log-spaced steps " + ",".join(map(str, eval_steps))]
    common.write_results("convergence", summary=summary, data={"runs": runs, "match": table, "jobs": n_jobs},
                         tables=tables, figure=figure(runs), quick=a.quick, out_dir=a.out_dir, notes=notes,
                         machine=stamp, started=started)
    print(summary)


if __name__ == "__main__":
    main()
