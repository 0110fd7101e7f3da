"""The downstream protocol, step by step (the entry point is `benchmarks/downstream.py`):

1. data: `--data ROOT` (an MVTec-layout category) or a fresh `defectgen make-data --n-defect 18` set;
2. split each defect type: the first third by sorted file name held in (generator side), the rest held out;
3. each source's synthetic set, made once on the same good training images in the same order;
4. per source and segmenter seed, the same U-Net (budget, data besides the defects) trained on good + that
   source's images, evaluated on the held-out real defects + good test images (mean ± std over seeds);
5. diversity, memorisation and alignment in the feature space of the real-trained segmenter (`features.py`);
6. `downstream.{json,md,png}` and a contact sheet per source in `--out`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.data.mvtec import MVTecCategory

from . import bundle_info, report
from .bundle_info import fail
from .evaluate import eval_set, generation_quality, load_pairs, source_set
from .figures import source_figures
from .generate import GenContext, aliases, generate_all, needed
from .options import Preset, parse_args, preset
from .seeds import Task, aggregate, run_tasks, save_arrays
from .sources import DEFECTGEN_VARIANTS, SOURCES, plan_jobs, read_samples
from .split import Split, split_category, validation_split, write_held_in

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
PROTOCOL_VERSION = 2


def _names(args: argparse.Namespace) -> list[str]:
    names = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SOURCES))
    if unknown or not names:
        fail(f"unknown source(s) {unknown} in --sources; choose from {', '.join(SOURCES)}")
    return names


def _uses_bundle(names: list[str]) -> bool:
    return any(n in DEFECTGEN_VARIANTS or n == "mix" for n in names)


def _out_dir(args: argparse.Namespace, mode: str, committable: bool) -> Path:
    """Smoke, tuning, partial and not-fair runs never land on the committed results."""
    sub = "quick" if args.quick else "validation" if args.validate else "" if committable else "not_fair"
    out = args.out or RESULTS / sub
    if out.resolve() == RESULTS.resolve() and not committable:
        fail(f"a {mode} run (quick, validation, not fair or not all sources) may not overwrite "
             f"benchmarks/results/downstream.*; pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _dataset(args: argparse.Namespace, pre: Preset, work: Path) -> tuple[Path, dict[str, Any]]:
    if args.data is not None:
        return args.data, {"name": args.data.name, "root": str(args.data), "procedural": False}
    root = work / "data"
    settings = {"res": pre.data_res, "n-good": pre.n_good, "n-defect": pre.n_defect,
                "n-test-good": pre.n_test_good, "seed": args.data_seed}
    opts = [x for k, v in settings.items() for x in (f"--{k}", str(v))]
    code = subprocess.run([sys.executable, "-m", "defectgen.cli", "make-data", str(root), *opts],
                          capture_output=True, text=True, check=False)
    if code.returncode != 0:
        raise RuntimeError(f"defectgen make-data failed: {code.stderr[-2000:]}")
    return root, {"name": f"procedural nuts (make-data {' '.join(opts)})", "root": str(root), "procedural": True,
                  "command": "defectgen make-data DATA " + " ".join(opts)}


def _bundle(args: argparse.Namespace, path: Path | None, split: Split, work: Path, res: int, data_name: str,
            notes: list[str]) -> tuple[Path, dict[str, Any]]:
    """The bundle of the defectgen rows and its protocol record (training one with `--train-budget`)."""
    if path is not None:
        return path, bundle_info.describe(path, how="given (--bundle)" if args.bundle else "default (--allow-default-"
                                                                                            "bundle)")
    from .train_bundle import train_bundle

    held_in = write_held_in(split, work / "held_in")
    path = train_bundle(held_in, work / "train", minutes=args.train_budget, res=res, seed=args.seed, log=notes,
                        trained_on=f"train/good + the held-in defects (first third per type) of {data_name}")
    return path, bundle_info.describe(path, how=f"trained here (--train-budget {args.train_budget:g})")


def _load_source(name: str, work: Path, out: Path, res: int, arrays: Path) -> dict[str, Any]:
    """Arrays for training, contact sheets and pixel-level quality of one generated source."""
    samples = read_samples(work / "sources" / name)
    images, masks = source_set(samples, res)
    save_arrays(arrays, name, {"images": images, "masks": masks})
    np.save(arrays / f"{name}_types.npy", np.array([s.type for s in samples]))
    sheet = report.source_sheet(samples, out / f"downstream_{name}.png")
    if name != "real":
        report.zoom_sheet(samples, out / f"downstream_{name}_zoom.png")
    return {"contact_sheet": sheet.name, "quality": generation_quality(samples), "count": len(samples)}


def _train_all(trained: list[str], seeds: tuple[int, ...], pre: Preset, arrays: Path,
               jobs: int) -> dict[str, list[dict[str, Any]]]:
    """Every (source, seed) segmenter; the real source's seed-0 net is kept as the figures' feature space."""
    order = ["real", *[n for n in trained if n != "real"]]  # the feature net first, so a crash shows early
    tasks = [Task(n, s, str(arrays), str(arrays / "real_net.pt") if (n, s) == ("real", seeds[0]) else None)
             for n in order for s in seeds]
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in run_tasks(tasks, pre.seg, jobs):
        runs.setdefault(r.pop("source"), []).append(r)
    return runs


def _summary(names: list[str], alias: dict[str, str], runs: dict[str, list[dict[str, Any]]],
             figs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for n in names:
        src = alias.get(n, n)
        out[n] = {**aggregate(runs[src]), **{k: figs[src][k] for k in ("diversity", "memorisation", "alignment")}}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the protocol and write the results; returns the results dict."""
    if args.render_only:
        return render_only(args)
    t_start, timing, notes = time.perf_counter(), {}, []
    mode = ("quick" if args.quick else "full") + ("-validation" if args.validate else "")
    pre, names = preset(args), _names(args)
    names = names if "real" in names else [*names, "real"]  # the figures' feature space is trained on it
    path = bundle_info.check_bundle(args.bundle, allow_default=args.allow_default_bundle,
                                    train_budget=args.train_budget) if _uses_bundle(names) else None
    fair = path is None or (bundle_info.describe(path, how="")["fair"])
    work = args.work or Path(tempfile.gettempdir()) / f"defectgen_downstream_{mode}"
    work.mkdir(parents=True, exist_ok=True)
    out = _out_dir(args, mode, fair and mode == "full" and set(names) == set(SOURCES))

    t0 = time.perf_counter()
    root, data = _dataset(args, pre, work)
    cat = MVTecCategory(root)
    split = split_category(cat)
    if args.validate:
        split = validation_split(split)
        notes.append("VALIDATION run (--validate): evaluated on half of the held-in defects and a tenth of "
                     "train/good, for tuning; these are not the benchmark's held-out numbers.")
    res = min(pre.seg.res, max(read_res(cat), 16))
    pre = replace(pre, seg=replace(pre.seg, res=res))
    timing["data_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bundle, brec = _bundle(args, path, split, work, res, data["name"], notes) if _uses_bundle(names) else (
        None, bundle_info.unused())
    timing["bundle_s"] = time.perf_counter() - t0
    data.update({"resolution": read_res(cat), "types": split.types, "train_good": len(split.train_good),
                 "test_good": len(split.test_good), "held_out_defects": sum(map(len, split.held_out.values())),
                 "split": split.describe()})

    alias = aliases(names, brec.get("run_defaults") or {}, args.run_args)
    made = needed(names, alias)
    ctx = GenContext(split, plan_jobs([i.image_path for i in split.train_good], split.types, pre.n_synthetic),
                     work, bundle, args.seed, pre.iou_jobs, args.run_args, args.textures, pre.jobs)
    t0 = time.perf_counter()
    gen = generate_all(made, ctx)
    timing["generation_s"] = time.perf_counter() - t0
    arrays = work / "arrays"
    _save_eval(split, res, arrays)
    sources = {n: {"generation": gen[n], **_load_source(n, work, out, res, arrays)} for n in made}

    t0 = time.perf_counter()
    trained = [n for n in names if n not in alias]
    runs = _train_all(trained, pre.seeds, pre, arrays, pre.jobs)
    timing["segmenters_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    figs, reference = source_figures(trained, arrays, pre.seg)
    timing["figures_s"] = time.perf_counter() - t0
    for n in trained:
        sources[n].update({"runs": runs[n], "figures": figs[n]})
    for a, target in alias.items():
        sources[a] = {"same_as": target}
    timing["total_s"] = time.perf_counter() - t_start

    results = {
        "benchmark": "downstream", "mode": mode, "quick": args.quick, "command": _command(), "machine_line": "",
        "summary": _summary(names, alias, runs, figs), "reference": reference,
        "protocol": {"version": PROTOCOL_VERSION, "held_in_per_type": {t: len(v) for t, v in split.held_in.items()},
                     "held_in_rule": "first third per type by sorted file name", "seeds": list(pre.seeds),
                     "data": data, "defectgen_bundle": brec, "sources": names, "same_as": alias,
                     "n_synthetic": pre.n_synthetic, "generation_seed": args.seed, "run_args": args.run_args,
                     "textures": str(args.textures) if args.textures else "good images", "jobs": pre.jobs,
                     "segmenter": asdict(pre.seg)},
        "sources": sources, "timing": timing, "notes": notes + _notes(mode, brec) + list(args.note),
    }
    report.stamp(results)
    report.write_all(results, out)
    print(f"downstream: wrote {out / 'downstream.json'} ({mode}, {timing['total_s']:.0f} s)", flush=True)
    return results


def _save_eval(split: Split, res: int, arrays: Path) -> None:
    save_arrays(arrays, "eval", eval_set(split, res))
    good, _ = load_pairs([(i.image_path, None) for i in split.train_good], res)
    np.save(arrays / "good_images.npy", good)


def render_only(args: argparse.Namespace) -> dict[str, Any]:
    """Rewrite md/png (and the JSON's notes) from an existing `downstream.json`, adding `--note`s."""
    path = (args.out or RESULTS / ("quick" if args.quick else "")) / "downstream.json"
    results = json.loads(path.read_text(encoding="utf-8"))
    if results.get("protocol", {}).get("version") != PROTOCOL_VERSION:
        fail(f"{path} was written by an older protocol; its report cannot be re-rendered by this one")
    results["notes"] = list(results.get("notes", [])) + [n for n in args.note if n not in results.get("notes", [])]
    report.write_all(results, path.parent)
    print(f"downstream: re-rendered {path.parent / 'downstream.md'}", flush=True)
    return results


def _command() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).resolve().is_relative_to(REPO):
        argv[0] = str(Path(argv[0]).resolve().relative_to(REPO))
    return "python " + " ".join(shlex.quote(a) for a in argv)


def read_res(cat: MVTecCategory) -> int:
    """The data's image side (of its first good training image; MVTec categories have one size)."""
    img, _ = cat.train_good()[0].load()
    return int(max(img.shape[:2]))


def _notes(mode: str, bundle: dict[str, Any]) -> list[str]:
    notes = []
    if mode.startswith("quick"):
        notes.append("QUICK mode: tiny data, few images per source and a few segmenter steps; a smoke test of the "
                     "pipeline, not a measurement of defect quality.")
    if bundle.get("fair") is False:
        notes.append(f"NOT FAIR defectgen rows: {bundle['not_fair_because']}.")
    return notes


__all__ = ["SOURCES", "parse_args", "run"]
