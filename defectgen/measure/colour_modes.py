"""Do synthetic defects come in the real defects' colours, in the same proportions?

A few-shot GAN drops colour modes without any loss noticing (the layered default draws two thirds of its prints
in the two red modes, which hold half of the held-in prints), and a detector trained on its output then misses
the dropped colours. Here a set of defects is summarised by each defect's mean colour inside its mask; the
reference set's colours are clustered into a few modes (k-means, OpenCV) and every defect of the other set
counts for its nearest mode. Used by the patch GAN's run report (G's samples against the held-in windows) and
by the downstream protocol (each source's defects against the held-out ones). Torch-free.
"""

from __future__ import annotations

from typing import Any

import numpy as np

COLOUR_MODES = 4  # modes of a reference set (fewer when it has fewer distinct colours)


def mean_colours(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, 3) float32: each image's mean colour inside its mask, in the images' units (NaN rows: empty mask).

    `images` (N, H, W, 3), `masks` (N, H, W) or (N, H, W, 1), nonzero = defect.
    """
    m = (np.asarray(masks).reshape(np.shape(images)[:3]) > 0).astype(np.float64)
    total = np.einsum("nhwc,nhw->nc", np.asarray(images, np.float64), m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / m.sum(axis=(1, 2))[:, None]).astype(np.float32)


def colour_modes(reference: np.ndarray, sample: np.ndarray, k: int = COLOUR_MODES, seed: int = 0) -> dict[str, Any]:
    """The reference colours' modes, and the share of the reference and of the sample nearest each.

    `reference`, `sample`: (N, 3) mean colours (`mean_colours`; NaN rows are skipped). `coverage` is the overlap
    of the two mixtures, sum over modes of min(reference share, sample share): 1 = the same proportions, NaN when
    the sample is empty. Modes are ordered by their reference share, commonest first.
    """
    import cv2

    reference = reference[~np.isnan(reference).any(axis=1)]
    sample = sample[~np.isnan(sample).any(axis=1)]
    k = min(k, len(np.unique(reference.round(), axis=0)))
    if k < 1:
        return {"centres": [], "real_share": [], "sample_share": [], "coverage": float("nan")}
    cv2.setRNGSeed(seed)
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 0.1)
    _, _, centres = cv2.kmeans(reference.astype(np.float32), k, None, crit, 4, cv2.KMEANS_PP_CENTERS)

    def shares(colours: np.ndarray) -> np.ndarray:
        nearest = ((colours[:, None] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        return np.bincount(nearest, minlength=k) / max(len(colours), 1)

    r, g = shares(reference), shares(sample)
    order = np.argsort(-r, kind="stable")
    coverage = round(float(np.minimum(r, g).sum()), 3) if len(sample) else float("nan")
    return {"centres": centres[order].round().astype(int).tolist(), "real_share": r[order].round(3).tolist(),
            "sample_share": g[order].round(3).tolist(), "coverage": coverage}
