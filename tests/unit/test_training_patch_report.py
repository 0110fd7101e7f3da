"""The patch run report's black and out-of-range shares: defect pixels at the 8-bit floor or beyond the data."""

from __future__ import annotations

import math

import torch

from defectgen.training.patch_report import black_share, out_of_range_share


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


def test_out_of_range_share_counts_mask_pixels_with_any_channel_beyond_the_data_range():
    image = torch.zeros(1, 3, 4, 4)
    image[0, 2, 0, 0] = -1.2  # blue far below black: out
    image[0, 0, 0, 1] = 1.5  # red far above white: out
    image[0, :, 0, 2] = -1.04  # within the tolerance: in
    image[0, :, 0, 3] = 1.0  # white: in
    image[0, 1, 3, 3] = 3.0  # out, but outside the mask
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :2, :] = 1.0  # 8 pixels
    assert out_of_range_share(image, mask) == 2 / 8
    assert out_of_range_share(image.clamp(-1, 1), mask) == 0.0
    assert math.isnan(out_of_range_share(image, torch.zeros(1, 1, 4, 4)))
