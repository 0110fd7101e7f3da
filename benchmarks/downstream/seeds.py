"""Segmenter training over (source, seed) pairs, in parallel worker processes, and the mean ± std over seeds.

One segmenter seed per source was noise-limited (a baseline's pixel AP moved by up to 8 points between runs),
so every source is trained with several seeds on the same synthetic set. The arrays travel through `.npy` files
in the work folder (a worker loads its source once per task, not through a pipe), and each worker runs torch on
one thread: on a small CPU, two one-thread processes finish the same trainings sooner than one two-thread one.

Each finished (source, seed) is kept in `<work>/seg_cache/`, keyed by the bytes of everything it was trained and
evaluated on (the source's arrays, the good images, the evaluation set), the segmenter config with its seed and
the code that trains and scores (`segmenter.py`, `metrics.py`, `train_task`): a rerun with the same `--work`
that changes only some sources (a new bundle, other `--run-args`) trains only those, and a changed input or
code can never pick up a stale result.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import per_type_ap, segmentation_metrics
from .segmenter import SegConfig, predict, train_segmenter

EVAL_KEYS = ("images", "masks", "labels", "types")
CODE = ("segmenter.py", "metrics.py")  # their text, and `train_task`'s, is part of the cache key


@dataclass(frozen=True)
class Task:
    """Train one segmenter: `source`'s arrays (`<arrays>/<source>_{images,masks}.npy`) with `seed`."""

    source: str
    seed: int
    arrays: str  # folder of the .npy files (also holds good_images.npy and eval_*.npy)
    save_net: str | None = None  # write the trained weights here (the real source's seed-0 net)


def save_arrays(folder: Path, name: str, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, v in arrays.items():
        np.save(folder / f"{name}_{k}.npy", v)


def _load(folder: Path, name: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {k: np.load(folder / f"{name}_{k}.npy") for k in keys}


def cache_key(task: Task, cfg: SegConfig) -> str:
    """sha256 over the task's input arrays, the config (with the task's seed) and the code that trains/scores."""
    h = hashlib.sha256()
    folder = Path(task.arrays)
    files = [f"{task.source}_images.npy", f"{task.source}_masks.npy", "good_images.npy",
             *(f"eval_{k}.npy" for k in EVAL_KEYS)]
    for name in files:
        h.update(name.encode())
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    h.update(json.dumps(asdict(replace(cfg, seed=task.seed)), sort_keys=True).encode())
    here = Path(__file__).parent
    for name in CODE:
        h.update((here / name).read_bytes())
    h.update(inspect.getsource(train_task).encode())
    return h.hexdigest()[:24]


def _cached(task: Task, path: Path) -> dict[str, Any] | None:
    """A cached result (and the saved net, when the task wants one), or None."""
    net = path.with_suffix(".pt")
    if not path.is_file() or (task.save_net and not net.is_file()):
        return None
    out = json.loads(path.read_text(encoding="utf-8"))
    if task.save_net:
        shutil.copyfile(net, task.save_net)
    _report(task, out, f"cached {path.name}")
    return {**out, "source": task.source, "cached": True}


def _report(task: Task, out: dict[str, Any], how: str) -> None:
    print(f"downstream: {task.source} seed {task.seed}: pixel AP {100 * out['metrics']['pixel_ap']:.1f} ({how})",
          file=sys.stderr, flush=True)


def train_task(task: Task, cfg: SegConfig) -> dict[str, Any]:
    """Train and evaluate one (source, seed), or take it from the cache; returns metrics, per-type AP, timing."""
    import torch

    folder = Path(task.arrays)
    cache = folder.parent / "seg_cache" / f"{cache_key(task, cfg)}.json"
    if (hit := _cached(task, cache)) is not None:
        return hit
    src = _load(folder, task.source, ("images", "masks"))
    good = np.load(folder / "good_images.npy")
    ev = _load(folder, "eval", EVAL_KEYS)
    net, log = train_segmenter(good, src["images"], src["masks"], replace(cfg, seed=task.seed), log_every=0)
    t0 = time.perf_counter()
    maps = predict(net, ev["images"])
    out = {"source": task.source, "seed": task.seed,
           "metrics": segmentation_metrics(maps, ev["masks"], ev["labels"]),
           "per_type_ap": per_type_ap(maps, ev["masks"], ev["types"]),
           "train_seconds": log.seconds, "eval_seconds": time.perf_counter() - t0, "final_loss": log.final_loss}
    cache.parent.mkdir(parents=True, exist_ok=True)
    if task.save_net:
        torch.save(net.state_dict(), task.save_net)
        shutil.copyfile(task.save_net, cache.with_suffix(".pt"))
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(out), encoding="utf-8")
    tmp.replace(cache)  # written last and atomically: a killed run leaves no half entry
    _report(task, out, f"{log.seconds:.0f} s")
    return {**out, "cached": False}


def run_tasks(tasks: list[Task], cfg: SegConfig, jobs: int) -> list[dict[str, Any]]:
    """All tasks, in order, in this process (`jobs` 1) or in `jobs` spawned one-thread workers."""
    if jobs <= 1 or len(tasks) <= 1:
        return [train_task(t, cfg) for t in tasks]
    cfg = replace(cfg, threads=1)
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers before torch loads there
    ctx = multiprocessing.get_context("spawn")  # torch and fork do not mix
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(train_task, t, cfg) for t in tasks]
        return [f.result() for f in futures]


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof 1; 0 for one value) and count of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Over one source's seeds: {metric: mean/std/n}, and per-type pixel AP as the mean over seeds."""
    metrics = {k: mean_std([r["metrics"][k] for r in runs]) for k in runs[0]["metrics"]}
    types = sorted({t for r in runs for t in r["per_type_ap"]})
    per_type = {t: mean_std([r["per_type_ap"].get(t) for r in runs])["mean"] for t in types}
    return {**metrics, "per_type_ap": per_type}
