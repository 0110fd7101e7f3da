"""Shared helpers of the benchmark scripts: result writers, interleaved timing, the benchmark models.

The measuring pieces themselves (machine stamp, matmul ceiling, FLOP count, ONNX Runtime profile, realistic jobs,
step and end-to-end timing) live in `defectgen.measure.bench`, so `defectgen bench` on an edge box and these
scripts on the workstation measure the same way. This module adds what needs torch or matplotlib:

- `write_results(name, ...)`: `<name>.json` (top-level `summary`, `machine`, `command`, `quick`), `<name>.md`
  (the tables under the command and machine that produced them) and `<name>.png` (stamped in its footer).
  Quick (smoke) runs go to `benchmarks/results/quick/` and say QUICK in all three files.
- `interleaved(fns)`: times several contenders in alternating rounds, so that load changes on a shared machine
  hit all of them alike (the ratios are what the issue asks for).
- `default_model()` / `random_model(res)`: (bundle path, G, E, D) for the trained default model and for
  randomly initialised nets of the default channel config at another resolution, exported through
  `defectgen.export` into a cached bundle. Untrained weights time the same as trained ones (same graph, same
  shapes, dense fp32 arithmetic), so the 128 px model is random; its quality figures mean nothing.

Scripts run as `python benchmarks/<name>.py`, which puts `benchmarks/` on `sys.path` (`import common`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.measure.stamp import machine_stamp, stamp_line
from defectgen.measure.timing import summarize
from defectgen.runtime.jobs.invert import InversionConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_BUNDLE = ROOT / "defectgen" / "assets" / "default_bundle"
DEFAULT_MODELS = ROOT / "models" / "default"


# the headline figures of the throughput benchmark (README table keys)
SUMMARY_KEYS = ("ort_vs_torch_step_speedup", "end_to_end_speedup_vs_idinvert", "step_flops_share_of_ceiling")


def idinvert_config(space: str = "wplus") -> InversionConfig:
    """The idinvert reference setting: Adam, lr 0.01 constant, 100 steps, from `w_avg`, no early stop."""
    return InversionConfig(space=space, steps=100, lr=0.01, init="wavg", lr_schedule="constant",
                           early_stop_patience=0)


# ---- command line ----------------------------------------------------------------------------------------------
def parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every benchmark script has (`--quick`, `--out-dir`)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny sizes and few repeats (< 2 min)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where results go (default benchmarks/results, or benchmarks/results/quick with --quick)")
    return p


def results_dir(quick: bool, out_dir: Path | None = None) -> Path:
    """The folder results are written to."""
    return out_dir or (RESULTS / "quick" if quick else RESULTS)


def command_line() -> str:
    """How this process was started, relative to the repository root (the command results are quoted with)."""
    argv = list(sys.argv)
    with_root = Path(argv[0]).resolve()
    if with_root.is_relative_to(ROOT):
        argv[0] = str(with_root.relative_to(ROOT))
    return "python " + " ".join(shlex.quote(a) for a in argv)


# ---- JSON and markdown ---------------------------------------------------------------------------------------------
def sanitize(o: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None, Paths to str, tuples to lists."""
    if isinstance(o, dict):
        return {str(k): sanitize(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [sanitize(v) for v in o]
    if isinstance(o, np.ndarray):
        return sanitize(o.tolist())
    if isinstance(o, np.generic):
        return sanitize(o.item())
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, Path):
        return str(o)
    return o


def fmt(x: Any, digits: int = 2) -> str:
    """A table cell: numbers rounded, None/NaN as an en dash."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (float, np.floating)):
        return f"{x:.{digits}f}"
    return str(x)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (cells already formatted or formatted with `fmt`)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, *, summary: dict[str, Any], data: dict[str, Any], tables: Sequence[tuple[str, str]],
                  figure: Any | None, quick: bool, out_dir: Path | None = None, notes: Sequence[str] = (),
                  machine: dict[str, Any] | None = None, started: float | None = None) -> dict[str, Path]:
    """Write `<name>.json`, `<name>.md` and `<name>.png`, all stamped with the machine and the command.

    Args:
        name: result name (`throughput`, `convergence`, ...).
        summary: the headline figures (None where not measured).
        data: everything else that goes into the JSON.
        tables: `(title, markdown table)` pairs for the markdown file.
        figure: a matplotlib figure (saved, stamped in its footer, then closed), or None.
        quick: a smoke run (says so everywhere; default folder `results/quick/`).
        out_dir: folder (default `results_dir(quick)`).
        notes: bullet points under the tables (definitions, caveats).
        machine: the stamp taken when the measurements started (default: taken now).
        started: `time.time()` at the start, for the run's duration.

    Returns:
        `{"json": path, "md": path, "png": path}` (no png without a figure).
    """
    out = results_dir(quick, out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = machine or machine_stamp()
    end = machine_stamp()
    doc = {"benchmark": name, "quick": quick, "command": command_line(), "summary": summary, "machine": stamp,
           "loadavg_end": end["loadavg"], "duration_s": None if started is None else round(time.time() - started, 1),
           **data, "notes": list(notes)}
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    paths["json"].write_text(json.dumps(sanitize(doc), indent=1, allow_nan=False) + "\n")
    label = " — QUICK smoke run (tiny sizes, few repeats: not a result)" if quick else ""
    md = [f"# {name}{label}", "", f"Command: `{doc['command']}`  ", f"Machine: {stamp_line(stamp)}  ",
          f"Load average at the end: {end['loadavg']}; run time {fmt(doc['duration_s'], 0)} s", "",
          "## Summary", "", md_table(["key", "value"], [[k, fmt(v, 3)] for k, v in summary.items()])]
    for title, table in tables:
        md += ["", f"## {title}", "", table]
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if figure is not None:
        paths["png"] = out / f"{name}.png"
        md += ["", f"![{name}]({name}.png)"]
        figure.text(0.01, 0.005, ("QUICK smoke run · " if quick else "") + stamp_line(stamp), fontsize=6,
                    color="0.35", ha="left", va="bottom", wrap=True)
        figure.savefig(paths["png"], dpi=110)
        import matplotlib.pyplot as plt

        plt.close(figure)
    paths["md"].write_text("\n".join(md) + "\n")
    return paths


def new_figure(rows: int = 1, cols: int = 2, size: tuple[float, float] = (11, 4.2)) -> tuple[Any, Any]:
    """A matplotlib (figure, axes) on the Agg backend, with room at the bottom for the stamp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    fig.subplots_adjust(bottom=0.17, wspace=0.3, hspace=0.45)
    return fig, axes


# ---- timing several contenders ---------------------------------------------------------------------------------
def interleaved(fns: dict[str, Callable[[], object]], *, rounds: int, per_round: int, warmup: int = 1,
                budget_s: float | None = None) -> dict[str, dict[str, Any]]:
    """Time contenders in alternating rounds (A×n, B×n, A×n, ...) and summarize each one's pooled samples.

    Args:
        fns: name -> call to time.
        rounds: alternation rounds.
        per_round: timed calls per contender per round.
        warmup: untimed calls of each contender first.
        budget_s: stop after the round in which the total timed time passed this (at least 1 round).

    Returns:
        name -> `summarize` of its samples.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    spent = 0.0
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                samples[name].append(dt)
                spent += dt
        if budget_s is not None and spent > budget_s:
            break
    return {k: summarize(v) for k, v in samples.items()}


# ---- models ------------------------------------------------------------------------------------------------------
def _source_key(*parts: object) -> str:
    """Hash of the nets/export sources and the arguments: a cached export is rebuilt when either changes."""
    h = hashlib.sha256(json.dumps([str(p) for p in parts]).encode())
    for sub in ("nets", "export"):
        for f in sorted((ROOT / "defectgen" / sub).glob("*.py")):
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def cache_root() -> Path:
    """Where exported benchmark bundles are cached (outside the repository)."""
    from defectgen.runtime.bundle import user_cache_dir

    return Path(os.environ.get("DEFECTGEN_BENCH_CACHE") or user_cache_dir() / "bench")


def random_nets(res: int, seed: int = 0, **overrides: Any) -> tuple[Any, Any, Any]:
    """Randomly initialised (G, E, D) at `res` px with the default channel config (`overrides`: config fields)."""
    import torch

    from defectgen.nets.encoder import Encoder, EncoderConfig
    from defectgen.nets.stylegan import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig

    torch.manual_seed(seed)
    gcfg = GeneratorConfig(res=res, **overrides)
    dkw = {k: v for k, v in overrides.items() if k in ("channel_base", "channel_max", "n_types")}
    ekw = {k: v for k, v in overrides.items() if k in ("channel_base", "channel_max")}
    G, E, D = Generator(gcfg), Encoder(EncoderConfig.from_generator(gcfg, **ekw)), Discriminator(
        DiscriminatorConfig(res=res, **dkw))
    for net in (G, E, D):
        net.eval().requires_grad_(False)
    return G, E, D


def export_nets(G: Any, E: Any, D: Any, out: Path, *, batches: Sequence[int], spaces: Sequence[str]) -> Path:
    """Export (G, E, D) into a bundle folder with `defectgen.export` (no defect bank: S = I in every job)."""
    from defectgen.export.bundle import export_bundle

    export_bundle(G, E, D, out=out, spaces=list(spaces), batches=list(batches), verify=False)
    return out


def random_model(res: int, *, batches: Sequence[int] = (1, 4, 8), spaces: Sequence[str] = ("wplus",),
                 seed: int = 0, **overrides: Any) -> tuple[Path, Any, Any, Any]:
    """A random-weight model at `res` px: (bundle folder, G, E, D), the bundle exported once and cached."""
    G, E, D = random_nets(res, seed, **overrides)
    key = _source_key("random", res, list(batches), list(spaces), seed, sorted(overrides.items()))
    out = cache_root() / f"random{res}-{key}"
    if not (out / "manifest.json").is_file():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        export_nets(G, E, D, tmp, batches=batches, spaces=spaces)
        tmp.rename(out)
    return out, G, E, D


def default_model() -> tuple[Path, Any, Any, Any] | None:
    """The trained default model: (embedded bundle, G, E, D), or None while it is not shipped/trained yet.

    The nets are read from the checkpoints under `models/default/` that `defectgen export` built the embedded
    bundle from: `patch_gan/` + `patch_encoder/` for a patch-mode bundle (re-exporting them gives the bundle's
    graphs byte for byte), else the whole-part `gan/` + `encoder/` runs.
    """
    if not (DEFAULT_BUNDLE / "manifest.json").is_file() or not DEFAULT_MODELS.is_dir():
        return None
    from defectgen.training.checkpoint import load_discriminator, load_encoder, load_generator, read_checkpoint

    if "patch" in json.loads((DEFAULT_BUNDLE / "manifest.json").read_text(encoding="utf-8")):
        if not (DEFAULT_MODELS / "patch_gan").is_dir():
            return None
        from defectgen.export.patch import load_patch_run

        run = load_patch_run(DEFAULT_MODELS / "patch_gan")
        G, D, E = run.G, run.D, load_encoder(DEFAULT_MODELS / "patch_encoder")
    else:
        kinds = {read_checkpoint(p).meta.get("kind"): p for p in sorted(DEFAULT_MODELS.glob("*/*.safetensors"))}
        if "gan" not in kinds or "encoder" not in kinds:
            return None
        G, D, E = load_generator(kinds["gan"]), load_discriminator(kinds["gan"]), load_encoder(kinds["encoder"])
    for net in (G, E, D):
        net.eval().requires_grad_(False)
    return DEFAULT_BUNDLE, G, E, D


def default_model_all_spaces(*, batches: Sequence[int] = (4,),
                              spaces: Sequence[str] = ("wplus", "w", "z")) -> Path | None:
    """The default model with every latent space in `spaces` at `batches`, for `convergence.py` (compares spaces).

    The shipped bundle itself when it has them (the patch-mode bundle ships wplus, w and z at 1, 4, 8); else
    the same nets and defect bank data exported again, cached (`docs/bundle.md`: `--data runs/data64` when that
    folder is here, else no bank).
    """
    from defectgen.runtime.bundle import Bundle

    if (DEFAULT_BUNDLE / "manifest.json").is_file():  # the shipped graphs suffice: no nets to load or export
        shipped = Bundle.load(DEFAULT_BUNDLE)
        if all(s in shipped.spaces and set(batches) <= set(shipped.step_batches(s)) for s in spaces):
            return DEFAULT_BUNDLE
    found = default_model()
    if found is None:
        return None
    _, G, E, D = found
    types = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text(encoding="utf-8"))["defect_types"]
    data = ROOT / "runs" / "data64"
    weights = [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(DEFAULT_MODELS.rglob("*.safetensors"))]
    key = _source_key("default", list(batches), list(spaces), weights, data.is_dir())  # new weights, new export
    out = cache_root() / f"default-all-{key}"
    if not (out / "manifest.json").is_file():
        from defectgen.export.bundle import export_bundle

        export_bundle(G, E, D, out=out, spaces=list(spaces), batches=list(batches), verify=False,
                      data_root=data if data.is_dir() else None, types=types)
    return out


def torch_backend(G: Any, E: Any, D: Any, threads: int) -> Any:
    """The torch eager reference backend (what an idinvert user runs), `threads` intra-op threads."""
    from defectgen.export.torch_backend import TorchBackend

    return TorchBackend(G, E, D, threads=threads)
