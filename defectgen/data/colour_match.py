"""Colour match of a pasted defect to the surface it lands on.

numpy only, like the rest of `defectgen.data`.
"""

from __future__ import annotations

import numpy as np


def match_colour(pixels: np.ndarray, have: np.ndarray, want: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """Map each channel so that its level `have` lands on `want`, within [0, peak]: a gain toward black when
    darkening, toward white when brightening.

    Lighting scales colours, it does not offset them: a real hole's dark core taken from a brighter part and
    shifted by the surfaces' difference (60 grey levels on the 512 px example) went below black, and two thirds
    of it came out clipped, flat black. Scaled, the core stays darker than the surface in the same ratio and in
    range, so the grain added later survives in it.
    """
    px = np.asarray(pixels, np.float32)
    have, want = np.asarray(have, np.float32), np.asarray(want, np.float32)
    darker = px * (want / np.maximum(have, 1e-3))
    brighter = peak - (peak - px) * ((peak - want) / np.maximum(peak - have, 1e-3))
    return np.where(want <= have, darker, brighter).astype(np.float32)
