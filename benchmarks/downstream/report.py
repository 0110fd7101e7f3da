"""Writers of `downstream.{json,md,png}`: the machine stamp, the JSON, and the markdown note.

The machine stamp comes from the benchmarks' shared helpers (`benchmarks/common.py`), so every result file of
the project names its machine the same way.
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.data.imageio import atomic_write_text

from .plots import LABELS, METRICS, plot, row_label, source_sheet, zoom_sheet

__all__ = ["markdown", "source_sheet", "stamp", "write_all", "zoom_sheet"]

# (a, b): a's pixel AP minus b's, the comparisons the protocol is for
COMPARISONS = (("defectgen", "copypaste"), ("defectgen", "defectgen_g1"), ("defectgen", "defectgen_surface"),
               ("defectgen_surface", "copypaste"), ("defectgen_g0", "copypaste"),
               ("defectgen_g1", "copypaste"), ("mix", "copypaste"), ("real", "copypaste"))


def stamp(results: dict[str, Any]) -> None:
    """Add `machine`, `machine_line` and `loadavg_end` (this process's machine, now).

    A stamp that cannot be taken (the shared helpers failing to import) is recorded as such rather than losing
    an hour of measurements at the last step.
    """
    try:
        import common  # benchmarks/common.py, on sys.path when benchmarks/downstream.py runs

        results["machine"] = common.machine_stamp()
        results["machine_line"] = common.stamp_line(results["machine"])
    except Exception as e:  # noqa: BLE001 - see the docstring
        results["machine"] = {"stamp_error": f"{type(e).__name__}: {e}", "python": platform.python_version(),
                              "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
        results["machine_line"] = f"{platform.processor() or platform.machine()} ({os.cpu_count()} cpus), " \
                                  f"Python {platform.python_version()} (no full stamp: {type(e).__name__})"
    results["loadavg_end"] = results["machine"].get("loadavg")


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


def write_all(results: dict[str, Any], out: Path) -> None:
    atomic_write_text(out / "downstream.json", json.dumps(_clean(results), indent=2) + "\n")
    atomic_write_text(out / "downstream.md", markdown(_clean(results)))
    plot(_clean(results), out / "downstream.png")


def _num(v: Any, scale: float = 1.0, digits: int = 3) -> str:
    return "–" if v is None or v != v else f"{v * scale:.{digits}f}"  # v != v: NaN


def _ms(m: dict[str, Any]) -> str:
    return "–" if m.get("mean") is None else f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}"


def _label(name: str, results: dict[str, Any]) -> str:
    same = results["protocol"].get("same_as", {}).get(name)
    return row_label(name, results) + (f" = {same}" if same else "")


def _main_table(results: dict[str, Any]) -> list[str]:
    n = len(results["protocol"]["seeds"])
    head = " | ".join(f"{LABELS[m]} (n={n})" for m in METRICS)
    lines = [f"| source | {head} | diversity | memorisation | alignment IoU | colour coverage | change IoU | contrast "
             "| G mask IoU |", "|---" * (len(METRICS) + 8) + "|"]
    for name, s in results["summary"].items():
        src = results["sources"].get(results["protocol"].get("same_as", {}).get(name, name), {})
        q, g = src.get("quality") or {}, src.get("generation") or {}
        lines.append(f"| {_label(name, results)} | " + " | ".join(_ms(s[m]) for m in METRICS)
                     + f" | {_num(s['diversity'])} | {_num(s['memorisation'])} | {_num(s['alignment'])}"
                     + f" | {_num(s.get('colour_coverage'), digits=2)}"
                     + f" | {_num(q.get('change_iou'), digits=2)} | {_num(q.get('contrast'), digits=1)}"
                     + f" | {_num(g.get('mask_iou'), digits=2)} |")
    ref = results.get("reference", {}).get("held_out_real", {})
    if ref:
        lines.append("| *held-out real defects (reference, not trained on)* |" + " |" * len(METRICS)
                     + f" {_num(ref.get('diversity'))} | {_num(ref.get('memorisation'))} | | | | | |")
    return lines


PER_TYPE_TITLE = ("Pixel AP per held-out defect type (mean over seeds, ×100; in brackets the contrast of the "
                  "source's defects of that type):")


def _per_type_table(results: dict[str, Any]) -> list[str]:
    """Per type: pixel AP (mean over seeds, x100) and, where measured, the defects' contrast in brackets."""
    types = results["protocol"]["data"]["types"]
    lines = ["| source | " + " | ".join(types) + " |", "|---" * (len(types) + 1) + "|"]
    for name, s in results["summary"].items():
        src = results["sources"].get(results["protocol"].get("same_as", {}).get(name, name), {})
        contrast = (src.get("quality") or {}).get("contrast_per_type") or {}
        cells = [_num(s["per_type_ap"].get(t), 100, 1) + (f" ({contrast[t]:.0f})" if t in contrast else "")
                 for t in types]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def comparisons(summary: dict[str, Any]) -> list[str]:
    """Pixel-AP differences of the protocol's pairs, with the standard error of a difference of two means."""
    out = []
    for a, b in COMPARISONS:
        if a not in summary or b not in summary or summary[a]["pixel_ap"]["mean"] is None:
            continue
        x, y = summary[a]["pixel_ap"], summary[b]["pixel_ap"]
        diff = 100 * (x["mean"] - y["mean"])
        if min(x["n"], y["n"]) < 2:
            out.append(f"{a} − {b}: {diff:+.1f} pixel-AP points (one seed: no spread to judge it by)")
            continue
        se = 100 * math.sqrt(x["std"] ** 2 / x["n"] + y["std"] ** 2 / y["n"])
        verdict = "beyond 2 SE" if abs(diff) > 2 * se else "within 2 SE (not resolved)"
        out.append(f"{a} − {b}: {diff:+.1f} pixel-AP points (SE {se:.1f}; {verdict})")
    return out


def _bundle_lines(results: dict[str, Any]) -> list[str]:
    b = results["protocol"]["defectgen_bundle"]
    if b.get("path") is None:
        return ["- defectgen bundle: not used"]
    verdict = "**fair**" if b.get("fair") else f"**NOT FAIR** ({b.get('not_fair_because')})"
    secs = f"{b['train_seconds']:.0f} s" if isinstance(b.get("train_seconds"), int | float) else "–"
    return [f"- defectgen bundle: `{b['path']}` ({b.get('how')}); {verdict}",
            f"  - trained on: {b.get('trained_on') or '–'}; training time: {secs}",
            f"  - train command: `{b.get('train_command') or '–'}`",
            f"  - recommended run settings: `{json.dumps(b.get('run_defaults'))}`"]


DEFINITIONS = (
    "Metrics: pixel AP / AUROC / F1-max over all evaluation pixels, image AUROC from the mean of the top 1 % pixel "
    "scores; mean ± sample std over segmenter seeds (×100), each seed trained on the same synthetic set. "
    "Per-type AP: pixels of that type's held-out images + all good test images, mean over seeds. "
    "*diversity*: mean pairwise distance of defect crops within a type (averaged over types); *memorisation*: "
    "mean distance of each defect crop to its nearest held-in real crop (any of its 8 mirror/transpose "
    "variants; 0 = a copy); distance = LPIPS-style (unit-normalised activations, uniform weights) in the down "
    "path of the segmenter trained on the real held-in defects (seed 0), on {crop} px crops at the segmenter's "
    "resolution. *alignment IoU*: mean IoU between each sample's label and that segmenter's prediction on it, "
    "thresholded at its F1-max threshold ({thr}) on its own training data (held-in defects + 20 good images). "
    "*colour coverage*: per type, the held-out defects' mean colours clustered into up to 4 modes (k-means); the "
    "overlap of the source's mixture over those modes with theirs (1 = each test colour shown as often as the "
    "test has it), mean over types; a diagnostic, never a training signal. "
    "*change IoU*: pixels changed by > 10/255 vs the label; *contrast*: mean over types of |mean colour inside the "
    "label − mean colour of the 3 px ring around it| (8-bit units, mean over channels): how visible the defects "
    "are against their surface; *G mask IoU*: G's own mask vs the target "
    "(`--mask-mode generated`, first jobs; main defectgen row only).")


def markdown(results: dict[str, Any]) -> str:
    """The note: context, bundle provenance, the tables, the comparisons and what each column means."""
    p, data = results["protocol"], results["protocol"]["data"]
    title = " — QUICK smoke run (tiny sizes: not a result)" if results.get("quick") else ""
    title += " — VALIDATION split (for tuning)" if "validation" in results["mode"] else ""
    title += " — NOT FAIR (see the bundle line)" if p["defectgen_bundle"].get("fair") is False else ""
    ref = results.get("reference", {})
    lines = [f"# Downstream anomaly segmentation (protocol v{p['version']}){title}", "",
             f"Segmenter trained on good images + one source's synthetic defects, evaluated on held-out **real** "
             f"defects of `{data['name']}` ({data['held_out_defects']} defective + {data['test_good']} good test "
             f"images, {data['resolution']} px data, segmenter at {p['segmenter']['res']} px, "
             f"{p['segmenter']['steps']} steps); held in per type (generator side, {p['held_in_rule']}): "
             f"{p['held_in_per_type']}; segmenter seeds {p['seeds']}; {p['n_synthetic']} synthetic images per "
             f"source, made once (seed {p['generation_seed']}).", "",
             *_bundle_lines(results),
             f"- command: `{results['command']}`",
             f"- machine: {results['machine_line']}; load average at the end {results.get('loadavg_end')}",
             f"- wall time: {results['timing']['total_s']:.0f} s ({p['jobs']} parallel jobs)", "",
             *_main_table(results), "", PER_TYPE_TITLE, "",
             *_per_type_table(results), "", "Comparisons:", "", *[f"- {c}" for c in comparisons(results["summary"])],
             "", DEFINITIONS.format(crop=ref.get("crop_px"), thr=_num(ref.get("alignment_threshold"))), ""]
    lines += [f"- {n}" for n in results.get("notes", [])]
    return "\n".join(lines) + "\n"

