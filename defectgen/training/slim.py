"""Copy a finished run into a small, shippable folder (what `models/default/` holds).

    python -m defectgen.training.slim RUN_DIR DST_DIR

writes DST_DIR/checkpoint.safetensors with the nets only (GAN runs: G, G_ema, D; encoder runs: E, D; patch runs:
G_ema, D; patch-encoder runs: E), no
optimizer or RNG state (about a third of the full size), plus config.json, report.json, report.png and the
last sample grid. A slim checkpoint loads with `load_generator` / `load_encoder` / `load_discriminator`, and
an encoder can be trained against it, but `--resume` refuses it (no optimizer state to resume from).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from defectgen.errors import DataError
from defectgen.training.checkpoint import (
    CKPT_NAME,
    load_generator,
    read_checkpoint,
    resolve_checkpoint,
    slim_checkpoint,
)

KEEP = {"gan": ("G", "G_ema", "D"), "encoder": ("E", "D"), "patch": ("G_ema", "D"), "patch_encoder": ("E",)}
SIDE_FILES = ("config.json", "report.json", "report.png", "held_in.json")


def export_slim(run: str | os.PathLike[str], dst: str | os.PathLike[str]) -> list[Path]:
    """Write the slim copy of run folder `run` into `dst`; returns the files written."""
    run, dst = Path(run), Path(dst)
    ckpt = resolve_checkpoint(run)
    kind = read_checkpoint(ckpt).meta.get("kind")
    if kind not in KEEP:
        msg = f"unknown checkpoint kind {kind!r}: {ckpt}"
        raise DataError(msg)
    dst.mkdir(parents=True, exist_ok=True)
    written = [slim_checkpoint(ckpt, dst / CKPT_NAME, keep=KEEP[kind])]
    for name in SIDE_FILES:
        if (run / name).is_file():
            written.append(Path(shutil.copy2(run / name, dst / name)))
    grids = sorted((run / "samples").glob("*.png"))
    if grids:
        report = run / "report.png"
        same = report.is_file() and grids[-1].read_bytes() == report.read_bytes()  # a GAN's last grid = report
        if not same:
            written.append(Path(shutil.copy2(grids[-1], dst / f"samples_{grids[-1].name}")))
    if kind == "gan":  # re-render with this version's grid code: fixed z, one row per type, image | mask > 0.5
        from defectgen.training.gan import sample_grid
        from defectgen.training.report import write_grid

        ck = read_checkpoint(ckpt)
        G = load_generator(ckpt)
        per_type = ck.configs.get("train_gan", {}).get("grid_per_type", 6)
        seed = ck.configs.get("train_gan", {}).get("seed", 0)
        written.append(write_grid(dst / "samples.png", sample_grid(G, ck.meta["defect_types"], per_type, seed,
                                                                    "cpu")))
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m defectgen.training.slim", description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run folder (GAN or encoder)")
    ap.add_argument("dst", help="folder to write")
    args = ap.parse_args(argv)
    for p in export_slim(args.run, args.dst):
        print(f"{p}  ({p.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":  # pragma: no cover
    main()
