"""`defectgen info`: a bundle's manifest summary, op histogram per graph and parity result, as text.

Torch-free and onnx-free on purpose (it runs on the edge box): the op histograms come from the manifest's
`export.graphs` record and the parity figures from `verify.json`, both written by `defectgen export`, so nothing
here parses an ONNX file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from defectgen.errors import BundleError
from defectgen.runtime.bundle.loader import Bundle, _read_manifest, default_bundle_path
from defectgen.runtime.bundle.manifest import Manifest, TensorSpec

TOP_OPS = 8  # ops listed per graph


def _mb(n: int) -> str:
    return f"{n / 1e6:6.2f} MB" if n >= 10_000 else f"{n / 1e3:6.1f} kB"


def _num(x: float) -> str:
    return f"{x:g}"


def _header(m: Manifest, source: str, status: str) -> list[str]:
    exp = m.extra.get("export", {}) if isinstance(m.extra.get("export"), dict) else {}
    tools = exp.get("tools", {})
    tool_text = ", ".join(f"{k} {v}" for k, v in tools.items() if k != "python")
    took = f" in {exp['seconds']:g} s" if "seconds" in exp else ""
    return [
        f"bundle    {source}  ({status})",
        f"format    {m.format} v{m.format_version}, defectgen {m.defectgen_version or '?'}{took}"
        + (f" ({tool_text})" if tool_text else ""),
        f"model     {m.resolution} px, z_dim {m.z_dim}, w_dim {m.w_dim}, w+ {m.num_ws} layers"
        + (f"; patch mode: {m.patch.window} px windows at {m.patch.scale:g} data px per model px, drawn over the "
           f"good window" if m.patch is not None else "; whole parts")
        + ("" if m.graph_files("encoder") else "; no encoder (starts from w_avg)"),
        f"types     {', '.join(m.defect_types)}",
        f"graphs    spaces {', '.join(m.spaces)}; step batches {', '.join(map(str, m.step_batches))}; "
        f"opset {m.opset}",
        "lambdas   " + ", ".join(f"{k} {_num(m.default_lambdas[k])}" for k in m.loss_terms if k in m.default_lambdas),
        "defaults  " + ", ".join(f"{k} {v}" for k, v in m.defaults.to_dict().items()),
        "bank      " + (", ".join(f"{t} {len(v)}" for t, v in m.defect_bank.items()) or "none (S = I at run time)"),
    ]


def _specs(specs: list[TensorSpec]) -> str:
    return ", ".join(f"{t.name}({','.join(map(str, t.shape))})" for t in specs)


def _files(m: Manifest) -> list[str]:
    total = sum(e.bytes for e in m.files.values())
    lines = [f"files     {len(m.files)} listed, {_mb(total).strip()}"]
    graphs = sorted((k, e) for k, e in m.files.items() if e.role != "bank")
    for name, e in graphs:
        io = ""
        if e.inputs:
            io = f"  {_specs(e.inputs)} -> {_specs(e.outputs)}"
        lines.append(f"  {name:<26} {e.role:<9} {_mb(e.bytes)}{io}")
    bank = [e for e in m.files.values() if e.role == "bank"]
    if bank:
        lines.append(f"  {'defect_bank/*':<26} {'bank':<9} {_mb(sum(e.bytes for e in bank))}  ({len(bank)} files)")
    return lines


def _op_lines(m: Manifest, report: dict[str, Any] | None) -> list[str]:
    graphs = m.extra.get("export", {}).get("graphs", {}) if isinstance(m.extra.get("export"), dict) else {}
    if not graphs and report:
        graphs = report.get("graphs", {})
    if not graphs:
        return ["op histogram: not recorded in this bundle"]
    lines = ["op histogram (top ops per graph)"]
    for name in sorted(graphs):
        g = graphs[name]
        ops = sorted(g.get("ops", {}).items(), key=lambda kv: (-kv[1], kv[0]))
        top = ", ".join(f"{op} {n}" for op, n in ops[:TOP_OPS])
        more = f", +{len(ops) - TOP_OPS} more" if len(ops) > TOP_OPS else ""
        lines.append(f"  {name:<26} {g.get('nodes', sum(n for _, n in ops)):>5} nodes: {top}{more}")
    return lines


def _verify_lines(report: dict[str, Any] | None) -> list[str]:
    if report is None:
        return ["verify    not run (export with --verify to add verify.json)"]
    b, w = report.get("bounds", {}), report.get("worst", {})
    status = "PASSED" if report.get("passed") else "FAILED"
    lines = [f"verify    {status}: worst output rel {w.get('output_rel', float('nan')):.1e} "
             f"(<= {b.get('output_rel', float('nan')):.0e}), grad rel {w.get('grad_rel', float('nan')):.1e} "
             f"(<= {b.get('grad_rel', float('nan')):.0e}), finite diff {w.get('fd_rel', float('nan')):.1e} "
             f"(<= {b.get('fd_rel', float('nan')):.0e})"]
    env = report.get("environment", {})
    if env:
        lines.append("          " + ", ".join(f"{k} {v}" for k, v in env.items()))
    for c in report.get("checks", []):
        errs = ", ".join(f"{k} {v:.1e}" for k, v in c.get("errors", {}).items())
        fd = f", fd {max(c['fd']):.1e}" if c.get("fd") else ""
        mark = "ok" if c.get("passed") else "FAIL " + "; ".join(c.get("notes", []))
        where = f"{c.get('file', '?'):<26} {c.get('inputs', '?'):<6} b{c.get('batch', '?'):<3}"
        lines.append(f"  {where} {errs}{fd}  {mark}")
    return lines


def info_text(path: str | os.PathLike[str] | None = None) -> str:
    """Human-readable summary of a bundle.

    Args:
        path: bundle folder or `.zip`; None for the embedded default bundle.

    Returns:
        Multi-line text: manifest summary, files with sizes, op histogram per graph, parity result. A bundle
        that fails validation (e.g. a tampered file) is still summarised from its manifest, with the reason in
        the first line.

    Raises:
        BundleError: there is no readable manifest at `path`.
    """
    source = Path(path) if path is not None else default_bundle_path()
    try:
        bundle = Bundle.load(source if path is not None else None)
        root, manifest, status = bundle.root, bundle.manifest, "valid, checksums ok"
    except BundleError as e:
        if not source.is_dir():
            raise
        root, manifest, status = source, _read_manifest(source), f"INVALID: {e}"
    report = None
    if "verify.json" in manifest.files and (root / "verify.json").is_file():
        try:
            report = json.loads((root / "verify.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            report = {"passed": False, "checks": [], "bounds": {}, "worst": {}}
    lines = _header(manifest, str(source), status) + _files(manifest) + _op_lines(manifest, report)
    return "\n".join(lines + _verify_lines(report))
