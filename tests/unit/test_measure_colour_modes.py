"""Colour modes: does a set of defects come in a reference set's colours, in the same proportions."""

from __future__ import annotations

import math

import numpy as np

from defectgen.measure.colour_modes import colour_modes, mean_colours

RED, GREEN, DARK = (150, 25, 30), (25, 85, 45), (22, 20, 24)


def _defects(colours: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """One 4x4 uint8 image per colour: that colour inside a 2x2 mask, grey around it."""
    images = np.full((len(colours), 4, 4, 3), 128, np.uint8)
    masks = np.zeros((len(colours), 4, 4), np.uint8)
    masks[:, 1:3, 1:3] = 1
    for i, c in enumerate(colours):
        images[i, 1:3, 1:3] = c
    return images, masks


def test_mean_colours_average_the_masked_pixels_only():
    images, masks = _defects([RED, GREEN])
    np.testing.assert_allclose(mean_colours(images, masks), [RED, GREEN])
    np.testing.assert_allclose(mean_colours(images, masks[..., None]), [RED, GREEN])  # (N, H, W, 1) masks too
    assert np.isnan(mean_colours(images, masks * 0)).all()


def test_colour_modes_see_a_dropped_mode():
    reference = mean_colours(*_defects([RED] * 10 + [GREEN] * 5 + [DARK] * 5))
    only_red = colour_modes(reference, mean_colours(*_defects([(140, 30, 35)] * 20)), k=3)
    assert only_red["real_share"] == [0.5, 0.25, 0.25]
    assert only_red["centres"][0] == list(RED) and only_red["sample_share"] == [1.0, 0.0, 0.0]
    assert only_red["coverage"] == 0.5
    mixed = colour_modes(reference, mean_colours(*_defects([RED] * 2 + [GREEN, DARK])), k=3)
    assert mixed["coverage"] == 1.0


def test_colour_modes_are_at_most_the_distinct_reference_colours_and_skip_empty_masks():
    reference = mean_colours(*_defects([RED] * 6))
    images, masks = _defects([RED, GREEN])
    masks[1] = 0  # no defect drawn in this one
    got = colour_modes(reference, mean_colours(images, masks), k=4)
    assert len(got["centres"]) == 1 and got["sample_share"] == [1.0] and got["coverage"] == 1.0
    none = colour_modes(reference, mean_colours(images, masks * 0))  # nothing drawn: the modes, no coverage
    assert none["real_share"] == [1.0] and none["sample_share"] == [0.0] and math.isnan(none["coverage"])
