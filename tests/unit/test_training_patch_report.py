"""The patch run report's black and out-of-range shares (defect pixels at the 8-bit floor or beyond the data) and
the mean colours its colour modes start from."""

from __future__ import annotations

import math

import numpy as np
import torch

from defectgen.training.patch_report import black_share, mean_colours, out_of_range_share, outside_range_share


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


def test_outside_range_share_counts_mask_pixels_with_any_channel_outside_the_types_range():
    lo, hi = torch.tensor([-0.5, -0.5, -0.9]), torch.tensor([0.5, 0.5, 0.0])
    image = torch.zeros(1, 3, 4, 4)
    image[0, 2, 0, 0] = 0.2  # blue above its bound: out
    image[0, 0, 0, 1] = -0.6  # red below its bound: out
    image[0, :, 0, 2] = torch.tensor([0.5, -0.5, -0.9])  # on the bounds: in
    image[0, 1, 3, 3] = 3.0  # out, but outside the mask
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :2, :] = 1.0  # 8 pixels
    assert outside_range_share(image, mask, lo, hi) == 2 / 8
    assert outside_range_share(image, mask, lo - 1, hi + 1) == 0.0
    assert math.isnan(outside_range_share(image, torch.zeros(1, 1, 4, 4), lo, hi))


def _windows(colours: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One 4x4 window per colour: that colour inside a 2x2 mask, mid grey around it."""
    image = torch.zeros(len(colours), 3, 4, 4)
    for i, c in enumerate(colours):
        image[i, :, 1:3, 1:3] = torch.tensor(c, dtype=torch.float32)[:, None, None] / 127.5 - 1.0
    mask = torch.zeros(len(colours), 1, 4, 4)
    mask[:, :, 1:3, 1:3] = 1.0
    return image, mask


def test_mean_colours_average_the_masked_pixels_only():
    image, mask = _windows([(200, 20, 30), (20, 90, 40)])
    np.testing.assert_allclose(mean_colours(image, mask), [[200, 20, 30], [20, 90, 40]], atol=1e-3)
    assert np.isnan(mean_colours(image, mask * 0)).all()
