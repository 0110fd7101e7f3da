"""Command-line options and the two size presets (the full protocol and `--quick` for CI)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path

from .segmenter import SegConfig
from .sources import SOURCES


@dataclass(frozen=True)
class Preset:
    """Sizes that differ between the full protocol and `--quick`."""

    data_res: int
    n_good: int
    n_defect: int  # real defective images per type (make-data --n-defect): few-shot, as on MVTec hazelnut
    n_test_good: int
    n_synthetic: int
    iou_jobs: int
    seeds: tuple[int, ...]
    jobs: int
    seg: SegConfig


FULL = Preset(data_res=128, n_good=200, n_defect=18, n_test_good=20, n_synthetic=500, iou_jobs=32, seeds=(0, 1, 2),
              jobs=min(2, os.cpu_count() or 1), seg=SegConfig(res=128, width=8, depth=4, steps=500, batch=16))
QUICK = Preset(data_res=64, n_good=16, n_defect=6, n_test_good=4, n_synthetic=24, iou_jobs=8, seeds=(0, 1), jobs=1,
               seg=SegConfig(res=64, width=8, depth=3, steps=20, batch=8))


def parse_args(argv: list[str] | None = None, doc: str = "") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="downstream.py", description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="MVTec-layout category (default: a fresh procedural make-data set)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results for a full, fair run "
                                            "of all sources; otherwise results/quick, results/validation or "
                                            "results/quick/scratch)")
    p.add_argument("--work", type=Path, help="scratch folder (default: $TMPDIR/defectgen_downstream_<mode>)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for CI (about a minute on one core)")
    p.add_argument("--bundle", type=Path, help="bundle of the defectgen rows, trained on train/good + the held-in "
                                               "defects only; fairness is read from its provenance.json (default: "
                                               "the embedded default bundle, provenance in "
                                               "downstream/default_bundle.provenance.json)")
    p.add_argument("--allow-default-bundle", action="store_true",
                   help="accept the embedded default bundle when its committed provenance no longer describes it "
                        "(a re-export; smoke runs only: its row is labelled not fair)")
    p.add_argument("--train-budget", type=float, default=0.0,
                   help="minutes to train+export a whole-part bundle on the held-in split instead of --bundle")
    p.add_argument("--sources", default=",".join(SOURCES), help=f"comma list of {', '.join(SOURCES)}")
    p.add_argument("--seeds", help="segmenter seeds, comma list (default 0,1,2; quick 0,1)")
    p.add_argument("--jobs", type=int, help="parallel generation runs / segmenter trainings, one thread each "
                                            "(default: up to 2 cores; quick 1)")
    p.add_argument("--n-synthetic", type=int, help="synthetic images per source (default 500, quick 24)")
    p.add_argument("--textures", type=Path, help="DRAEM texture folder (default: the good images themselves)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic sets (generated once per source)")
    p.add_argument("--data-seed", type=int, default=1, help="seed of the procedural set when --data is not given")
    p.add_argument("--data-res", type=int, help="resolution of the procedural set (default 128, quick 64)")
    p.add_argument("--n-defect", type=int, help="real defects per type of the procedural set (default 18, quick 6)")
    p.add_argument("--seg-res", type=int, help="segmenter resolution (default 128, quick 64)")
    p.add_argument("--seg-steps", type=int, help="segmenter optimiser steps (default 500, quick 20)")
    p.add_argument("--seg-width", type=int, help="segmenter channels at the top level (default 8)")
    p.add_argument("--seg-batch", type=int, help="segmenter batch size (default 16, quick 8)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads of a segmenter and of a `defectgen run` when --jobs is 1 (else 1 each)")
    p.add_argument("--iou-jobs", type=int, help="jobs rerun with --mask-mode generated for the mask IoU")
    p.add_argument("--run-args", default="", help="extra `defectgen run` options of every defectgen row, e.g. "
                                                  "\"--steps 20\" (the _g1/_g0 rows add their --guide-weight)")
    p.add_argument("--validate", action="store_true",
                   help="tune mode: evaluate on half of the held-in defects (the other half are the references) "
                        "and on a tenth of train/good; the held-out defects and test images are never read")
    p.add_argument("--render-only", action="store_true",
                   help="only rewrite downstream.md/.png from the downstream.json in --out (with any --note)")
    p.add_argument("--note", action="append", default=[], help="a note to add to the report (repeatable)")
    return p.parse_args(argv)


def preset(args: argparse.Namespace) -> Preset:
    """The preset of the mode with the command line's overrides applied."""
    base = QUICK if args.quick else FULL
    seg = replace(base.seg, threads=args.threads,
                  **{k: v for k, v in (("res", args.seg_res), ("steps", args.seg_steps), ("width", args.seg_width),
                                       ("batch", args.seg_batch)) if v is not None})
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip()) if args.seeds else base.seeds
    return replace(base, seg=seg, data_res=args.data_res or base.data_res, n_defect=args.n_defect or base.n_defect,
                   n_synthetic=args.n_synthetic or base.n_synthetic, seeds=seeds, jobs=args.jobs or base.jobs,
                   iou_jobs=base.iou_jobs if args.iou_jobs is None else args.iou_jobs)
