"""The figures of a downstream run: the summary plot and the contact sheets of each source."""

from __future__ import annotations

import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.data.contact import contact_sheet
from defectgen.data.imageio import atomic_write_bytes, read_image, read_mask

from .sources import Sample

METRICS = ("pixel_ap", "pixel_auroc", "f1_max", "image_auroc")
LABELS = {"pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP", "f1_max": "F1-max", "image_auroc": "image AUROC"}
FIGURES = ("diversity", "memorisation", "alignment")
DEFECTGEN_ROWS = ("defectgen", "defectgen_g1", "defectgen_g0", "defectgen_surface", "mix")  # rows using the bundle


def row_label(name: str, results: dict[str, Any]) -> str:
    """The source's name, tagged "(not fair)" where it used a bundle that is not known to be fair."""
    fair = results["protocol"]["defectgen_bundle"].get("fair")
    return name + (" (not fair)" if name in DEFECTGEN_ROWS and fair is False else "")


def _val(x: Any) -> float:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else 0.0


def _bars(ax: Any, groups: list[str], names: list[str], value: Any, err: Any = None,
          labels: dict[str, str] | None = None) -> None:
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        xs = np.arange(len(groups)) + (k - (len(names) - 1) / 2) * width
        ax.bar(xs, [value(name, g) for g in groups], width, label=(labels or {}).get(name, name),
               yerr=[err(name, g) for g in groups] if err else None, capsize=2, error_kw={"elinewidth": 0.8})


def plot(results: dict[str, Any], path: Path) -> Path:
    """Left: the four metrics per source, mean over seeds with std error bars; right: the feature-space figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = results["summary"]
    names = list(summ)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    _bars(ax, list(METRICS), names, lambda n, m: 100 * _val(summ[n][m]["mean"]),
          lambda n, m: 100 * _val(summ[n][m]["std"]), {n: row_label(n, results) for n in names})
    ax.set_xticks(np.arange(len(METRICS)), [LABELS[m] for m in METRICS])
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel(f"score ×100, mean ± std over {len(results['protocol']['seeds'])} segmenter seeds")
    ax.legend(fontsize=7, loc="upper center", ncol=4)
    ax.set_title(f"{results['protocol']['data']['name']} ({results['mode']})", fontsize=9)
    _bars(ax2, list(FIGURES), names, lambda n, f: _val(summ[n][f]))
    ref = results.get("reference", {}).get("held_out_real", {})
    for i, f in enumerate(FIGURES[:2]):
        if ref.get(f) is not None:
            ax2.hlines(ref[f], i - 0.45, i + 0.45, colors="k", linestyles="--", linewidth=1)
    ax2.set_xticks(np.arange(len(FIGURES)), ["diversity", "memorisation", "alignment IoU"])
    ax2.set_title("feature space of the real-trained segmenter (dashed: held-out real defects)", fontsize=8)
    quick = "QUICK smoke run · " if results.get("quick") else ""
    quick += "NOT FAIR defectgen rows · " if results["protocol"]["defectgen_bundle"].get("fair") is False else ""
    fig.text(0.01, 0.01, (quick + results["machine_line"])[:200], fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def source_sheet(samples: list[Sample], path: Path, per_type: int = 8) -> Path:
    """A contact sheet of a source: one row per type, its first `per_type` samples, masks outlined."""
    rows: dict[str, list] = defaultdict(list)
    for s in samples:
        if len(rows[s.type]) < per_type:
            img = read_image(s.image)
            rows[s.type].append((img, read_mask(s.mask, img.shape[:2]), f"{s.type} {Path(s.image).stem}"))
    return contact_sheet([rows[t] for t in sorted(rows)], path)


def zoom_sheet(samples: list[Sample], path: Path, n: int = 4, side: int = 40, scale: int = 4) -> Path:
    """Close-ups of the first `n` samples: good crop | output crop | |output − good| × 4 | label mask.

    What the segmenter is taught is easier to judge here than on a whole-image sheet: a defect that changes
    no pixels, or changes pixels outside its mask, shows at once.
    """
    import cv2

    rows = []
    for s in samples[:n]:
        img, good = read_image(s.image), read_image(s.good)
        mask = read_mask(s.mask, img.shape[:2])
        ys, xs = np.nonzero(mask)
        h, w = mask.shape
        y0 = int(np.clip(ys.mean() - side // 2, 0, max(0, h - side)))
        x0 = int(np.clip(xs.mean() - side // 2, 0, max(0, w - side)))

        def crop(a: np.ndarray, y0: int = y0, x0: int = x0) -> np.ndarray:
            c = a[y0:y0 + side, x0:x0 + side]
            return cv2.resize(c, (c.shape[1] * scale, c.shape[0] * scale), interpolation=cv2.INTER_NEAREST)

        diff = np.clip(np.abs(img.astype(np.int16) - good.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
        rows.append([(crop(good), None, "good"), (crop(img), None, f"{s.type} out"), (crop(diff), None, "|diff| x4"),
                     (crop(np.repeat(mask[..., None] * 255, 3, 2).astype(np.uint8)), None, "label")])
    return contact_sheet(rows, path)
