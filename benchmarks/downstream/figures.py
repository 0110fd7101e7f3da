"""Diversity, memorisation and alignment of every source, with the real-trained segmenter as feature space, and
its colour coverage of the held-out defects.

Runs once after the segmenters, in the main process, from the arrays in the work folder (definitions in
`features.py`). The held-out real defects get the same diversity and memorisation as a reference: a generator
that makes new defects rather than copies should sit near them, copy-paste near a memorisation of 0. Colour
coverage (`defectgen.measure.colour_modes`): per type, the held-out defects' mean colours are clustered into
modes, and the source's defects are counted per nearest mode; 1 = the source shows each colour of the test
defects as often as the test has it. A diagnostic of the test set, never a training signal; sources whose
anomalies have no defect type (cut-paste, DRAEM) get none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectgen import GOOD
from defectgen.measure.colour_modes import colour_modes, mean_colours

from . import features
from .segmenter import SegConfig, UNet


def _load_net(path: Path, cfg: SegConfig) -> UNet:
    net = UNet(cfg.width, cfg.depth)
    net.load_state_dict(torch.load(path, map_location="cpu"))
    return net.eval()


def _arrays(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.load(folder / f"{name}_{k}.npy") for k in ("images", "masks", "types"))  # type: ignore[return-value]


def _figures(net: UNet, images: np.ndarray, masks: np.ndarray, types: np.ndarray, bank: np.ndarray,
             threshold: float | None) -> dict[str, Any]:
    crops = features.crops_by_type(images, masks, types.tolist())
    div, per_type = features.diversity(net, crops)
    out = {"diversity": div, "diversity_by_type": per_type, "memorisation": features.memorisation(net, crops, bank),
           "crops": {t: len(c) for t, c in crops.items()}}
    if threshold is not None:
        out["alignment"] = features.alignment(net, images, masks, threshold)
    return out


def colour_coverage(images: np.ndarray, masks: np.ndarray, types: np.ndarray,
                    reference: dict[str, np.ndarray]) -> tuple[float, dict[str, float]]:
    """(mean over types, per type) coverage of the reference defects' colour modes by a set's defects."""
    colours = mean_colours(images, masks)
    per_type = {t: colour_modes(ref, colours[types == t])["coverage"] for t, ref in reference.items()}
    known = [v for v in per_type.values() if not np.isnan(v)]
    return (float(np.mean(known)) if known else float("nan")), per_type


def source_figures(names: list[str], folder: Path, cfg: SegConfig) -> tuple[dict[str, dict[str, Any]],
                                                                          dict[str, Any]]:
    """Per source {diversity, memorisation, alignment, ...}; and the reference (threshold, held-out real)."""
    torch.set_num_threads(1)
    net = _load_net(folder / "real_net.pt", cfg)
    real_images, real_masks, real_types = _arrays(folder, "real")
    bank = features.bank_embedding(net, features.crops_by_type(real_images, real_masks, real_types.tolist()))
    good = np.load(folder / "good_images.npy")
    thr_images, thr_masks = features.threshold_set((real_images, real_masks), good)
    threshold = features.alignment_threshold(net, thr_images, thr_masks)
    ev = {k: np.load(folder / f"eval_{k}.npy") for k in ("images", "masks", "types")}
    defective = ev["types"] != GOOD
    ev_colours = mean_colours(ev["images"][defective], ev["masks"][defective])
    ev_types = ev["types"][defective]
    test_colours = {t: ev_colours[ev_types == t] for t in sorted(set(ev_types.tolist()))}
    figs = {}
    for n in names:  # each source's arrays are read once
        arrays = _arrays(folder, n)
        figs[n] = _figures(net, *arrays, bank, threshold)
        figs[n]["colour_coverage"], figs[n]["colour_coverage_by_type"] = colour_coverage(*arrays, test_colours)
    held_out = _figures(net, ev["images"][defective], ev["masks"][defective], ev["types"][defective], bank, None)
    reference = {"alignment_threshold": threshold, "held_out_real": held_out,
                 "feature_space": "down path of the real source's seed-0 segmenter", "crop_px": features.CROP,
                 "crops_per_type": features.PER_TYPE}
    return figs, reference
