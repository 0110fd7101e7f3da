"""Writers of `downstream.{json,md,png}` and the per-source contact sheets.

The machine stamp is `defectgen.runtime.bench.machine_stamp` (the one `defectgen bench` writes), so every
result file of the project names its machine the same way.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.data.contact import contact_sheet
from defectgen.data.imageio import atomic_write_bytes, atomic_write_text, read_image, read_mask

from .sources import Sample

METRICS = ("pixel_auroc", "pixel_ap", "f1_max", "image_auroc")
LABELS = {"pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP", "f1_max": "F1-max", "image_auroc": "image AUROC"}
MARGIN_POINTS = 5.0  # the bar: defectgen's pixel AP ahead of every baseline by this many points


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: Path, results: dict[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(_clean(results), indent=2) + "\n")


def pixel_ap_margin(summary: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """defectgen's pixel AP minus the best baseline's, in points, and whether it meets the issue's bar."""
    if "defectgen" not in summary:
        return None
    dg = summary["defectgen"].get("pixel_ap")
    base = {k: v.get("pixel_ap") for k, v in summary.items() if k != "defectgen" and v.get("pixel_ap") is not None}
    if dg is None or not base:
        return None
    best = max(base, key=lambda k: base[k])
    margin = 100 * (dg - base[best])
    return {"best_baseline": best, "margin_points": round(margin, 2), "meets_bar": margin >= MARGIN_POINTS,
            "bar_points": MARGIN_POINTS}


def _fmt(v: Any, scale: float = 100.0, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v * scale:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The note: context, the table, the verdict on the pixel-AP bar, and what each column means."""
    ds, bun, mode = results["dataset"], results["bundle"], results["mode"]
    title = " — QUICK smoke run (tiny sizes: not a result)" if results.get("quick") else ""
    if "validation" in mode:
        title += " — VALIDATION split (for tuning; not the held-out result)"
    lines = [f"# Downstream anomaly segmentation{title}", "",
             f"Segmenter trained on good images + 1 source's synthetic defects, evaluated on held-out **real** "
             f"defects of `{ds['name']}` ({ds['held_out_defects']} defective + {ds['test_good']} good test "
             f"images, {ds['resolution']} px data, segmenter at {results['segmenter']['res']} px).", "",
             f"- defectgen bundle: `{bun['path']}` ({bun['kind']}; {bun['note']})",
             f"- synthetic images per source: {results['protocol']['n_synthetic']}; split seed "
             f"{results['protocol']['seed']}; held-in (generator side) "
             f"{sum(len(v) for v in ds['split']['held_in'].values())} real defects",
             f"- command: `{results['command']}`",
             f"- machine: {results['machine_line']}; load average at the end {results.get('loadavg_end')}",
             f"- wall time: {results['timing']['total_s']:.0f} s", "",
             "| source | pixel AUROC | pixel AP | F1-max | image AUROC | mask IoU | change IoU | bg PSNR dB "
             "| diversity | gen s | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, src in results["sources"].items():
        m, g = src.get("metrics", {}), src.get("generation", {})
        q = src.get("quality", {})
        lines.append(f"| {name} | {_fmt(m.get('pixel_auroc'))} | {_fmt(m.get('pixel_ap'))} | {_fmt(m.get('f1_max'))} "
                     f"| {_fmt(m.get('image_auroc'))} | {_fmt(g.get('mask_iou'), 1, 3)} "
                     f"| {_fmt(q.get('change_iou'), 1, 3)} | {_fmt(q.get('bg_psnr_db'), 1, 1)} "
                     f"| {_fmt(q.get('diversity'), 1, 3)} | {_fmt(g.get('seconds'), 1, 0)} "
                     f"| {_fmt(src.get('training', {}).get('seconds'), 1, 0)} |")
    real = results.get("real_reference", {})
    if real:
        div = _fmt(real.get("diversity"), 1, 3)
        lines.append(f"| *real held-out defects (diversity only)* | | | | | | | | {div} | | |")
    margin = results.get("pixel_ap_margin")
    lines.append("")
    if margin:
        verdict = "meets" if margin["meets_bar"] else "misses"
        lines.append(f"**Pixel AP: defectgen {'+' if margin['margin_points'] >= 0 else ''}"
                     f"{margin['margin_points']:.1f} points vs the best baseline ({margin['best_baseline']}); "
                     f"{verdict} the ≥ {margin['bar_points']:.0f}-point bar.**")
    found = findings(results)
    if found:
        lines += ["", "Findings (computed from the numbers above):", ""] + [f"- {f}" for f in found]
    lines += ["", "Columns: pixel AUROC / AP / F1-max over all evaluation pixels, image AUROC from the mean of the "
              "top 1 % pixel scores (all ×100). *mask IoU*: G's own mask (σ(mask logit) > 0.5 near the target) vs "
              "the target mask, on the first jobs rerun with `--mask-mode generated` (baselines: their mask is "
              "the pasted region by construction). *change IoU*: pixels changed by > 10/255 vs the label mask. "
              "*bg PSNR*: output vs its good image outside the label mask, capped at 100 dB (= untouched). "
              "*diversity*: mean pairwise RMS distance of 32 px defect crops within a type.", "",
              "Published anchors (real MVTec AD, for scale only, not comparable to this dataset): "
              "AnomalyDiffusion 99.1 / 81.4, DFMGAN 90.0 / 62.7, DRAEM 92.2 / 54.1 (pixel AUROC / AP).", ""]
    lines += [f"- {n}" for n in results.get("notes", [])]
    return "\n".join(lines) + "\n"


def findings(results: dict[str, Any]) -> list[str]:
    """Observations that follow from the measured numbers alone (so a re-render states them the same way)."""
    out: list[str] = []
    src, margin = results["sources"], results.get("pixel_ap_margin")
    if margin and not margin["meets_bar"]:
        best = src[margin["best_baseline"]]["metrics"]["pixel_ap"]
        if 100 * best + MARGIN_POINTS > 100:
            out.append(f"The bar cannot be met on this dataset: the best baseline ({margin['best_baseline']}) "
                       f"already reaches pixel AP {100 * best:.1f}, so +{MARGIN_POINTS:.0f} points would need AP "
                       f"> 100.")
    dg = src.get("defectgen")
    if dg:
        q, g = dg.get("quality", {}), dg.get("generation", {})
        others = [v["quality"]["change_iou"] for k, v in src.items()
                  if k != "defectgen" and v.get("quality", {}).get("change_iou") is not None]
        if q.get("change_iou") is not None and others and q["change_iou"] < 0.5 * min(others):
            out.append(f"defectgen's defects barely change their pixels: change IoU {q['change_iou']:.2f} against "
                       f"{min(others):.2f}-{max(others):.2f} for the baselines, i.e. most of each labelled mask looks "
                       f"like intact surface, so the segmenter learns from labels it cannot see.")
        if g.get("mask_iou") is not None and g["mask_iou"] < 0.2:
            out.append(f"G's own mask does not follow the target: mask IoU {g['mask_iou']:.2f} on "
                       f"{g.get('mask_iou_jobs')} jobs (the defect the optimisation produces is not where the "
                       f"label says).")
    real = src.get("real held-in (reference)")
    if real and dg:
        gap = 100 * (real["metrics"]["pixel_ap"] - dg["metrics"]["pixel_ap"])
        n_real = sum(len(v) for v in results["dataset"]["split"]["held_in"].values())
        out.append(f"Training on the {n_real} held-in real defects alone gives pixel AP "
                   f"{100 * real['metrics']['pixel_ap']:.1f} ({gap:+.1f} points vs defectgen).")
    return out


def plot(results: dict[str, Any], curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """Grouped bars of the four metrics per source, and pixel PR curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["sources"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        m = results["sources"][name].get("metrics", {})
        vals = [100 * (m.get(key) or 0.0) for key in METRICS]
        ax.bar(np.arange(len(METRICS)) + (k - (len(names) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(METRICS)), [LABELS[m] for m in METRICS])
    ax.set_ylim(0, 120)  # headroom above 100 for the legend, so it never hides a bar
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("score ×100")
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    ax.set_title(f"{results['dataset']['name']} ({results['mode']})", fontsize=10)
    for name, (precision, recall) in curves.items():
        ax2.plot(recall, precision, label=name)
    ax2.set_xlabel("recall")
    ax2.set_ylabel("precision")
    ax2.set_xlim(0, 1)
    ax2.set_ylim(0, 1)
    ax2.set_title("pixel precision-recall", fontsize=10)
    if curves:
        ax2.legend(fontsize=8)
    quick = "QUICK smoke run · " if results.get("quick") else ""
    fig.text(0.01, 0.01, (quick + results["machine_line"])[:180], fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def source_sheet(samples: list[Sample], path: Path, per_type: int = 8) -> Path:
    """A contact sheet of a source: one row per type, its first `per_type` samples, masks outlined."""
    rows: dict[str, list] = defaultdict(list)
    for s in samples:
        if len(rows[s.type]) < per_type:
            img = read_image(s.image)
            rows[s.type].append((img, read_mask(s.mask, img.shape[:2]), f"{s.type} {Path(s.image).stem}"))
    return contact_sheet([rows[t] for t in sorted(rows)], path)


def zoom_sheet(samples: list[Sample], path: Path, n: int = 4, side: int = 40, scale: int = 4) -> Path:
    """Close-ups of the first `n` samples: good crop | output crop | |output − good| × 4 | label mask.

    What the segmenter is taught is easier to judge here than on a whole-image sheet: a defect that changes
    no pixels, or changes pixels outside its mask, shows at once.
    """
    import cv2

    rows = []
    for s in samples[:n]:
        img, good = read_image(s.image), read_image(s.good)
        mask = read_mask(s.mask, img.shape[:2])
        ys, xs = np.nonzero(mask)
        h, w = mask.shape
        y0 = int(np.clip(ys.mean() - side // 2, 0, max(0, h - side)))
        x0 = int(np.clip(xs.mean() - side // 2, 0, max(0, w - side)))

        def crop(a: np.ndarray, y0: int = y0, x0: int = x0) -> np.ndarray:
            c = a[y0:y0 + side, x0:x0 + side]
            return cv2.resize(c, (c.shape[1] * scale, c.shape[0] * scale), interpolation=cv2.INTER_NEAREST)

        diff = np.clip(np.abs(img.astype(np.int16) - good.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
        rows.append([(crop(good), None, "good"), (crop(img), None, f"{s.type} out"), (crop(diff), None, "|diff| x4"),
                     (crop(np.repeat(mask[..., None] * 255, 3, 2).astype(np.uint8)), None, "label")])
    return contact_sheet(rows, path)
