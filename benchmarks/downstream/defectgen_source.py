"""The defectgen source: `defectgen run` on a JSONL job list, so the protocol holds exactly.

Each job is a good training image, a random target mask of a type (`"mask": null`: the runtime draws it on
the part) and, as the reference defect to imitate, a **held-in** real defect of that type. Passing the
reference per job keeps the bundle's own defect bank (which may hold held-out images, e.g. for the default
bundle) out of the run. The job list needs its files under its own folder (the runtime refuses paths that
escape it), so the used goods and references are copied into `<work>/inputs/`.

A second, short run of the first jobs with `--mask-mode generated` gives G's own mask for the same jobs
(same lines, same seeds, so the same target masks and inversions): its IoU with the target is the
"generated-mask IoU" of the table (run for the main defectgen row only).

Everything goes through the `defectgen` CLI in a subprocess: the bundle is read only as its manifest's JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectgen import GOOD
from defectgen.data.imageio import atomic_write_text, read_mask
from defectgen.data.masks import shape_for

from .bundle_info import read_manifest
from .metrics import iou
from .sources import Job, Sample, fresh_dir, write_samples
from .split import Split


def map_types(data_types: Sequence[str], bundle_types: Sequence[str]) -> dict[str, str]:
    """Data type -> bundle type: the same name, else a bundle type drawn with the same mask shape family
    (`data.masks.shape_for`, e.g. scratch -> cut), else the bundle's first defect type."""
    avail = [t for t in bundle_types if t != GOOD]
    out = {}
    for t in data_types:
        if t in avail:
            out[t] = t
            continue
        same = [b for b in avail if shape_for(b) is shape_for(t)]
        out[t] = same[0] if same else avail[0]
    return out


def _copy(src: Path, dst: Path) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        shutil.copyfile(src, dst)
    return dst.as_posix()


def stage_jobs(jobs: list[Job], split: Split, type_map: dict[str, str], inputs: Path, seed: int) -> Path:
    """Copy goods and held-in references under `inputs/` and write `inputs/jobs.jsonl`; returns its path."""
    fresh_dir(inputs)
    lines = []
    for job in jobs:
        rng = np.random.default_rng([seed, zlib.crc32(b"defectgen-reference"), job.index])
        bank = split.held_in[job.type]
        ref = bank[int(rng.integers(len(bank)))]
        good = _copy(job.good, inputs / "good" / job.good.name)
        ref_img = _copy(ref.image_path, inputs / "bank" / job.type / ref.image_path.name)
        ref_mask = _copy(ref.mask_path, inputs / "bank" / job.type / ref.mask_path.name)  # type: ignore[arg-type]
        rel = [os.path.relpath(p, inputs) for p in (good, ref_img, ref_mask)]
        lines.append(json.dumps({"image": rel[0], "mask": None, "type": type_map[job.type],
                                 "reference": rel[1:]}))
    path = inputs / "jobs.jsonl"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def run_defectgen(args: list[str], log: Path) -> tuple[int, float]:
    """`python -m defectgen.cli run ARGS` with output into `log`; returns (exit code, seconds)."""
    cmd = [sys.executable, "-m", "defectgen.cli", "run", *args]
    t0 = time.perf_counter()
    with log.open("w", encoding="utf-8") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    return code, time.perf_counter() - t0


def _records(out: Path) -> dict[int, dict[str, Any]]:
    """Last `jobs.jsonl` record per job index."""
    recs: dict[int, dict[str, Any]] = {}
    path = out / "jobs.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                recs[int(rec["index"])] = rec
    return recs


def _tail(log: Path, n: int = 15) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])


def generate_defectgen(jobs: list[Job], split: Split, out: Path, *, bundle: Path, seed: int, work: Path,
                       iou_jobs: int = 32, extra: Sequence[str] = (), threads: int | None = None) -> dict[str, Any]:
    """Generate the defectgen source into `out` (replaced); returns timing, failures and the mask IoU.

    Sample types are the data's types (the job's), whatever bundle type a job was mapped to.

    Raises:
        RuntimeError: `defectgen run` refused to start (exit 2) or produced nothing.
    """
    type_map = map_types(split.types, read_manifest(bundle)["defect_types"])
    job_list = stage_jobs(jobs, split, type_map, work / "inputs", seed)
    fresh_dir(out)
    common = ["--bundle", str(bundle), "--seed", str(seed), *(["--threads", str(threads)] if threads else []),
              *extra]
    code, seconds = run_defectgen(["--jobs", str(job_list), "--out", str(out), *common], work / "run.log")
    recs = _records(out)
    ok = {i: r for i, r in recs.items() if r["status"] == "ok"}
    if code == 2 or not ok:
        raise RuntimeError(f"defectgen run failed (exit {code}); last lines of {work / 'run.log'}:\n"
                           f"{_tail(work / 'run.log')}")
    samples = [Sample(str(out / r["outputs"]["image"]), str(out / r["outputs"]["mask"]), jobs[i].type,
                      str(job_list.parent / r["inputs"]["image"]), i) for i, r in sorted(ok.items())]
    write_samples(out, samples)
    run_info = json.loads((out / "run.json").read_text(encoding="utf-8")) if (out / "run.json").is_file() else {}
    info: dict[str, Any] = {
        "seconds": seconds, "count": len(ok), "failed": len(recs) - len(ok), "exit_code": code,
        "jobs_per_s": len(ok) / seconds if seconds > 0 else None, "type_map": type_map,
        "run": {k: run_info.get("identity", {}).get(k) for k in ("space", "steps", "lr", "init", "lambdas")}
        | {"backend": run_info.get("info", {}).get("backend")},
        "first_error": next((r["error"] for r in recs.values() if r["status"] != "ok"), None),
    }
    info.update(_mask_iou(job_list, out, work, common, min(iou_jobs, len(jobs))))
    return info


def _mask_iou(job_list: Path, out: Path, work: Path, common: list[str], k: int) -> dict[str, Any]:
    """Rerun the first `k` jobs with `--mask-mode generated`; IoU of G's mask with the target per job."""
    if k <= 0:
        return {"mask_iou": None, "mask_iou_jobs": 0}
    head = job_list.with_name("jobs_iou.jsonl")
    atomic_write_text(head, "".join(job_list.read_text(encoding="utf-8").splitlines(keepends=True)[:k]))
    gen_out = fresh_dir(work / "generated_masks")
    code, seconds = run_defectgen(["--jobs", str(head), "--out", str(gen_out), "--mask-mode", "generated", *common],
                                  work / "run_iou.log")
    target, gen = _records(out), _records(gen_out)
    ious = []
    for i in range(k):
        t, g = target.get(i), gen.get(i)
        if t is None or t["status"] != "ok":
            continue  # no target to compare with
        if g is None or g["status"] != "ok":
            ious.append(0.0)  # G drew no mask near the target (the run fails such a job in generated mode)
            continue
        tm = read_mask(out / t["outputs"]["mask"])
        ious.append(iou(read_mask(gen_out / g["outputs"]["mask"], tm.shape), tm))
    return {"mask_iou": float(np.mean(ious)) if ious else None, "mask_iou_jobs": len(ious),
            "mask_iou_exit_code": code, "mask_iou_seconds": seconds}
