"""The whole issue-8 protocol, step by step (the entry point is `benchmarks/downstream.py`):

1. data: `--data ROOT` (an MVTec-layout category) or a fresh procedural `make-data` set;
2. split each defect type: one third held in (generator side: training data, references), two thirds held out;
3. N synthetic defective images from each source, on the same good training images in the same order;
4. per source, the same U-Net (seed, budget) trained on good + that source's images, evaluated on the
   held-out real defects + good test images;
5. `downstream.{json,md,png}` and a contact sheet per source in `--out`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.data.mvtec import MVTecCategory
from defectgen.data.procedural import make_dataset
from defectgen.runtime.bundle import MANIFEST_NAME, Bundle, default_bundle_path

from . import report
from .defectgen_source import generate_defectgen, inversion_sheet
from .evaluate import eval_set, generation_quality, load_pairs, real_diversity, source_set
from .metrics import pr_curve, segmentation_metrics
from .segmenter import SegConfig, predict, train_segmenter
from .sources import BASELINES, SOURCES, generate_baseline, plan_jobs, read_samples
from .split import Split, split_category, validation_split, write_held_in

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Preset:
    """Sizes that differ between the full protocol and `--quick` (CI smoke test)."""

    data_res: int
    n_good: int
    n_defect: int
    n_test_good: int
    n_synthetic: int
    iou_jobs: int
    seg: SegConfig


FULL = Preset(data_res=128, n_good=200, n_defect=40, n_test_good=20, n_synthetic=500, iou_jobs=32,
              seg=SegConfig(res=128, width=8, depth=4, steps=500, batch=16))
QUICK = Preset(data_res=64, n_good=16, n_defect=6, n_test_good=4, n_synthetic=24, iou_jobs=8,
               seg=SegConfig(res=64, width=8, depth=3, steps=20, batch=8))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="downstream.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="MVTec-layout category (default: a fresh procedural make-data set)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results, quick: .../results/quick)")
    p.add_argument("--work", type=Path, help="scratch folder (default: $TMPDIR/defectgen_downstream_<mode>)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for CI (minutes -> seconds)")
    p.add_argument("--bundle", type=Path, help="defectgen bundle (default: the shipped default bundle)")
    p.add_argument("--train-budget", type=float, default=0.0,
                   help="minutes to train+export a bundle on the held-in split instead (option a; 0 = off)")
    p.add_argument("--sources", default=",".join(SOURCES), help=f"comma list of {', '.join(SOURCES)}")
    p.add_argument("--n-synthetic", type=int, help="synthetic images per source (default 500, quick 24)")
    p.add_argument("--textures", type=Path, help="DRAEM texture folder (default: the good images themselves)")
    p.add_argument("--seed", type=int, default=0, help="split, sampling and segmenter seed")
    p.add_argument("--data-seed", type=int, default=1, help="seed of the procedural set when --data is not given")
    p.add_argument("--data-res", type=int, help="resolution of the procedural set (default 128, quick 64)")
    p.add_argument("--seg-res", type=int, help="segmenter resolution (default 128, quick 64)")
    p.add_argument("--seg-steps", type=int, help="segmenter optimiser steps (default 500, quick 20)")
    p.add_argument("--seg-width", type=int, help="segmenter channels at the top level (default 8)")
    p.add_argument("--seg-batch", type=int, help="segmenter batch size (default 16, quick 8)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the segmenter")
    p.add_argument("--iou-jobs", type=int, help="jobs rerun with --mask-mode generated for the mask IoU")
    p.add_argument("--run-args", default="", help="extra `defectgen run` options, e.g. \"--steps 20 --lambda def=1\"")
    p.add_argument("--validate", action="store_true",
                   help="tune mode: evaluate on half of the held-in defects (the other half are the references) "
                        "and on a tenth of train/good; the held-out defects and test images are never read")
    p.add_argument("--render-only", action="store_true",
                   help="only rewrite downstream.md/.png from the downstream.json in --out (with any --note)")
    p.add_argument("--note", action="append", default=[], help="a note to add to the report (repeatable)")
    p.add_argument("--real-reference", action="store_true",
                   help="also train on the held-in real defects themselves (a reference row, not a source)")
    return p.parse_args(argv)


def _preset(args: argparse.Namespace) -> Preset:
    base = QUICK if args.quick else FULL
    seg = replace(base.seg, seed=args.seed, threads=args.threads,
                  **{k: v for k, v in (("res", args.seg_res), ("steps", args.seg_steps), ("width", args.seg_width),
                                       ("batch", args.seg_batch)) if v is not None})
    return replace(base, seg=seg, data_res=args.data_res or base.data_res,
                   n_synthetic=args.n_synthetic or base.n_synthetic,
                   iou_jobs=base.iou_jobs if args.iou_jobs is None else args.iou_jobs)


def _dataset(args: argparse.Namespace, pre: Preset, work: Path) -> tuple[Path, dict[str, Any]]:
    if args.data is not None:
        return args.data, {"name": args.data.name, "root": str(args.data), "procedural": False}
    root = work / "data"
    settings = {"res": pre.data_res, "n_good": pre.n_good, "n_defect": pre.n_defect,
                "n_test_good": pre.n_test_good, "seed": args.data_seed}
    make_dataset(root, **settings)
    name = f"procedural nuts (make-data --res {pre.data_res} --seed {args.data_seed})"
    return root, {"name": name, "root": str(root), "procedural": True, "make_data": settings}


def _bundle(args: argparse.Namespace, split: Split, work: Path, res: int, log: list[str]) -> dict[str, Any]:
    """Which bundle defectgen runs with, and what that means for the protocol."""
    if args.bundle is not None:
        path, kind = args.bundle, "given"
        note = "user-supplied; the protocol is clean only if it was trained on the held-in third alone"
    elif args.train_budget > 0:
        from .train_bundle import train_bundle

        held_in = write_held_in(split, work / "held_in")
        path = train_bundle(held_in, work / "train", minutes=args.train_budget, res=res, seed=args.seed, log=log)
        kind = "trained here on the held-in split"
        note = (f"trained and exported inside this run on train/good + the held-in third only "
                f"({args.train_budget:g} min budget): a clean held-out protocol")
    else:
        path, kind = default_bundle_path(), "default"
        if not (path / MANIFEST_NAME).is_file():
            raise SystemExit(f"downstream.py: no default bundle shipped at {path}; pass --bundle B or "
                             f"--train-budget MINUTES")
        note = ("the shipped default bundle, trained on the procedural set with all of its defects, not only a "
                "held-in third: not a clean held-out protocol (its generator has seen defects of the same "
                "distribution as the held-out ones)")
    b = Bundle.load(path)
    sha = hashlib.sha256((b.root / MANIFEST_NAME).read_bytes()).hexdigest()
    return {"path": str(path), "kind": kind, "note": note, "resolution": b.resolution,
            "defect_types": b.defect_types, "manifest_sha256": sha[:16], "run_defaults": b.defaults,
            "trained_on": sorted({str(v["data"]) for v in b.manifest.configs.values()
                                  if isinstance(v, dict) and v.get("data")})}


def _generate(name: str, args: argparse.Namespace, pre: Preset, split: Split, work: Path,
              bundle: dict[str, Any]) -> dict[str, Any]:
    jobs = plan_jobs([i.image_path for i in split.train_good], split.types, pre.n_synthetic)
    out = work / "sources" / name
    if name == "defectgen":
        return generate_defectgen(jobs, split, out, bundle=Path(bundle["path"]), seed=args.seed,
                                  work=work / "defectgen", iou_jobs=pre.iou_jobs, extra=shlex.split(args.run_args))
    return generate_baseline(name, jobs, split, out, seed=args.seed, textures=args.textures)


def _inversion_sheet(args: argparse.Namespace, work: Path, bundle: Path) -> None:
    """The I | S | G(c) | M diagnostic; it uses runtime internals, so a failure only costs the figure."""
    try:
        inversion_sheet(work / "defectgen" / "inputs" / "jobs.jsonl", bundle,
                        args.out / "downstream_defectgen_inversion.png", seed=args.seed,
                        run_args=shlex.split(args.run_args))
    except Exception as e:  # noqa: BLE001 - a diagnostic figure must never sink an hour-long benchmark
        print(f"downstream: warning: no inversion sheet ({type(e).__name__}: {e})", file=sys.stderr, flush=True)


def _train_eval(images: np.ndarray, masks: np.ndarray, good: np.ndarray, ev: tuple[np.ndarray, ...],
                cfg: SegConfig) -> tuple[dict[str, Any], dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    net, tlog = train_segmenter(good, images, masks, cfg)
    t0 = time.perf_counter()
    maps = predict(net, ev[0])
    metrics = segmentation_metrics(maps, ev[1], ev[2])
    precision, recall, _ = pr_curve(maps, ev[1])
    keep = np.unique(np.linspace(0, len(precision) - 1, min(400, len(precision))).astype(int))
    training = {"seconds": tlog.seconds, "final_loss": tlog.final_loss, "eval_seconds": time.perf_counter() - t0,
                "n_synthetic": len(images)}
    return metrics, training, (precision[keep], recall[keep])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the protocol and write the results; returns the results dict."""
    if args.render_only:
        return render_only(args)
    from defectgen.runtime.bench import machine_stamp, stamp_line

    t_start = time.perf_counter()
    mode = ("quick" if args.quick else "full") + ("-validation" if args.validate else "")
    pre = _preset(args)
    names = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SOURCES))
    if unknown or not names:
        raise SystemExit(f"downstream.py: unknown source(s) {unknown}; choose from {', '.join(SOURCES)}")
    work = args.work or Path(tempfile.gettempdir()) / f"defectgen_downstream_{mode}"
    # the convention of benchmarks/common.py: smoke runs never overwrite the real results
    args.out = args.out or REPO / "benchmarks" / "results" / ("quick" if args.quick else "") / (
        "validation" if args.validate else "")
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = machine_stamp()
    timing: dict[str, float] = {}
    notes: list[str] = []

    t0 = time.perf_counter()
    root, dataset = _dataset(args, pre, work)
    cat = MVTecCategory(root)
    split = split_category(cat, seed=args.seed)
    if args.validate:
        split = validation_split(split)
        notes.append("VALIDATION run (--validate): evaluated on half of the held-in defects and a tenth of "
                     "train/good, for tuning; these are not the benchmark's held-out numbers.")
    timing["data_s"] = time.perf_counter() - t0
    seg_cfg = replace(pre.seg, res=min(pre.seg.res, max(read_res(cat), 16)))
    t0 = time.perf_counter()
    bundle = _bundle(args, split, work, seg_cfg.res, notes) if "defectgen" in names else {
        "path": None, "kind": "not used", "note": "defectgen not among --sources"}
    timing["bundle_s"] = time.perf_counter() - t0
    dataset.update({"resolution": read_res(cat), "types": split.types, "train_good": len(split.train_good),
                    "test_good": len(split.test_good),
                    "held_out_defects": sum(len(v) for v in split.held_out.values()), "split": split.describe()})

    ev = eval_set(split, seg_cfg.res)
    good, _ = load_pairs([(i.image_path, None) for i in split.train_good], seg_cfg.res)
    sources: dict[str, dict[str, Any]] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        t0 = time.perf_counter()
        gen = _generate(name, args, pre, split, work, bundle)
        samples = read_samples(work / "sources" / name)
        quality = generation_quality(samples)
        sheet = report.source_sheet(samples, args.out / f"downstream_{name}.png")
        report.zoom_sheet(samples, args.out / f"downstream_{name}_zoom.png")
        if name == "defectgen":
            _inversion_sheet(args, work, Path(bundle["path"]))
        images, masks = source_set(samples, seg_cfg.res)
        metrics, training, curves[name] = _train_eval(images, masks, good, ev, seg_cfg)
        sources[name] = {"metrics": metrics, "generation": gen, "quality": quality, "training": training,
                         "contact_sheet": sheet.name}
        timing[f"{name}_s"] = time.perf_counter() - t0
        print(f"downstream: {name}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items())
              + f" ({timing[f'{name}_s']:.0f} s)", flush=True)
    if args.real_reference:
        items = [i for t in split.types for i in split.held_in[t]]
        images, masks = load_pairs([(i.image_path, i.mask_path) for i in items], seg_cfg.res)
        metrics, training, curves["real held-in"] = _train_eval(images, masks, good, ev, seg_cfg)
        sources["real held-in (reference)"] = {"metrics": metrics, "training": training}
    timing["total_s"] = time.perf_counter() - t_start

    summary = {n: {**{k: sources[n]["metrics"][k] for k in report.METRICS}, "dataset": dataset["name"]}
               for n in names}
    results = {
        "benchmark": "downstream", "issue": 8, "mode": mode, "quick": args.quick, "command": _command(),
        "machine": stamp, "loadavg_end": machine_stamp()["loadavg"], "machine_line": stamp_line(stamp),
        "summary": summary, "pixel_ap_margin": report.pixel_ap_margin(summary), "dataset": dataset,
        "bundle": bundle, "protocol": {"n_synthetic": pre.n_synthetic, "seed": args.seed, "held_in_fraction": 1 / 3,
                                       "sources": names, "run_args": args.run_args,
                                       "textures": str(args.textures) if args.textures else "good images"},
        "segmenter": asdict(seg_cfg), "sources": sources, "real_reference": real_diversity(split),
        "timing": timing, "notes": notes + _notes(mode, bundle) + list(args.note),
    }
    results["pr_curves"] = {k: {"precision": np.round(p, 4).tolist(), "recall": np.round(r, 4).tolist()}
                            for k, (p, r) in curves.items()}
    write_report(results, args.out)
    print(f"downstream: wrote {args.out / 'downstream.json'} ({mode}, {timing['total_s']:.0f} s)", flush=True)
    return results


def write_report(results: dict[str, Any], out: Path) -> None:
    """`downstream.json`, `.md` and `.png` in `out` from a results dict (PR curves from `results["pr_curves"]`)."""
    curves = {k: (np.asarray(v["precision"]), np.asarray(v["recall"])) for k, v in results.get("pr_curves", {}).items()}
    report.write_json(out / "downstream.json", results)
    (out / "downstream.md").write_text(report.markdown(results), encoding="utf-8")
    if curves or not (out / "downstream.png").is_file():  # an older JSON without curves keeps its figure
        report.plot(results, curves, out / "downstream.png")


def render_only(args: argparse.Namespace) -> dict[str, Any]:
    """Rewrite md/png (and the JSON's notes) from an existing `downstream.json`, adding `--note`s."""
    path = (args.out or REPO / "benchmarks" / "results" / ("quick" if args.quick else "")) / "downstream.json"
    results = json.loads(path.read_text(encoding="utf-8"))
    results["notes"] = list(results.get("notes", [])) + [n for n in args.note if n not in results.get("notes", [])]
    write_report(results, path.parent)
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
        notes.append("QUICK mode: tiny data, 24 images per source and a few segmenter steps; a smoke test of the "
                     "pipeline, not a measurement of defect quality.")
    if bundle.get("kind") == "default":
        notes.append("Bundle: " + bundle["note"] + ".")
    return notes



__all__ = ["BASELINES", "SOURCES", "parse_args", "run"]
