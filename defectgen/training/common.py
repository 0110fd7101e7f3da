"""Helpers shared by the GAN and encoder trainers: run folders, seeding, EMA, logging, progress."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from defectgen.errors import DataError
from defectgen.training.checkpoint import CKPT_NAME
from defectgen.training.dist import DistInfo


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of (run seed, step, rank).

    Reseeding torch per step makes z, noise and augmentation a pure function of the step, so a resumed run
    (and every rank of a DDP job) replays exactly.
    """
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def prepare_run_dir(out: str | os.PathLike[str], resume: bool) -> Path:
    """Create the run folder; refuse to overwrite a finished/ongoing run unless resuming (and vice versa)."""
    out = Path(out)
    ckpt = out / CKPT_NAME
    if resume and not ckpt.is_file():
        msg = f"--resume: no checkpoint in {out} (expected {ckpt})"
        raise DataError(msg)
    if not resume and ckpt.is_file():
        msg = f"{out} already holds a run (checkpoint.safetensors); pass --resume or choose another --out"
        raise DataError(msg)
    out.mkdir(parents=True, exist_ok=True)
    return out


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    """EMA: ema = beta * ema + (1 - beta) * model for parameters; buffers (w_avg, const noise) are copied."""
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(p.detach(), 1.0 - beta)
    for be, b in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(b)


def set_trainable(module: torch.nn.Module, flag: bool) -> None:
    # frozen weights also switch nets/ops.py to its export-ready adjoint convs (no weight grads computed)
    module.requires_grad_(flag)


class RunLogger:
    """log.jsonl (window means every `every` steps) + a tqdm bar with ETA on rank 0; silent elsewhere."""

    def __init__(self, out: Path, info: DistInfo, *, total: int, start: int, every: int, progress: bool,
                 desc: str) -> None:
        self.path = out / "log.jsonl"
        self.info, self.every = info, every
        self.window: dict[str, list[float]] = {}
        self.t0, self.start = time.perf_counter(), start
        self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, unit="step",
                        disable=not (info.is_main and progress))

    def step(self, step: int, stats: dict[str, float], images_per_step: int) -> None:
        for k, v in stats.items():
            self.window.setdefault(k, []).append(v)
        self.bar.update(1)
        if step % self.every and step != self.bar.total:
            return
        means = {k: float(np.mean(v)) for k, v in self.window.items()}
        self.window.clear()
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if k.startswith("loss")}, refresh=False)
        if self.info.is_main:
            elapsed = time.perf_counter() - self.t0
            line = {"step": step, "kimg": round(step * images_per_step / 1000, 3), "time_s": round(elapsed, 2),
                    "steps_per_s": round((step - self.start) / max(elapsed, 1e-9), 4), **means}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")

    def close(self) -> float:
        self.bar.close()
        return time.perf_counter() - self.t0


def run_budgeted(step: Callable[[], dict[str, float]], at: Callable[[], int], log: RunLogger, cfg: Any, *,
                 sample: Callable[[], None], save: Callable[[], None]) -> list[dict[str, float]]:
    """Call `step` until `cfg.steps` or `cfg.minutes` of wall time; returns its stats, one dict per step.

    `sample` runs every `cfg.sample_every` steps and `save` every `cfg.ckpt_every`, and both once more at the
    last step, so a run stopped by its time budget still ends on a checkpoint and a final grid.
    """
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    while at() < cfg.steps:
        history.append(step())
        log.step(at(), history[-1], cfg.batch)
        over = cfg.minutes is not None and time.perf_counter() - t0 > cfg.minutes * 60
        last = over or at() == cfg.steps
        if at() % cfg.sample_every == 0 or last:
            sample()
        if at() % cfg.ckpt_every == 0 or last:
            save()
        if over:
            break
    return history


def write_config(out: Path, info: DistInfo, obj: dict[str, Any]) -> None:
    if info.is_main:
        from defectgen.training.report import write_json

        write_json(out / "config.json", obj)
