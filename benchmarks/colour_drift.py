"""Colour drift: do the inversion's steps keep G's defect pixels the colour of real defects?

Runs `defectgen run` with G-proposed targets on the good test parts of an MVTec-layout category under several
inversion settings (steps, learning rate, latent space) and compares, per defect type, the colours inside the
output masks with those inside the real defects' masks: the 1-D Wasserstein-1 distance of each channel's
8-bit values (mean over R, G, B), so 0 is identical distributions and 10 is "ten grey levels off on average".
`--steps 0` is G's ranked proposal itself, before any step.

    python benchmarks/colour_drift.py --bundle BUNDLE --data CATEGORY
    python benchmarks/colour_drift.py --quick --out-dir /tmp/q          # smoke test

Writes `benchmarks/results/colour_drift.{json,md,png}`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

from defectgen import GOOD
from defectgen.data.imageio import read_image, read_mask
from defectgen.data.mvtec import MVTecCategory
from defectgen.data.procedural import make_dataset
from defectgen.measure.stamp import machine_stamp

# label -> extra `defectgen run` options; the empty one is the bundle's shipped settings
SETTINGS: dict[str, list[str]] = {
    "proposal (0 steps)": ["--steps", "0"],
    "w+ lr 0.005": ["--lr", "0.005"],
    "w+ lr 0.01": ["--lr", "0.01"],
    "w+ lr 0.02": ["--lr", "0.02"],
    "w+ lr 0.05": ["--lr", "0.05"],
    "w lr 0.05": ["--space", "w", "--lr", "0.05"],
    "z lr 0.05": ["--space", "z", "--lr", "0.05"],
    "shipped": [],
}


def w1_8bit(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 distance of two 1-D samples, from their quantiles (grey levels)."""
    q = np.linspace(0.5, 99.5, 100)
    return float(np.abs(np.percentile(a, q) - np.percentile(b, q)).mean())


def colour_distance(real: np.ndarray, generated: np.ndarray) -> float:
    """Mean over R, G, B of the per-channel W1 between two (N, 3) pixel sets."""
    return float(np.mean([w1_8bit(real[:, c], generated[:, c]) for c in range(3)]))


def real_pixels(cat: MVTecCategory) -> dict[str, np.ndarray]:
    """Per type, the (N, 3) pixels inside every real defect's mask."""
    out: dict[str, np.ndarray] = {}
    for t in cat.defect_types:
        chunks = []
        for item in cat.defective_items([t]):
            image, mask = item.load()
            chunks.append(image[mask > 0].reshape(-1, 3))
        out[t] = np.concatenate(chunks).astype(np.float32)
    return out


def generated_pixels(run_dir: Path) -> dict[str, np.ndarray]:
    """Per type, the (N, 3) pixels inside the masks of one run's finished jobs."""
    chunks: dict[str, list[np.ndarray]] = {}
    for line in (run_dir / "jobs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["status"] == "ok":
            image = read_image(run_dir / rec["outputs"]["image"])
            mask = read_mask(run_dir / rec["outputs"]["mask"])
            chunks.setdefault(rec["type"], []).append(image[mask > 0].reshape(-1, 3))
    return {t: np.concatenate(c).astype(np.float32) for t, c in chunks.items()}


def run_setting(args: argparse.Namespace, images: Path, out: Path, extra: list[str]) -> float:
    """One `defectgen run` (one thread); returns its wall time."""
    cmd = [sys.executable, "-m", "defectgen.cli", "run", "--images", str(images), "--random-masks",
           str(args.masks), "--out", str(out), "--seed", str(args.seed), "--threads", "1",
           "--mask-shape", "generated", *(["--bundle", str(args.bundle)] if args.bundle else []), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"defectgen run {' '.join(extra)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def plot(rows: list[dict[str, Any]], types: list[str]) -> Any:
    fig, axes = common.new_figure(1, 1, size=(9, 4.4))
    ax = axes[0][0]
    x, width = np.arange(len(rows)), 0.8 / (len(types) + 1)
    for i, t in enumerate([*types, "mean"]):
        ax.bar(x + (i - len(types) / 2) * width, [r["w1"][t] for r in rows], width, label=t)
    ax.set_xticks(x, [r["setting"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("colour W1 to the real defects (grey levels)")
    ax.set_title("inversion steps and G's colours (lower = closer to real defects)")
    ax.legend(fontsize=7, ncol=len(types) + 1)
    fig.subplots_adjust(bottom=0.3)
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle with a layered patch G (default: embedded)")
    ap.add_argument("--data", type=Path, default=None, help="MVTec-layout category: its real defects are the "
                                                            "reference, its good test parts the canvases "
                                                            "(default: a fresh procedural set, seed 0)")
    ap.add_argument("--masks", type=int, default=16, help="random targets per good part")
    ap.add_argument("--parts", type=int, default=8, help="good test parts used")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="two settings, few targets")
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args()
    settings = dict(SETTINGS)
    if args.quick:
        args.masks, args.parts = 4, 2
        settings = {k: settings[k] for k in ("proposal (0 steps)", "shipped")}
    started, stamp = time.time(), machine_stamp()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "data"
        if args.data is None:
            make_dataset(data, res=128, n_good=4, n_defect=6 if args.quick else 18, n_test_good=args.parts, seed=0)
        cat = MVTecCategory(data)
        images = Path(tmp) / "parts"
        images.mkdir()
        for item in cat.test_items([GOOD])[: args.parts]:
            (images / item.image_path.name).symlink_to(item.image_path.resolve())
        real, rows = real_pixels(cat), []
        for label, extra in settings.items():
            out = Path(tmp) / f"run_{len(rows)}"
            seconds = run_setting(args, images, out, extra)
            gen = generated_pixels(out)
            w1 = {t: colour_distance(real[t], gen[t]) for t in cat.defect_types if t in gen}
            w1["mean"] = float(np.mean(list(w1.values())))
            rows.append({"setting": label, "run_args": extra, "w1": w1, "seconds": round(seconds, 1),
                         "mean_rgb": {t: [round(float(v), 1) for v in gen[t].mean(0)] for t in gen}})
            print(f"colour_drift: {label}: mean W1 {w1['mean']:.1f}", flush=True)
        real_rgb = {t: [round(float(v), 1) for v in real[t].mean(0)] for t in real}
    types = cat.defect_types
    by = {r["setting"]: r["w1"]["mean"] for r in rows}
    summary = {"w1_proposal": by.get("proposal (0 steps)"), "w1_shipped": by.get("shipped"),
               "steps_keep_colour": None if len(by) < 2 else bool(by["shipped"] <= 1.1 * by["proposal (0 steps)"])}
    table = common.md_table(["setting", "run options", *types, "mean", "run s"],
                            [[r["setting"], " ".join(r["run_args"]) or "(bundle defaults)",
                              *[common.fmt(r["w1"].get(t), 1) for t in types], common.fmt(r["w1"]["mean"], 1),
                              common.fmt(r["seconds"], 1)] for r in rows])
    rgb = common.md_table(["type", "real", *[r["setting"] for r in rows]],
                          [[t, str(real_rgb[t]), *[str(r["mean_rgb"].get(t)) for r in rows]] for t in types])
    paths = common.write_results(
        "colour_drift", summary=summary, data={"rows": rows, "real_mean_rgb": real_rgb, "data": str(args.data)},
        tables=[("Colour W1 to the real defects, per type (grey levels)", table), ("Mean RGB inside the masks", rgb)],
        figure=plot(rows, types), quick=args.quick, out_dir=args.out_dir, machine=stamp, started=started,
        notes=["W1: per channel, the mean absolute difference of the 1st..99th percentiles of the 8-bit values "
               "inside the masks, generated vs every real defect of the type; averaged over R, G, B",
               f"{args.parts} good test parts x {args.masks} G-proposed targets per setting, run seed {args.seed}"])
    print(paths["md"].read_text())


if __name__ == "__main__":
    main()
