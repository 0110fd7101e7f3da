"""Regenerate `benchmarks/README.md` from the committed results (`benchmarks/results/*.{json,md,png}`).

    python benchmarks/make_readme.py

The README = the fixed introduction below + a targets table (each target, the measured figure,
the command and the machine) + `findings.md` (hand-written: what the profile says, what to change) + every
result's own markdown (its tables under the command and machine that produced it) and plot, then the
downstream protocol (`DOWNSTREAM`) and its result when it is a v2 one. Quick (smoke) results are never used.
"""

from __future__ import annotations

import json
from typing import Any

import common

INTRO = """\
# Benchmarks

Scripts that prove or disprove "few-step inversion on the edge, fast". Each writes
`results/<name>.json` (top-level `summary` with the headline figures, `machine`, `command`), `results/<name>.md`
(its tables) and `results/<name>.png`, all stamped with the machine (CPU model, cores, library versions, git
commit, load average). `--quick` runs in about 2 minutes for CI smoke tests and writes to `results/quick/`,
labelled QUICK: those are not results. Nothing here asserts speed.

Scripts (run from the repository root with the training venv, e.g. `python benchmarks/throughput.py`):

- `throughput.py`: one optimisation step (forward + backward) in torch eager vs ONNX Runtime (and CUDA /
  TensorRT where present), batch 1/4/8; end-to-end defects/s at K = 5, 10, 20 vs the idinvert reference (torch
  eager, Adam lr 0.01, 100 steps from `w_avg`); FLOPs per step as a share of the measured matmul ceiling.
  Summary: `ort_vs_torch_step_speedup`, `end_to_end_speedup_vs_idinvert`, `step_flops_share_of_ceiling`.
- `convergence.py`: objective, mask IoU, background PSNR and defect-region feature distance per Adam step up
  to 200 for encoder / `w_avg` / random init in spaces z / w / wplus over >= 50 held-out jobs.
  Summary: `encoder_init_steps_to_match_wavg_100`.
- `footprint.py`: cold start (new process -> first finished job of `defectgen run`), peak RSS, size of a
  runtime-only venv vs the training venv. Summary: `cold_start_s`, `peak_rss_mb`, `runtime_venv_mb`,
  `train_venv_mb`.
- `profile_step.py`: ONNX Runtime per-op profile of the step graph and a session-option sweep.
- `micro_ops.py`: micro-benchmarks behind the profile's findings (2x FIR resampling and leaky-ReLU backward
  written in cheaper, equivalent forms).
- `blockiness.py`: share of flat 2x2 blocks inside the masks of `defectgen run` on the 512 px example part
  (upscaled crops show up as flat blocks), against the input at the same places.
- `colour_drift.py`: colour distance (per-channel Wasserstein-1, grey levels) of G's defects to the real ones
  of the type, for G's proposals and after the inversion's steps at several learning rates and spaces.
- `make_readme.py`: rebuilds this file from `results/`.

`defectgen bench` is the torch-free counterpart for an edge box (`defectgen/measure/`, which these scripts
share their measuring code with): step and end-to-end timing of `defectgen run`'s own job path, FLOP share and
`--profile` on any bundle and backend.

How things are measured (details in each script's docstring):
- warm-up calls excluded; contenders timed in alternating rounds so that load changes hit all alike; median with
  p25-p75; absolute times are stamped with the machine and its load average, ratios are within one run;
- FLOPs = 2 x multiply-accumulates of Conv, ConvTranspose, MatMul and Gemm, from shapes after ONNX shape
  inference of the exported graph (elementwise ops not counted); the ceiling is the best median fp32 matmul
  GFLOP/s of ONNX Runtime's `MatMul` (same thread count) and `numpy.matmul` (all cores), measured in the same run;
- torch eager runs the same nets and objective the step graph is traced from (`export.torch_backend`);
- the "128 px model" is randomly initialised with the default channel config and exported through
  `defectgen.export`: untrained weights time the same as trained ones; its quality columns mean nothing;
- this workplace has no GPU: the CUDA / TensorRT rows are listed as not available, with the reason.
"""


DOWNSTREAM = """\
## downstream (defect quality, few-shot protocol v2)

`downstream.py` asks whether a segmenter trained on a source's synthetic defects finds **real** ones, with few
real defects (as in practice: MVTec hazelnut has ~17-18 per type) and a comparison that can tell a generator
from copy-paste. Each step is in `downstream/pipeline.py`; the figures in `downstream/features.py`.

- **Data**: `defectgen make-data --res 128 --n-good 200 --n-defect 18 --n-test-good 20 --seed 1`, or
  `--data` an MVTec category.
- **Split**: per type, the first third by sorted file name (6 of 18) is held in: the only real defects a
  generator, the copy-paste bank and the `real` row may see. The other 12 + `test/good` are evaluation only.
  `--validate` (tuning) halves the held-in third again and evaluates on its second half + a tenth of
  `train/good`; it never reads the held-out defects.
- **Sources**, 500 images each, made once (seed 0) on the same good images in the same order: `defectgen` (the
  bundle's recommended run settings; for the shipped bundles G proposes each random target, defect and mask),
  `defectgen_g1` (`--guide-weight 1 --mask-mode target`: the held-in reference pasted into the same targets,
  i.e. copy-paste through defectgen's pipeline and masks), `defectgen_g0` (`--guide-weight 0`: the generator
  alone), `defectgen_surface` (`--detail-from surface`: the detail above G's resolution from the good part's own
  grain, not from the stitched real defect, so every defect pixel above that grain is G's), `copypaste`,
  `draem`, `cutpaste`, `mix` (even jobs from defectgen, odd from copy-paste), `real` (the held-in defects
  themselves, a reference). A defectgen variant whose options (guide weight, mask mode, detail source) all equal
  the main row's is the same set and is reported as `= defectgen`.
- **Segmenter**: one U-Net (8 channels, 4 levels, 128 px, 500 Adam steps of 16 images, half good half
  synthetic) per source and seed; seeds 0, 1, 2; mean ± sample std (n = 3) of pixel AP, pixel AUROC, F1-max,
  image AUROC on the held-out set; per-type pixel AP (that type's images + all good ones, mean over seeds).
- **Feature space** of the figures: the down path of the `real` row's seed-0 segmenter (no pretrained LPIPS
  exists here). A defect crop is a 40 px window at 128 px, centred on the defect, holding the defect's pixels
  relative to the median colour of the 2 px of surface around it, on flat grey (the surface itself would
  dominate; copy-paste's colour shift would hide copies). Distance = LPIPS with uniform weights: per level,
  channel-unit-normalised activations, mean squared difference over pixels, mean over levels.
  - *diversity*: mean distance over pairs of crops within a type, averaged over types;
  - *memorisation*: mean distance of each crop to its nearest held-in real crop (any type, any of the 8
    mirror/transpose variants); 0 = a copy. The held-out real defects are the reference (a new real defect);
  - *alignment*: mean IoU between each sample's label and that segmenter's prediction on it, thresholded at the
    F1-max threshold over its own training data (held-in defects + 20 good images).
  - A one-seed check run (default bundle: not fair, not a result) read memorisation 0.020 for defectgen with
    guide weight 1, 0.025 copy-paste, 0.056 held-out real defects, 0.064 the generator alone, 0.15-0.20
    DRAEM/CutPaste; alignment 0.86 real, 0.65-0.66 copy-paste and defectgen g1, 0.34 the generator alone.
- **Fair defectgen row**: `--bundle B`, trained on `train/good` + the held-in defects only. Why: every other
  source sees only those 6 real defects per type; a generator trained on more would win by its data, not its
  method, and one that saw a held-out defect would be scored on its own training images. Next to the bundle,
  `B/provenance.json` (zip bundles: `B.provenance.json` beside `B.zip`) says so:
  `{"trained_on": "...", "train_command": "...", "train_seconds": 1234}`, optionally `"held_in": {type: [file
  names]}` (e.g. the patch trainer's `held_in.json`), which is checked against the split: a held-out file there
  makes the rows not fair. Without the file the JSON records null and the rows are labelled "not fair". The
  shipped default bundle (trained on a whole set with all its defects) is refused, also as a copy, unless
  `--allow-default-bundle` (smoke runs; "not fair"). `--train-budget MINUTES` trains a whole-part bundle on
  the held-in split inside the run and writes its provenance.
- **Results**: `results/downstream.{json,md,png}` (JSON `summary`: per source `pixel_ap`/`pixel_auroc`/`f1_max`/
  `image_auroc` as `{mean, std, n}`, `per_type_ap`, `diversity`, `memorisation`, `alignment`; `protocol`:
  `held_in_per_type`, `seeds`, `data`, `defectgen_bundle` with `path`, `trained_on`, `train_command`,
  `train_seconds`), plus a contact sheet per source. Only a full, fair run of all sources writes there; quick,
  validation, partial and not-fair runs go to `results/quick/`, `results/validation/`, `results/quick/scratch/`.
- **Time** (2-core CPU): one segmenter takes 0.6 s per step on one thread, ~300 s for 500 steps when it has
  a core to itself (280-580 s measured beside other jobs). 8 sources x 3 seeds = 24 trainings (21 when a
  `_g1`/`_g0` row equals the main one), two at a time with `--jobs 2`: ~60 min; making the sources ~5 min (three
  `defectgen run`s of 500 jobs, 120-200 s each with the default 64 px bundle), data, arrays and figures ~2 min:
  **about 70 min on an otherwise idle box**; beside another job on one core, about twice that. Measured: a
  one-seed run of all sources with `--jobs 1` on a box loaded by two other jobs took 58 min (7 trainings,
  generation 6.5 min, figures 51 s). The first full run of the committed setting (3 seeds, all sources, patch
  bundle, `--jobs 2`, idle box) took **56 min** (3341 s): generation 1.5 min, 21 trainings of 236-381 s.
  `--quick` (CI) takes 25-40 s on one core.
- **Cache**: each finished (source, seed) is kept in `WORK/seg_cache/` (`--work WORK`; default a temp folder),
  keyed by the bytes of its training and evaluation arrays, the segmenter config with the seed and the code that
  trains and scores (`segmenter.py`, `metrics.py`, `train_task`). A rerun with the same `--work` that changes
  only the defectgen rows (another bundle, other `--run-args`) retrains only those (about 25 min instead of
  56); the JSON marks each reused run `"cached": true`.
- **Contrast** (pixel-level, per source and type): |mean colour inside the label − mean colour of the 3 px ring
  around it| in 8-bit units, mean over channels: how visible the defects are against their own surface.

```bash
OMP_NUM_THREADS=1 python benchmarks/downstream.py --bundle B --jobs 2    # the full protocol
python benchmarks/downstream.py --quick --allow-default-bundle           # CI smoke test (not fair)
```
"""


def downstream_section() -> list[str]:
    """The protocol text, then the committed result if it was made by this protocol (v2)."""
    parts = [DOWNSTREAM]
    res = load("downstream")
    if res is not None and res.get("protocol", {}).get("version") == 2:
        md = (common.RESULTS / "downstream.md").read_text()
        parts.append(md.replace("](", "](results/").replace("\n## ", "\n### ").replace("# ", "### ", 1))
    else:
        parts.append("No result of this protocol is committed yet.\n")
    return parts

def load(name: str) -> dict[str, Any] | None:
    p = common.RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def target_rows(res: dict[str, dict[str, Any] | None]) -> list[list[str]]:
    f = common.fmt

    def got(name: str, key: str, digits: int = 2) -> tuple[str, str, str]:
        r = res.get(name)
        if r is None:
            return "not run yet", "–", "–"
        v = r["summary"].get(key)
        # merged throughput results: the headline comes from the 128 px model, stamped by its own run
        src = next((m for m in r.get("models", []) if "128" in str(m.get("label"))), r) if name == "throughput" else r
        return f(v, digits), f"`{src['command']}`", src["machine"]["date_utc"]

    rows = []
    for target, name, key, ok, digits in [
        ("ONNX Runtime step >= 1.5x torch eager (128 px, batch 8)", "throughput", "ort_vs_torch_step_speedup",
         lambda v: v >= 1.5, 2),
        (">= 60 % of the measured matmul GFLOP/s (128 px, batch 8)", "throughput", "step_flops_share_of_ceiling",
         lambda v: v >= 0.6, 3),
        ("encoder init reaches the 100-step w_avg objective in <= 5 steps", "convergence",
         "encoder_init_steps_to_match_wavg_100", lambda v: v <= 5, 0),
        ("end to end >= 25x the idinvert reference defects/s", "throughput", "end_to_end_speedup_vs_idinvert",
         lambda v: v >= 25, 1),
        ("cold start <= 1.5 s", "footprint", "cold_start_s", lambda v: v <= 1.5, 2),
        ("peak RSS <= 400 MB", "footprint", "peak_rss_mb", lambda v: v <= 400, 0),
        ("runtime venv <= 150 MB", "footprint", "runtime_venv_mb", lambda v: v <= 150, 0),
    ]:
        value, cmd, when = got(name, key, digits)
        r = res.get(name)
        raw = r["summary"].get(key) if r else None
        verdict = "–" if raw is None else ("met" if ok(raw) else "**not met**")
        rows.append([target, value, verdict, cmd, when])
    return rows


def main() -> None:
    names = ["throughput", "convergence", "footprint", "profile_step", "micro_ops", "blockiness", "colour_drift"]
    res = {n: load(n) for n in names}
    parts = [INTRO, "## Targets", "",
             common.md_table(["target", "measured", "verdict", "command", "measured at (UTC)"], target_rows(res)),
             "", "Machine of the latest runs: " + next((common.stamp_line(r["machine"]) for r in res.values() if r),
                                                     "–"), ""]
    findings = common.ROOT / "benchmarks" / "findings.md"
    if findings.is_file():
        parts += [findings.read_text(), ""]
    for n in names:
        md = common.RESULTS / f"{n}.md"
        if not md.is_file():
            parts += [f"## {n}", "", "Not run yet.", ""]
            continue
        text = md.read_text().replace("](", "](results/").replace("\n## ", "\n### ").replace("# ", "## ", 1)
        parts += [text, ""]
    parts += downstream_section()
    (common.ROOT / "benchmarks" / "README.md").write_text("\n".join(parts))
    print("wrote benchmarks/README.md")


if __name__ == "__main__":
    main()
