"""How large the part is in an image, in the image's own pixels: the one measure a patch bundle records for its
training parts (`defectgen export`) and `defectgen run --scale auto` takes on each image, so that a part taken at
another zoom gets windows (and defects) of the same size *relative to the part* as the training parts had.

The measure is the square root of the area of `masks.part_mask`, found on the image shrunk to at most
`MEASURE_MAX_SIDE` px and scaled back to the image's pixels. `part_mask` errs on the side of missing dim bits of a
part (a shadowed side), so the value is not the part's true size; what matters is that training and run time
measure alike, which is why both call this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import cv2
import numpy as np

from defectgen.data.imageio import read_image
from defectgen.data.masks import part_mask
from defectgen.errors import DataError

PART_SIZE_RULE = "sqrt_part_area"  # the manifest's name for this measure (docs/bundle.md, `patch.part_size_rule`)
MEASURE_MAX_SIDE = 512  # the part region needs no more (and costs 1.6 s at 1024 px against 0.14 s at 512 px)


def shrink(image: np.ndarray, max_side: int = MEASURE_MAX_SIDE) -> np.ndarray:
    """`image` shrunk (area interpolation) so its longer side is at most `max_side` px; as is when it already is."""
    h, w = image.shape[:2]
    f = min(1.0, max_side / max(h, w))
    if f == 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def part_size(part: np.ndarray, image_hw: tuple[int, int]) -> float:
    """The square root of the area of `part` (a {0,1} mask of the image, maybe found on a shrunk copy), in px of
    an image of `image_hw` (H, W): the area is scaled by the ratio of the two images' areas.
    """
    (h, w), (ph, pw) = image_hw, part.shape[:2]
    return math.sqrt(float(np.count_nonzero(part)) * (h * w) / (ph * pw))


def measure_part_size(image: np.ndarray) -> float:
    """The part's size in `image` (uint8 HxWx3 RGB), in its pixels: `part_size(part_mask(shrink(image)))`."""
    return part_size(part_mask(shrink(image)), image.shape[:2])


def median_part_size(paths: Iterable[str | os.PathLike[str]]) -> float:
    """The median `measure_part_size` over image files (a dataset's `train/good`), in data px.

    Raises:
        DataError: no files given, or a file that cannot be read.
    """
    sizes = [measure_part_size(read_image(p)) for p in paths]
    if not sizes:
        msg = "cannot measure the training parts' size: no good training images"
        raise DataError(msg)
    return float(np.median(sizes))
