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
from dataclasses import asdict, dataclass, field, replace
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
    """Smoke, tuning, partial and not-fair runs never land on the committed results (by default they go to
    the git-ignored `results/quick/`)."""
    sub = "quick" if args.quick else "validation" if args.validate else "" if committable else "quick/scratch"
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
        return path, bundle_info.describe(path, how="given (--bundle)" if args.bundle else "embedded default bundle")
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
        keys = ("diversity", "memorisation", "alignment", "colour_coverage")
        out[n] = {**aggregate(runs[src]), **{k: figs[src][k] for k in keys if k in figs[src]}}
    return out


@dataclass
class Run:
    """The state one run of the protocol builds up, phase by phase (`run` calls them in order)."""

    args: argparse.Namespace
    mode: str
    pre: Preset
    names: list[str]
    work: Path
    out: Path
    bundle: Path | None  # None: trained in `data` (--train-budget) or no defectgen row
    timing: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def timed(self, key: str, t0: float) -> None:
        self.timing[key] = time.perf_counter() - t0


def _start(args: argparse.Namespace) -> Run:
    """Options, the bundle check (before any work: a refused bundle costs nothing) and the folders."""
    mode = ("quick" if args.quick else "full") + ("-validation" if args.validate else "")
    names = _names(args)
    names = names if "real" in names else [*names, "real"]  # the figures' feature space is trained on it
    path = bundle_info.check_bundle(args.bundle, allow_default=args.allow_default_bundle,
                                    train_budget=args.train_budget) if _uses_bundle(names) else None
    fair = path is None or bundle_info.describe(path, how="")["fair"]
    work = args.work or Path(tempfile.gettempdir()) / f"defectgen_downstream_{mode}"
    work.mkdir(parents=True, exist_ok=True)
    out = _out_dir(args, mode, fair and mode == "full" and set(names) == set(SOURCES))
    return Run(args, mode, preset(args), names, work, out, path)


def _data(r: Run) -> tuple[Split, dict[str, Any], dict[str, Any]]:
    """The data set, its split, the segmenter's resolution and the bundle record."""
    t0 = time.perf_counter()
    root, data = _dataset(r.args, r.pre, r.work)
    cat = MVTecCategory(root)
    split = split_category(cat)
    if r.args.validate:
        split = validation_split(split)
        r.notes.append("VALIDATION run (--validate): evaluated on half of the held-in defects and a tenth of "
                       "train/good, for tuning; these are not the benchmark's held-out numbers.")
    res = min(r.pre.seg.res, max(read_res(cat), 16))
    r.pre = replace(r.pre, seg=replace(r.pre.seg, res=res))
    data.update({"resolution": read_res(cat), "types": split.types, "train_good": len(split.train_good),
                 "test_good": len(split.test_good), "held_out_defects": sum(map(len, split.held_out.values())),
                 "split": split.describe()})
    r.timed("data_s", t0)
    t0 = time.perf_counter()
    brec = bundle_info.unused()
    if _uses_bundle(r.names):
        r.bundle, brec = _bundle(r.args, r.bundle, split, r.work, res, data["name"], r.notes)
        names = {t: [i.image_path.name for i in v] for t, v in split_category(cat).held_in.items()}
        bundle_info.check_held_in(brec, names)  # against the full held-in third (--validate uses half of it)
        if brec["fair"] is False:
            r.out = _out_dir(r.args, r.mode, committable=False)  # known only now: keep off the committed results
    r.timed("bundle_s", t0)
    return split, data, brec


def _sources(r: Run, split: Split, alias: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every needed source made once, loaded at the segmenter's resolution, with its contact sheets."""
    t0 = time.perf_counter()
    a = r.args
    ctx = GenContext(split, plan_jobs([i.image_path for i in split.train_good], split.types, r.pre.n_synthetic),
                     r.work, r.bundle, a.seed, r.pre.iou_jobs, a.run_args, a.textures, r.pre.jobs,
                     1 if r.pre.jobs > 1 else r.pre.seg.threads)
    made = needed(r.names, alias)
    gen = generate_all(made, ctx)
    r.timed("generation_s", t0)
    arrays = r.work / "arrays"
    _save_eval(split, r.pre.seg.res, arrays)
    return {n: {"generation": gen[n], **_load_source(n, r.work, r.out, r.pre.seg.res, arrays)} for n in made}


def _measure(r: Run, trained: list[str], sources: dict[str, dict[str, Any]]) -> tuple[
        dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]], dict[str, Any]]:
    """Segmenters over seeds, then the feature-space figures; adds both to `sources`."""
    t0 = time.perf_counter()
    arrays = r.work / "arrays"
    runs = _train_all(trained, r.pre.seeds, r.pre, arrays, r.pre.jobs)
    r.timed("segmenters_s", t0)
    t0 = time.perf_counter()
    figs, reference = source_figures(trained, arrays, r.pre.seg)
    r.timed("figures_s", t0)
    for n in trained:
        sources[n].update({"runs": runs[n], "figures": figs[n]})
    return runs, figs, reference


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the protocol and write the results; returns the results dict."""
    if args.render_only:
        return render_only(args)
    r = _start(args)
    split, data, brec = _data(r)
    alias = aliases(r.names, brec.get("run_defaults") or {}, args.run_args)
    sources = _sources(r, split, alias)
    trained = [n for n in r.names if n not in alias]
    runs, figs, reference = _measure(r, trained, sources)
    sources.update({a: {"same_as": target} for a, target in alias.items()})
    r.timed("total_s", r.started)
    protocol = {"version": PROTOCOL_VERSION, "held_in_per_type": {t: len(v) for t, v in split.held_in.items()},
                "held_in_rule": "first third per type by sorted file name", "seeds": list(r.pre.seeds),
                "data": data, "defectgen_bundle": brec, "sources": r.names, "same_as": alias,
                "n_synthetic": r.pre.n_synthetic, "generation_seed": args.seed, "run_args": args.run_args,
                "textures": str(args.textures) if args.textures else "good images", "jobs": r.pre.jobs,
                "segmenter": asdict(r.pre.seg)}
    results = {"benchmark": "downstream", "mode": r.mode, "quick": args.quick, "command": _command(),
               "summary": _summary(r.names, alias, runs, figs), "reference": reference, "protocol": protocol,
               "sources": sources, "timing": r.timing, "notes": r.notes + _notes(r.mode, brec) + list(args.note)}
    report.stamp(results)
    report.write_all(results, r.out)
    print(f"downstream: wrote {r.out / 'downstream.json'} ({r.mode}, {r.timing['total_s']:.0f} s)", flush=True)
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
