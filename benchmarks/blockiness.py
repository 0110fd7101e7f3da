"""Block artefacts on a high-resolution part: are generated defects made of upscaled blocks?

Runs `defectgen run` on the shipped 512 px example part (random targets of every type, `--variants K` on each)
and compares, inside each target mask, the share of 2x2 pixel blocks whose four pixels are identical with the
same share in the input image at the same place. Upscaling a model-resolution crop by nearest neighbour or a
low-resolution paste shows up as many such flat blocks; a generator that draws at the data's scale does not.

    python benchmarks/blockiness.py --bundle BUNDLE     # 16 targets x 4 variants; --scale: the bundle's x 4
    python benchmarks/blockiness.py --quick --bundle BUNDLE --out-dir /tmp/q     # smoke test

Writes `benchmarks/results/blockiness.{json,md,png}` (the png: a zoom on the defects with the most flat blocks)
and `blockiness_sheet.png` (the run's contact sheet).
"""

from __future__ import annotations

import argparse
import json
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
from defectgen.data.imageio import read_image, read_mask
from defectgen.measure.stamp import machine_stamp

PART = EXAMPLES_DIR / "part_4_512px.png"
PART_ZOOM = 4  # the part is rendered at 4x the procedural set's resolution


def part_scale(bundle: Path | None) -> float | None:
    """`run --scale` for the part: the bundle's data px per model px times the part's zoom (None: whole-part)."""
    from defectgen.runtime.bundle import Bundle

    patch = Bundle.load(bundle, verify=False).patch
    return None if patch is None else patch.scale * PART_ZOOM


CLIP_LEVELS = 2  # a channel within this many levels of 0 or 255 is clipped: no grain survives there


def _flat_and_inside(image: np.ndarray, mask: np.ndarray, unclipped: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per 2x2 block (indexed by its top-left pixel): whether its 4 pixels are identical (all channels; with
    `unclipped`, and none of its channels at the 8-bit floor or ceiling), and whether it lies fully inside `mask`."""
    a, b, c, d = image[:-1, :-1], image[:-1, 1:], image[1:, :-1], image[1:, 1:]
    flat = ((a == b) & (a == c) & (a == d)).all(axis=-1) if image.ndim == 3 else (a == b) & (a == c) & (a == d)
    if unclipped:
        low, high = (a, a) if a.ndim == 2 else (a.min(axis=-1), a.max(axis=-1))
        flat &= (low > CLIP_LEVELS) & (high < 255 - CLIP_LEVELS)
    inside = (mask[:-1, :-1] > 0) & (mask[:-1, 1:] > 0) & (mask[1:, :-1] > 0) & (mask[1:, 1:] > 0)
    return flat, inside


def flat_block_share(image: np.ndarray, mask: np.ndarray, *, unclipped: bool = False) -> float:
    """Share of the 2x2 blocks lying fully inside `mask` whose 4 pixels are identical (all channels).

    `unclipped`: count only flat blocks none of whose channels sits at the 8-bit floor or ceiling (a pixel
    drawn at pure black is flat whatever its resolution; an upscaled block is flat anywhere).
    """
    flat, inside = _flat_and_inside(image, mask, unclipped)
    return float(flat[inside].mean()) if inside.any() else float("nan")


def flat_blocks(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """HxW bool: the pixels of the flat 2x2 blocks lying fully inside `mask` (what `flat_block_share` counts)."""
    flat, inside = _flat_and_inside(image, mask, unclipped=False)
    flat &= inside
    out = np.zeros(mask.shape, bool)
    for dy in (0, 1):
        for dx in (0, 1):
            out[dy:dy + flat.shape[0], dx:dx + flat.shape[1]] |= flat
    return out


ZOOM_SIDE = 64  # px of the part around a defect in the zoom figure


def zoom_crop(mask: np.ndarray) -> tuple[slice, slice]:
    """A ZOOM_SIDE square around the mask's centre, inside the image."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    y0 = int(np.clip((ys.min() + ys.max()) // 2 - ZOOM_SIDE // 2, 0, h - ZOOM_SIDE))
    x0 = int(np.clip((xs.min() + xs.max()) // 2 - ZOOM_SIDE // 2, 0, w - ZOOM_SIDE))
    return slice(y0, y0 + ZOOM_SIDE), slice(x0, x0 + ZOOM_SIDE)


def zoom_figure(crops: list[dict[str, Any]]) -> Any:
    """Input, output and output with its flat blocks in red, at the part's own pixels (nearest, no smoothing)."""
    fig, axes = common.new_figure(len(crops), 3, size=(7.5, 2.5 * len(crops) + 0.4))
    axes = np.asarray(axes).reshape(len(crops), 3)
    for row, c in zip(axes, crops, strict=True):
        marked = c["output"].copy()
        marked[c["flat"]] = (255, 0, 0)
        for ax, img, title in zip(row, (c["input"], c["output"], marked),
                                  (f"input ({c['type']} {c['index']})", "defectgen run",
                                   f"pixels of flat 2x2 blocks (red): {int(c['flat'].sum())}"), strict=True):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def zoom_rows(rows: list[dict[str, Any]], crops: dict[int, dict[str, Any]], most: int = 6) -> list[dict[str, Any]]:
    """The defects with the most flat blocks first, then one of each type not shown yet (at most `most`)."""
    worst = [r["index"] for r in sorted(rows, key=lambda r: -r["generated"]) if r["generated"] > 0][:most]
    for t in dict.fromkeys(r["type"] for r in rows):
        first = next(r["index"] for r in rows if r["type"] == t)
        if len(worst) < most and not any(crops[i]["type"] == t for i in worst):
            worst.append(first)
    return [crops[i] for i in worst]


def measure(args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], float, Path, dict[int, Any]]:
    """Run `defectgen run` on the part; per finished job, the flat-block shares inside its mask (and zoom crops)."""
    images, out = tmp / "images", tmp / "out"
    images.mkdir()
    shutil.copy(PART, images / PART.name)
    cmd = [sys.executable, "-m", "defectgen.cli", "run", "--images", str(images), "--random-masks", str(args.masks),
           "--variants", str(args.variants), "--out", str(out), "--seed", str(args.seed), "--backend", "ort-cpu",
           *(["--bundle", str(args.bundle)] if args.bundle else []),
           *(["--scale", str(args.scale)] if args.scale else []), *args.run_args.split()]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"defectgen run failed:\n{proc.stderr[-2000:]}")
    source, rows, crops = read_image(PART), [], {}
    for line in (out / "jobs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["status"] == "ok":
            img, mask = read_image(out / rec["outputs"]["image"]), read_mask(out / rec["outputs"]["mask"])
            rows.append({"index": rec["index"], "type": rec["type"], "variant": rec["variant"],
                         "mask_px": int(mask.sum()), "window": rec["window"],
                         "generated": flat_block_share(img, mask), "input": flat_block_share(source, mask),
                         "generated_unclipped": flat_block_share(img, mask, unclipped=True)})
            box = zoom_crop(mask)
            crops[rec["index"]] = {"index": rec["index"], "type": rec["type"], "input": source[box],
                                   "output": img[box], "flat": flat_blocks(img, mask)[box]}
    return rows, time.perf_counter() - t0, out / "contact_sheet.png", crops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle (default: the embedded one)")
    ap.add_argument("--scale", type=float, default=None, help="`run --scale` (default: the bundle's scale x 4, the "
                                                             "part is rendered at 4x the procedural set's scale)")
    ap.add_argument("--masks", type=int, default=16, help="random targets (cycling over the defect types)")
    ap.add_argument("--variants", type=int, default=4, help="`run --variants K`")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-args", default="", help="more `defectgen run` options, one string")
    ap.add_argument("--quick", action="store_true", help="one target, two variants")
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.masks, args.variants = 1, 2
    if args.scale is None:
        args.scale = part_scale(args.bundle)
    started, stamp = time.time(), machine_stamp()
    with tempfile.TemporaryDirectory() as tmp:
        rows, seconds, sheet, crops = measure(args, Path(tmp))
        out = common.results_dir(args.quick, args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if sheet.is_file():
            shutil.copy(sheet, out / "blockiness_sheet.png")
    gen = float(np.nanmean([r["generated"] for r in rows])) if rows else None
    inp = float(np.nanmean([r["input"] for r in rows])) if rows else None
    unclipped = float(np.nanmean([r["generated_unclipped"] for r in rows])) if rows else None
    summary = {"flat_2x2_share_generated": gen, "flat_2x2_share_input": inp,
               "flat_2x2_share_generated_not_at_black_or_white": unclipped,
               "flat_2x2_percent_generated": None if gen is None else 100.0 * gen,
               "no_more_blocks_than_input": None if gen is None else bool(gen <= inp), "defects": len(rows),
               "defects_with_flat_blocks": sum(r["generated"] > 0 for r in rows),
               "run_seconds": round(seconds, 1)}
    table = common.md_table(["job", "type", "variant", "mask px", "window scale", "flat 2x2: generated",
                             "of which not at black/white", "input"],
                            [[r["index"], r["type"], r["variant"], r["mask_px"], (r["window"] or {}).get("scale"),
                              common.fmt(r["generated"], 4), common.fmt(r["generated_unclipped"], 4),
                              common.fmt(r["input"], 4)] for r in rows])
    paths = common.write_results("blockiness", summary=summary, data={"rows": rows, "part": PART.name},
                                 tables=[("Per defect", table)],
                                 figure=zoom_figure(zoom_rows(rows, crops)) if rows else None, quick=args.quick,
                                 out_dir=args.out_dir,
                                 notes=["flat 2x2 share: of the 2x2 pixel blocks fully inside a target mask, the "
                                        "share whose four pixels are identical; upscaled crops raise it",
                                        f"not at black/white: flat blocks with every channel within "
                                        f"{CLIP_LEVELS + 1}..{254 - CLIP_LEVELS} (where grain can survive)",
                                        "contact sheet of the run: blockiness_sheet.png; the figure shows "
                                        f"{ZOOM_SIDE} px of the part around the defects with the most flat blocks "
                                        "(then one of each type), at the part's own pixels"],
                                 machine=stamp, started=started)
    print(paths["md"].read_text())


if __name__ == "__main__":
    main()
