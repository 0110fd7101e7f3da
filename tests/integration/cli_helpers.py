"""Shared helpers of the `defectgen run` integration tests: input folders, CLI invocation, reading the outputs
(the toy bundles come from the `run_bundle` fixture)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from defectgen.cli import app
from defectgen.data.imageio import write_image, write_mask

__all__ = ["invoke", "jobs_log", "make_images", "pngs"]


def make_images(folder: Path, n: int, *, h: int = 40, w: int = 56, seed: int = 0,
                masks: Path | None = None) -> list[Path]:
    """`n` textured RGB images (and, with `masks`, a blob mask per image with the same stem)."""
    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        base = rng.integers(40, 200, 3)
        img = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        paths.append(write_image(folder / f"part_{i:02d}.png", img))
        if masks is not None:
            cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
            m = ((yy - cy) ** 2 / (h / 8) ** 2 + (xx - cx) ** 2 / (w / 7) ** 2 <= 1).astype(np.uint8)
            write_mask(masks / f"part_{i:02d}.png", m)
    return paths


def invoke(*args: object) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def jobs_log(out: Path) -> list[dict[str, Any]]:
    """Every line of `OUT/jobs.jsonl`, parsed."""
    path = out / "jobs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def pngs(out: Path) -> list[Path]:
    """All visible PNGs under `out` (temp files are hidden), sorted."""
    return sorted(p for p in out.rglob("*.png") if not p.name.startswith("."))
