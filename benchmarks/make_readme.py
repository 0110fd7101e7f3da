"""Regenerate `benchmarks/README.md` from the committed results (`benchmarks/results/`): current results first.

    python benchmarks/make_readme.py              # writes benchmarks/README.md
    python benchmarks/make_readme.py --out FILE   # anywhere else (the unit test checks its line budget)

The README says what holds now, in under 300 lines: a short introduction (what is measured, on which machines,
one rerun line per script); the headline table (the downstream protocol's current numbers, the speed and
footprint summaries against their goals), each row linking to its result and stamped with the machine and commit
of the result's JSON; then one short section per result with its key table and links to its full `.md` and
`.png`. How the numbers got there is the dated journal `findings.md`: linked, never pasted. A result measured on
a model that is no longer shipped says so (`model_provenance.py`). Quick (smoke) results are never used;
formatting helpers are in `readme_format.py`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import model_provenance as prov
from downstream.report import comparisons
from readme_format import PERCENT, Row, key_table, link, load, ms, para, stamp, verdict
from throughput import headline as throughput_headline

README = common.ROOT / "benchmarks" / "README.md"
LINE_BUDGET = 300  # the unit test holds the README under it

INTRO = """\
# Benchmarks

Scripts that prove or disprove "few-step inversion on the edge, fast" and measure the quality of the defects.
Each writes `results/<name>.json` (top-level `summary`, `machine`, `command`), `results/<name>.md` (its tables)
and `results/<name>.png`, stamped with the machine (CPU, cores, library versions, git commit, load average).
`--quick` (about 2 minutes, CI smoke tests) writes to `results/quick/`, labelled QUICK: those are not results.
Nothing here asserts speed. This file is generated: `python benchmarks/make_readme.py`.

Rerun from the repository root with the training venv (`python benchmarks/<script>`; each section below gives
the exact command of its committed result):

- `downstream.py`: a segmenter trained on each source's synthetic defects, scored on held-out real ones
  (protocol: [downstream_protocol.md](downstream_protocol.md)).
- `blockiness.py`: flat 2x2 blocks inside the labels of `defectgen run` on the 512 px example part.
- `colour_drift.py`: colour distance of G's defects to the real ones, G's proposals vs after the steps.
- `convergence.py`: objective, mask IoU, PSNR per Adam step for encoder / `w_avg` / random init in z, w, w+.
- `throughput.py`: one step in torch eager vs ONNX Runtime, end to end vs the idinvert reference, FLOP share.
- `footprint.py`: cold start of `defectgen run`, peak RSS, runtime-only vs training venv size.
- `profile_step.py`: ONNX Runtime per-op profile of the step graph and a session-option sweep.
- `micro_ops.py`: the step graph's hot ops written in cheaper, equivalent forms.
- `defectgen bench` (torch-free, `defectgen/measure/`): step and end-to-end timing of `run`'s own job path on
  any bundle and backend, for an edge box.

How things are measured (details in each script's docstring): warm-up excluded, contenders timed in alternating
rounds, median with p25-p75, ratios within one run; FLOPs = 2 x multiply-accumulates of Conv, ConvTranspose,
MatMul and Gemm of the exported graph, the ceiling the best measured fp32 matmul GFLOP/s at the same thread
count; random-weight models time like trained ones, their quality columns mean nothing; the committed results
come from CPU boxes without a GPU, so their CUDA / TensorRT rows say "not available" and why.
"""

@dataclass(frozen=True)
class Section:
    """A result's short section: what it measures and which of its tables are key."""

    name: str
    what: str
    tables: tuple[tuple[str, Callable[[Row], bool] | None, int | None], ...]
    random_res: int | None = None  # times random-weight nets without naming them in its JSON
    extra: str = ""


SECTIONS = (
    Section("blockiness", "Flat 2x2 blocks inside the labels of `defectgen run` on the 512 px example part, "
            "against the input at the same places.", (("Summary", None, None),),
            extra=" · " + link("blockiness_sheet.png", "contact sheet")),
    Section("colour_drift", "Colour distance (per-channel Wasserstein-1, grey levels) of G's defects to the real "
            "ones, for G's proposals and after the steps at several learning rates and spaces.",
            (("Colour W1", None, None),)),
    Section("convergence", "Objective, mask IoU, PSNR and feature distance per Adam step for encoder / `w_avg` / "
            "random init in z, w, w+.", (("Steps to reach", None, None),)),
    Section("throughput", "One optimisation step in torch eager vs ONNX Runtime, and end to end vs the idinvert "
            "reference (torch eager, Adam lr 0.01, 100 steps from `w_avg`); rows at batch 8, 1 thread.",
            (("One optimisation step", lambda r: r.get("batch") == "8" and r.get("threads") == "1", None),
             ("End to end", lambda r: r.get("batch") == "8" and r.get("K") in ("5", "100"), None))),
    Section("footprint", "Cold start (new process to the first finished job of `defectgen run`), peak RSS, size "
            "of a runtime-only venv vs the training venv.", (("Cold start", None, None), ("Install size", None, None))),
    Section("profile_step", "ONNX Runtime per-op profile of the step graph (top 8 ops) and a session-option sweep.",
            (("Per-op time", None, 8),)),
    # micro_ops times single ops at the 128 px random model's layer shapes (its docstring)
    Section("micro_ops", "Micro-benchmarks behind the profile: 2x FIR resampling and the leaky-ReLU backward in "
            "cheaper, equivalent forms.", (("Summary", None, None),), random_res=128),
)


def section(s: Section) -> list[str]:
    res, md_path = load(s.name), common.RESULTS / f"{s.name}.md"
    if res is None or not md_path.is_file():
        return [f"## {s.name}", "", "Not run yet.", ""]
    label = prov.result_label(res, s.random_res)
    lines = [f"## {s.name}" + (f" *({label})*" if label else ""), "", para(s.what), "",
             para(f"`{res.get('command')}` · {stamp(res.get('machine'))} · {link(f'{s.name}.md', 'full tables')} · "
                  f"{link(f'{s.name}.png', 'plot')}{s.extra}"), ""]
    for m in res.get("models", []):  # merged runs (throughput): each model stamped by its own run
        mlabel = prov.result_label(m)
        lines.append(para(f"- {m['label']}: `{m.get('command')}` · {stamp(m.get('machine'))}"
                          + (f" *({mlabel})*" if mlabel else ""), "  "))
    lines += [""] if res.get("models") else []
    md = md_path.read_text(encoding="utf-8")
    for heading, keep, limit in s.tables:
        lines += key_table(md, heading, keep, limit)
    return lines


# ---- the headline table ---------------------------------------------------------------------------------------------
def differences(summary: dict[str, Any]) -> dict[tuple[str, str], str]:
    """The downstream report's pixel-AP comparisons, keyed by (a, b): '+0.2 pixel-AP points (SE 1.1; ...)'."""
    out = {}
    for line in comparisons(summary):
        pair, text = line.split(": ", 1)
        a, b = pair.split(" − ")
        out[(a, b)] = text
    return out


def downstream_rows() -> list[list[str]]:
    res = load("downstream")
    if res is None:
        return [["downstream", "defect quality", "not run yet", "–", "–"]]
    s, at, n = res["summary"], stamp(res.get("machine")), len(res["protocol"]["seeds"])
    src = link("downstream.md", "downstream", prov.result_label(res))
    diff = differences(s)
    rows = [[src, f"pixel AP on held-out real defects ({n} seeds): defectgen / copy-paste / real",
             f"**{ms(s['defectgen']['pixel_ap'])}** / {ms(s['copypaste']['pixel_ap'])} / {ms(s['real']['pixel_ap'])}",
             "–", at],
            [src, "defectgen − copy-paste", diff.get(("defectgen", "copypaste"), "–"), "–", at]]
    if "defectgen_g1" in s:
        gain = 100 * (s["defectgen"]["pixel_ap"]["mean"] - s["defectgen_g1"]["pixel_ap"]["mean"])
        rows.append([src, "defectgen − defectgen_g1 (G's pixels vs the real defect pasted into G's masks)",
                     diff.get(("defectgen", "defectgen_g1"), "–"), f">= +2: {verdict(gain >= 2)}", at])
    align = s["defectgen"].get("alignment")
    rows.append([src, "alignment IoU of defectgen's labels (a real-trained segmenter's view)",
                 common.fmt(align, 3), f">= 0.5: {verdict(None if align is None else align >= 0.5)}", at])
    five = load("downstream_5seeds/downstream")
    if five is not None:
        k = len(five["protocol"]["seeds"])
        rows.append([link("downstream_5seeds/downstream.md", "downstream, 5 seeds", prov.result_label(five)),
                     f"defectgen − copy-paste ({k} seeds)", differences(five["summary"]).get(
                         ("defectgen", "copypaste"), "–"), "–", stamp(five.get("machine"))])
    return rows


def blockiness_rows() -> list[list[str]]:
    res = load("blockiness")
    if res is None:
        return []
    s = res["summary"]
    value = (f"{common.fmt(s.get('flat_2x2_percent_generated'), 3)} % of 2x2 blocks (input "
             f"{common.fmt(100 * s['flat_2x2_share_input'], 3)} %); {s.get('defects_with_flat_blocks')} of "
             f"{s.get('defects')} defects")
    return [[link("blockiness.md", "blockiness", prov.result_label(res)), "flat 2x2 blocks inside the labels, 4x "
             "the training scale", value, f"no more than the input: {verdict(s.get('no_more_blocks_than_input'))}",
             stamp(res.get("machine"))]]


# (figure, summary key, goal, passes, format)
SPEED = (("ONNX Runtime step vs torch eager", "ort_vs_torch_step_speedup", ">= 1.5x", lambda v: v >= 1.5, "{:.2f}x"),
         ("step FLOP/s share of the matmul ceiling", "step_flops_share_of_ceiling", ">= 60%", lambda v: v >= 0.6,
          PERCENT),
         ("end to end vs the idinvert reference", "end_to_end_speedup_vs_idinvert", ">= 25x", lambda v: v >= 25,
          "{:.1f}x"))
OTHER = (("convergence", "encoder init reaches the 100-step `w_avg` objective", "encoder_init_steps_to_match_wavg_100",
          "<= 5 steps", lambda v: v <= 5, "{:.0f} steps"),
         ("footprint", "cold start of `defectgen run`", "cold_start_s", "<= 1.5 s", lambda v: v <= 1.5, "{:.2f} s"),
         ("footprint", "peak RSS", "peak_rss_mb", "<= 400 MiB", lambda v: v <= 400, "{:.0f} MiB"),
         ("footprint", "runtime-only venv", "runtime_venv_mb", "<= 150 MiB", lambda v: v <= 150, "{:.0f} MiB"))


def target_row(src: str, figure: str, value: Any, goal: str, ok: Callable[[float], bool], fmt: str,
               at: str) -> list[str]:
    shown = "–" if value is None else fmt.format(value)
    return [src, figure, shown, f"{goal}: {verdict(None if value is None else ok(value))}", at]


def speed_rows() -> list[list[str]]:
    rows, res = [], load("throughput")
    threads = int(m.group(1)) if res and (m := re.search(r"at (\d+) thread", " ".join(res.get("notes", [])))) else 1
    for model in (res or {}).get("models", []):  # each model's own summary figures, by throughput's own rule
        random, label = prov.RANDOM_NETS.search(str(model.get("bundle"))), prov.result_label(model)
        src = link("throughput.md", f"throughput, {model['label']}" + ("" if random or label else " (shipped)"),
                   label)
        summary = throughput_headline([model], threads)
        at = summary.pop("_at", "") or ""
        step, e2e = re.search(r"step at batch (\d+)", at), re.search(r"end to end at batch (\d+), K=(\d+)", at)
        where = {"step": f"batch {step.group(1)}, {threads} thread" if step else "",
                 "e2e": f"batch {e2e.group(1)}, K = {e2e.group(2)}" if e2e else ""}
        for figure, key, goal, ok, fmt in SPEED:
            rows.append(target_row(src, f"{figure} ({where['e2e' if 'end_to_end' in key else 'step']})",
                                   summary.get(key), goal, ok, fmt, stamp(model.get("machine"))))
    bench = load("defectgen_bench")
    if bench is not None and bench.get("step"):
        top = max(bench["step"], key=lambda r: r["batch"])
        rows.append(target_row(link("defectgen_bench.txt", "defectgen bench", prov.result_label(bench)),
                               f"step FLOP/s share of the matmul ceiling (shipped bundle, batch {top['batch']})",
                               top.get("share_of_ceiling"), ">= 60%", lambda v: v >= 0.6, PERCENT,
                               stamp(bench.get("machine"))))
    for name, figure, key, goal, ok, fmt in OTHER:
        res = load(name)
        if res is not None:
            rows.append(target_row(link(f"{name}.md", name, prov.result_label(res)), figure,
                                   res["summary"].get(key), goal, ok, fmt, stamp(res.get("machine"))))
    return rows


def held_in(per_type: dict[str, int]) -> str:
    counts = set(per_type.values())
    return str(counts.pop()) if len(counts) == 1 else ", ".join(f"{k} {v}" for k, v in per_type.items())


# ---- the downstream section -----------------------------------------------------------------------------------------
def downstream_section() -> list[str]:
    res = load("downstream")
    if res is None:
        return ["## downstream", "", "No result of the protocol is committed yet.", ""]
    p, s = res["protocol"], res["summary"]
    label, b = prov.result_label(res), p["defectgen_bundle"]
    types = p["data"]["types"]
    head = ["source", "pixel AP", "F1-max", "image AUROC", "alignment", "memorisation", "diversity", *types]
    rows = [[name, ms(v["pixel_ap"]), ms(v["f1_max"]), ms(v["image_auroc"]), common.fmt(v.get("alignment"), 3),
             common.fmt(v.get("memorisation"), 3), common.fmt(v.get("diversity"), 3),
             *[common.fmt(100 * v["per_type_ap"][t], 1) if t in v.get("per_type_ap", {}) else "–" for t in types]]
            for name, v in s.items() if name not in p.get("same_as", {})]
    same = ", ".join(f"{a} = {b_}" for a, b_ in p.get("same_as", {}).items())
    fair = "fair" if b.get("fair") else f"NOT FAIR ({b.get('not_fair_because')})"
    lines = [f"## downstream: defect quality (protocol v{p['version']})" + (f" *({label})*" if label else ""), "",
             para(f"A segmenter per source and seed ({len(p['seeds'])} seeds), trained on good images + that "
                  f"source's synthetic defects, scored on the held-out **real** defects of {p['data']['name']}; "
                  f"{held_in(p['held_in_per_type'])} real defects per type held in. How: "
                  "[downstream_protocol.md](downstream_protocol.md)."), "",
             para(f"`{res.get('command')}` · {stamp(res.get('machine'))} · {res['timing']['total_s']:.0f} s · "
                  f"{link('downstream.md', 'full note')} · {link('downstream.png', 'plot')} · contact sheets "
                  "`results/downstream_<source>.png`"), "",
             para(f"defectgen bundle: `{b.get('path')}`, {fair}; trained on {b.get('trained_on')}."), "",
             para("*Mean ± std over seeds (x100); per-type columns: pixel AP, mean over seeds" + (
                 f"; {same}, the same set" if same else "") + ":*"), "",
             common.md_table(head, rows), "", "*Comparisons (pixel AP):*", "",
             *[f"- {c}" for c in comparisons(s)], "", "Other downstream results:", ""]
    r5 = load("downstream_5seeds/downstream")
    if r5 is not None:
        l5 = prov.result_label(r5)
        seeds = ",".join(map(str, r5["protocol"]["seeds"]))
        lines.append(para(f"- {link('downstream_5seeds/downstream.md', 'downstream_5seeds')}: the defectgen and "
                          f"copy-paste rows over seeds {seeds} · {stamp(r5.get('machine'))}"
                          + (f" *({l5})*" if l5 else ""), "  "))
    detail = sorted((common.RESULTS / "downstream_detail").glob("*/downstream.json"))
    rd = load(str(detail[0].relative_to(common.RESULTS).with_suffix(""))) if detail else None
    if rd is not None:
        ld = prov.result_label(rd)
        lines.append(para(f"- {link('downstream_detail/README.md', 'downstream_detail')}: where the output's fine "
                          "detail comes from (`--detail-from`, `--no-detail`, a guide blend), 5 seeds, with the "
                          f"runtime of {str(rd['machine'].get('date_utc'))[:10]} · {stamp(rd.get('machine'))}"
                          + (f" *({ld})*" if ld else ""), "  "))
    return [*lines, ""]


def notes_section() -> list[str]:
    """Hand-written notes in `results/` (a `.md` without a JSON beside it), committed ones only, by their title."""
    lines = []
    for md in sorted(common.RESULTS.glob("*.md")):
        if md.with_suffix(".json").is_file() or prov.added(md) is None:
            continue
        title = next((x.lstrip("# ").strip() for x in md.read_text(encoding="utf-8").splitlines() if x.strip()), "")
        label = prov.file_label(md)
        lines.append(para(f"- {link(md.name, md.name)}: {title}" + (f" *({label})*" if label else ""), "  "))
    return ["## Notes in results/", "", *lines, ""] if lines else []


def bench_section() -> list[str]:
    """`defectgen bench` (the torch-free timer) on the shipped bundle: step and end to end at K = 5 per batch."""
    res = load("defectgen_bench")
    if res is None or not res.get("step"):
        return []
    label, b = prov.result_label(res), res.get("bundle") or {}
    e2e = {r["batch"]: r for r in res.get("end_to_end", []) if r.get("steps") == 5}
    rows = [[str(r["batch"]), f"{1000 * r['median_s']:.1f}", f"{1000 * r['median_s'] / r['batch']:.1f}",
             PERCENT.format(r["share_of_ceiling"]), common.fmt((e2e.get(r["batch"]) or {}).get("defects_per_s")),
             common.fmt(((e2e.get(r["batch"]) or {}).get("quality") or {}).get("mask_iou"), 3)] for r in res["step"]]
    return ["## defectgen bench" + (f" *({label})*" if label else ""), "",
            para(f"`defectgen bench` on `{Path(str(b.get('source'))).name}` ({b.get('resolution')} px, "
                 f"{b.get('space')}), {res.get('backend')}, {res.get('threads')} thread · {stamp(res.get('machine'))}"
                 f" · {link('defectgen_bench.txt', 'full output')}"), "",
            common.md_table(["batch", "step median ms", "ms / sample", "share of ceiling", "defects/s (K = 5)",
                             "mask IoU (K = 5)"], rows), ""]


def machines() -> str:
    """Which CPUs the committed results were measured on, and which results each."""
    by: dict[str, list[str]] = {}
    for p in sorted(common.RESULTS.glob("*.json")):
        res = load(p.stem)
        if res and res.get("machine"):
            m = res["machine"]
            by.setdefault(f"{m.get('cpu_model')} ({m.get('physical_cores')} cores)", []).append(p.stem)
    return "; ".join(f"{cpu}: {', '.join(names)}" for cpu, names in by.items())


def build() -> str:
    rows = downstream_rows() + blockiness_rows() + speed_rows()
    parts = [INTRO, para("Machines of the committed results (this project's shared CPU boxes): " + machines() + "."),
             "", "## Current results", "",
             para("Each row links to its result; the last column is the result's machine, git commit and date. A "
                  "result measured on a model that is no longer shipped says so."), "",
             common.md_table(["result", "figure", "value", "goal", "measured (CPU · commit · date)"], rows), "",
             para("How these numbers came about, session by session, newest first: the journal "
                  "[findings.md](findings.md) (entries marked *Superseded* were overtaken by a later measurement)."),
             "", *downstream_section()]
    for s in SECTIONS:
        parts += section(s)
    parts += bench_section() + notes_section()
    return "\n".join(parts).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=README, help="where to write (default benchmarks/README.md)")
    out = ap.parse_args(argv).out
    text = build()
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out} ({text.count(chr(10))} lines)")


if __name__ == "__main__":
    main()
