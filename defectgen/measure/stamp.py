"""Where and with what a measurement was taken: every absolute time in a result file carries this stamp."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "onnxscript", "opencv-python-headless", "torch",
            "tensorrt", "defectgen")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> dict[str, Any] | None:
    """HEAD of the repository this package is imported from (None for an installed wheel)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(dirty)}


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def machine_stamp() -> dict[str, Any]:
    """Where and with what a measurement was taken (goes into every result file).

    Returns:
        CPU model and core counts, memory, OS, Python and package versions, git commit, UTC time and the
        1/5/15-minute load averages (a loaded machine explains noisy timings).
    """
    from defectgen.runtime.backends.ort import _cpu_model, physical_cores

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {
        "cpu_model": _cpu_model(), "arch": platform.machine(), "physical_cores": physical_cores(),
        "usable_cpus": usable, "memory_gib": _memory_gib(), "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: v for p in PACKAGES if (v := _version(p)) is not None},
        "git": _git_commit(), "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg": load,
    }


def stamp_line(stamp: dict[str, Any]) -> str:
    """One line naming the machine and versions, for table headers and plot footers."""
    v = stamp.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "onnxruntime-gpu", "torch", "numpy") if k in v)
    git = stamp.get("git") or {}
    commit = f", git {git['commit']}{'+dirty' if git.get('dirty') else ''}" if git else ""
    return (f"{stamp['cpu_model']} ({stamp['physical_cores']} cores), {libs}, Python {stamp['python']}"
            f"{commit}, {stamp['date_utc']}, load avg {stamp.get('loadavg')}")
