"""The patch run report's black share: how many of a defect's pixels sit at the 8-bit floor."""

from __future__ import annotations

import math

import torch

from defectgen.training.patch_report import black_share


def test_black_share_counts_mask_pixels_black_in_every_channel():
    image = torch.zeros(1, 3, 4, 4)  # mid grey
    image[0, :, 0, :2] = -1.0  # two pixels at pure black
    image[0, :, 1, 0] = -1.0 + 4 / 127.5  # 4 of 255 in every channel: black
    image[0, :, 1, 1] = -1.0 + 6 / 127.5  # 6 of 255: not black
    image[0, 0, 1, 2] = -1.0  # red channel at 0, the others grey: not black
    image[0, :, 3, 3] = -1.0  # black, but outside the mask
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :2, :] = 1.0  # 8 pixels
    assert black_share(image, mask) == 3 / 8
    assert black_share(image * 0, mask) == 0.0
    assert math.isnan(black_share(image, torch.zeros(1, 1, 4, 4)))
