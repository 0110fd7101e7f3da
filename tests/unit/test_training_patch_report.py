"""The patch run report's black and out-of-range shares (defect pixels at the 8-bit floor or beyond the data) and
colour modes (do G's defects come in the real defects' colours)."""

from __future__ import annotations

import math

import numpy as np
import torch

from defectgen.training.patch_report import black_share, colour_modes, mean_colours, out_of_range_share


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


def test_colour_modes_see_a_dropped_mode():
    red, green, dark = (150, 25, 30), (25, 85, 45), (22, 20, 24)
    real = mean_colours(*_windows([red] * 10 + [green] * 5 + [dark] * 5))
    only_red = colour_modes(real, mean_colours(*_windows([(140, 30, 35)] * 20)), k=3)
    assert only_red["real_share"] == [0.5, 0.25, 0.25]
    assert only_red["centres"][0] == list(red) and only_red["sample_share"] == [1.0, 0.0, 0.0]
    assert only_red["coverage"] == 0.5
    mixed = colour_modes(real, mean_colours(*_windows([red] * 2 + [green, dark])), k=3)
    assert mixed["coverage"] == 1.0


def test_colour_modes_are_at_most_the_distinct_real_colours_and_skip_empty_masks():
    real = mean_colours(*_windows([(150, 25, 30)] * 6))
    image, mask = _windows([(150, 25, 30), (25, 85, 45)])
    mask[1] = 0.0  # G drew no defect in this window
    got = colour_modes(real, mean_colours(image, mask), k=4)
    assert len(got["centres"]) == 1 and got["sample_share"] == [1.0] and got["coverage"] == 1.0
    none = colour_modes(real, mean_colours(image, mask * 0))  # G drew nothing: the real modes, no coverage
    assert none["real_share"] == [1.0] and none["sample_share"] == [0.0] and math.isnan(none["coverage"])
