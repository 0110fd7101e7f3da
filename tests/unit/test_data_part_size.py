"""The part's size (`data.part_size`): what a patch bundle records of its training parts and `run --scale auto`
measures on each image. A disc of known radius must measure about sqrt(pi) r at any resolution, so the same
part at two zooms gives sizes in the zoom's ratio (above 512 px on a shrunk copy, scaled back)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from defectgen.data.imageio import write_image
from defectgen.data.part_size import measure_part_size, median_part_size, part_size
from defectgen.errors import DataError


def disc(side: int, radius: float, seed: int = 0) -> np.ndarray:
    """A bright, grainy disc of `radius` px centred on a dark, noisy `side` x `side` background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    on = np.hypot(yy - side / 2, xx - side / 2) <= radius
    img = np.where(on[..., None], [170.0, 120.0, 70.0], [32.0, 32.0, 30.0]) + rng.normal(0, 4, (side, side, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("side", "radius"), [(128, 30), (512, 120), (1024, 240)])
def test_a_disc_measures_its_area(side: int, radius: float) -> None:
    assert measure_part_size(disc(side, radius)) == pytest.approx(math.sqrt(math.pi) * radius, rel=0.04)


def test_the_same_part_at_two_zooms_gives_sizes_in_the_zooms_ratio() -> None:
    small, large = measure_part_size(disc(128, 30)), measure_part_size(disc(512, 120))
    assert large / small == pytest.approx(4.0, rel=0.02)
    huge = measure_part_size(disc(1024, 240))  # measured on a 512 px copy, scaled back to its own pixels
    assert huge / large == pytest.approx(2.0, rel=0.02)
    assert measure_part_size(disc(512, 60)) / large == pytest.approx(0.5, rel=0.03)  # a smaller part, same image


def test_part_size_scales_a_mask_found_on_a_shrunk_copy_back() -> None:
    part = np.zeros((50, 100), np.uint8)
    part[10:30, 20:60] = 1  # 800 px at half size: 3200 px at full size
    assert part_size(part, (100, 200)) == pytest.approx(math.sqrt(3200))
    assert part_size(part, (50, 100)) == pytest.approx(math.sqrt(800))


def test_median_over_files_and_no_files(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{r}.png", disc(128, r, seed=r)) for r in (20, 30, 40)]
    assert median_part_size(paths) == pytest.approx(measure_part_size(disc(128, 30, seed=30)))
    with pytest.raises(DataError, match="no good training images"):
        median_part_size([])
