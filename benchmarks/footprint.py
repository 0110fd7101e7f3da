"""Footprint on the edge: cold start and peak memory of `defectgen run`, and the size of the installs.

    python benchmarks/footprint.py                   # default bundle; builds a runtime-only venv once (pip)
    python benchmarks/footprint.py --bundle B --runtime-venv /path/to/venv
    python benchmarks/footprint.py --quick --bundle B   # smoke test: one run per condition, no venv build

- **Cold start**: a new process runs `defectgen run` on one example part with one random mask (ONNX Runtime
  CPU) and exits after writing it: wall time from process start to exit, i.e. to the first (only) finished job,
  median of repeated runs. Two conditions: the bundle's optimised-graph cache (`.ort_cache/`) absent (the very
  first run on a device) and present (every later run). The bundle is copied to a temporary folder first, so the
  shipped one is never touched; the OS file cache is warm in both (the files were just copied).
- **Peak RSS** of that process (`ru_maxrss` from `wait4`), MiB.
- **Install sizes** (sum of file sizes, MiB): a runtime-only venv (`pip install .`, no extras: numpy,
  onnxruntime, opencv-python-headless, typer, tqdm; no torch), built once and cached, with the largest packages;
  and the training venv this script runs in (torch CPU + `[train,dev]` extras).
The processes run from the runtime venv when it exists (a real edge install), else from this one.
Results: `benchmarks/results/footprint.{json,md,png}`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

from defectgen import EXAMPLES_DIR
from defectgen.measure import timing
from defectgen.measure.stamp import machine_stamp
from defectgen.runtime.bundle import Bundle

MIB = 2**20
ALIASES = {"opencv_python_headless": "cv2", "opencv_python": "cv2"}  # a wheel's bundled libs count with it


def tree_bytes(path: Path) -> int:
    """Sum of the sizes of the regular files under `path` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages"))
    if not found:
        raise SystemExit(f"no site-packages under {venv}")
    return found[0]


def package_sizes(venv: Path, top: int = 8) -> list[dict[str, Any]]:
    """Largest top-level entries of a venv's site-packages (a package and its `.libs` counted together)."""
    sizes: dict[str, int] = {}
    for entry in site_packages(venv).iterdir():
        name = entry.name.split("-")[0].removesuffix(".libs").lower()
        name = ALIASES.get(name, name)
        if entry.name.endswith((".dist-info", ".pth")) or name in ("__pycache__", "_distutils_hack"):
            continue
        sizes[name] = sizes.get(name, 0) + (tree_bytes(entry) if entry.is_dir() else entry.stat().st_size)
    return [{"package": k, "mib": v / MIB} for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:top]]


def runtime_venv(path: Path | None, *, build: bool) -> Path | None:
    """The runtime-only venv: `path`, else a cached one built with `pip install <repo>` (no extras)."""
    if path is not None:
        return path
    h = hashlib.sha256((common.ROOT / "pyproject.toml").read_bytes())
    for f in sorted((common.ROOT / "defectgen").rglob("*")):  # the code and the embedded bundle ship in the wheel
        if f.is_file() and "__pycache__" not in f.parts and not any(p.startswith(".") for p in f.parts):
            h.update(f"{f.relative_to(common.ROOT)}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    key = h.hexdigest()[:10]
    venv = common.cache_root() / f"runtime-venv-{key}"
    done = venv / ".complete"  # venvs are not relocatable, so it is built in place; this marks a finished build
    if done.is_file() or not build:
        return venv if done.is_file() else None
    print(f"building the runtime-only venv {venv} (pip install {common.ROOT}, no extras) ...", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(common.ROOT)], check=True)
    done.touch()
    return venv


def run_once(defectgen: Path, bundle: Path, part: Path, out: Path, defect_type: str) -> dict[str, Any]:
    """One `defectgen run` in a new process: wall time to exit and peak RSS."""
    cmd = [str(defectgen), "run", "--bundle", str(bundle), "--images", str(part), "--random-masks", "1",
           "--types", defect_type, "--backend", "ort-cpu", "--out", str(out)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}): {stderr[-2000:]}")
    if not list((out / "test" / defect_type).glob("*.png")):
        raise RuntimeError(f"no output image under {out}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss * 1024 / MIB}


def cold_starts(defectgen: Path, bundle_src: Path, repeats: int) -> dict[str, Any]:
    """Cold-start runs without and with the optimised-graph cache, on a private copy of the bundle."""
    b = Bundle.load(bundle_src)
    defect_type = b.defect_types[1] if len(b.defect_types) > 1 else b.defect_types[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        bundle = tmp_path / "bundle"
        shutil.copytree(b.root, bundle, ignore=shutil.ignore_patterns(".*cache*"))
        part = tmp_path / "part"
        part.mkdir()
        shutil.copy(sorted(EXAMPLES_DIR.glob("*.png"))[0], part / "part.png")
        runs: dict[str, list[dict[str, Any]]] = {"no_cache": [], "cache": []}
        for i in range(repeats):
            shutil.rmtree(bundle / ".ort_cache", ignore_errors=True)
            runs["no_cache"].append(run_once(defectgen, bundle, part, tmp_path / f"o{i}a", defect_type))
            runs["cache"].append(run_once(defectgen, bundle, part, tmp_path / f"o{i}b", defect_type))
    out: dict[str, Any] = {"defect_type": defect_type, "runs": runs}
    for k, rs in runs.items():
        out[k] = {"wall": timing.summarize([r["wall_s"] for r in rs]),
                  "peak_rss_mib": float(np.max([r["peak_rss_mib"] for r in rs]))}
    return out


def main() -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle (default: the embedded default bundle)")
    ap.add_argument("--runtime-venv", type=Path, default=None, help="an existing runtime-only venv to measure/use")
    ap.add_argument("--no-build", action="store_true", help="do not build the runtime venv (size reported as null)")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    started, stamp = time.time(), machine_stamp()
    bundle = a.bundle or common.DEFAULT_BUNDLE
    # a smoke run never builds nor uses the cached runtime venv (it may hold older code): this venv, unless given
    rt = a.runtime_venv if a.quick else runtime_venv(a.runtime_venv, build=not a.no_build)
    train_venv = Path(sys.prefix)
    defectgen = (rt or train_venv) / "bin" / "defectgen"
    cs = cold_starts(defectgen, bundle, 1 if a.quick else a.repeats)
    sizes = {"runtime_venv": {"path": str(rt), "mib": tree_bytes(rt) / MIB, "packages": package_sizes(rt)}
             if rt else None,
             "train_venv": {"path": str(train_venv), "mib": tree_bytes(train_venv) / MIB,
                            "packages": package_sizes(train_venv)}}
    summary = {"cold_start_s": cs["cache"]["wall"]["median_s"], "peak_rss_mb": cs["cache"]["peak_rss_mib"],
               "runtime_venv_mb": sizes["runtime_venv"]["mib"] if rt else None,
               "train_venv_mb": sizes["train_venv"]["mib"]}
    f = common.fmt
    cold_rows = [[k.replace("_", " "), f(cs[k]["wall"]["median_s"], 2),
                  f"{cs[k]['wall']['min_s']:.2f}–{cs[k]['wall']['max_s']:.2f}", cs[k]["wall"]["n"],
                  f(cs[k]["peak_rss_mib"], 0)] for k in ("no_cache", "cache")]
    size_rows = [[name.replace("_", " "), f(v["mib"], 0), ", ".join(f"{p['package']} {p['mib']:.0f}"
                                                                    for p in v["packages"][:6])]
                 for name, v in sizes.items() if v]
    tables = [("Cold start: new process → first finished job (`defectgen run`, 1 job, ort-cpu)", common.md_table(
        ["optimised-graph cache", "median s", "min–max s", "runs", "peak RSS MiB"], cold_rows)),
        ("Install size (sum of file sizes)", common.md_table(["venv", "MiB", "largest packages (MiB)"], size_rows))]
    fig, ax = common.new_figure(1, 2, (11, 4))
    ax[0, 0].bar(["no cache", "cache"], [cs[k]["wall"]["median_s"] for k in ("no_cache", "cache")],
                 color=["tab:orange", "tab:blue"])
    ax[0, 0].axhline(1.5, color="tab:red", ls="--", lw=1, label="target 1.5 s")
    ax[0, 0].set_ylabel("s, new process → first finished job")
    ax[0, 0].legend(fontsize=8)
    ax[0, 0].set_title("cold start of defectgen run")
    names = [n for n, v in sizes.items() if v]
    ax[0, 1].bar([n.replace("_", " ") for n in names], [sizes[n]["mib"] for n in names], color="tab:gray")
    ax[0, 1].axhline(150, color="tab:red", ls="--", lw=1, label="runtime target 150 MB")
    ax[0, 1].set_ylabel("MiB")
    ax[0, 1].set_yscale("log")
    ax[0, 1].legend(fontsize=8)
    ax[0, 1].set_title("install size")
    notes = [f"bundle {bundle} copied to a temporary folder; process = `{defectgen}`"
             f" ({'runtime-only venv' if rt else 'the training venv: no runtime venv built'})",
             "summary cold_start_s / peak_rss_mb: with the optimised-graph cache present (every run after a device's "
             "first); the no-cache row is the first run on a device",
             "MB in the summary keys are MiB (2^20 bytes); sizes are apparent file sizes (du --apparent-size)",
             "the training venv also holds the [dev] extras (pytest, ruff) and pip/setuptools"]
    common.write_results("footprint", summary=summary, data={"cold_start": cs, "sizes": sizes}, tables=tables,
                         figure=fig, quick=a.quick, out_dir=a.out_dir, notes=notes, machine=stamp, started=started)
    print(summary)


if __name__ == "__main__":
    main()
