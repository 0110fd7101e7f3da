"""Labels stay on the part: a target the run draws (random, or G's own proposal) is cut to the part, and the
composite changes no pixel off the part; a mask the user gives is the user's and is kept as given."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from defectgen.api import Generator
from defectgen.data.masks import dilate, erode, part_mask
from defectgen.errors import JobError
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.jobs.compose import Crop
from defectgen.runtime.jobs.invert import InversionConfig
from defectgen.runtime.jobs.output import compose_output
from defectgen.runtime.jobs.prepare import Prepared
from defectgen.runtime.jobs.settings import RunSettings, resolve_settings
from defectgen.runtime.jobs.sources import JobSpec

R = 16


def disc_image(side: int = 64, radius: float = 20) -> tuple[np.ndarray, np.ndarray]:
    """(a bright grainy disc on a dark background, uint8 HxWx3; the disc, uint8 {0,1})."""
    rng = np.random.default_rng(side)
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    on = np.hypot(yy - side / 2, xx - side / 2) <= radius
    img = np.where(on[..., None], [170.0, 120.0, 70.0], [32.0, 32.0, 30.0]) + rng.normal(0, 4, (side, side, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), on.astype(np.uint8)


def _prepared(image: np.ndarray, target: np.ndarray, part: np.ndarray | None) -> Prepared:
    spec = JobSpec(index=0, key="k", id="0" * 16, seed=0, image=Path("x.png"),
                   mask=None if part is not None else Path("given.png"), defect_type="crack")
    crop = Crop.full(target.shape)
    small = image[:: image.shape[0] // R, :: image.shape[1] // R]
    good = small.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
    return Prepared(spec=spec, image=image, mask=target, crop=crop, good=good, mask_m=target[None, :R, :R],
                    stitched=good, guide=image, reference=None, part=part)


def _straddling_target(part: np.ndarray) -> np.ndarray:
    """A band across the part's rim: a third of it on the background."""
    target = np.zeros_like(part)
    target[26:38, 6:26] = 1
    assert (target & part).any() and (target & (1 - part)).sum() > 0.2 * target.sum()
    return target


@pytest.mark.parametrize("mask_mode", ["target", "generated"])
def test_a_drawn_target_across_the_rim_is_cut_to_the_part(mask_mode: str) -> None:
    image, part = disc_image()
    target = _straddling_target(part)
    logit = np.full((1, R, R), 4.0, np.float32)  # G's mask: on everywhere, background included
    black = np.full((3, R, R), -1.0, np.float32)
    settings = RunSettings(inversion=InversionConfig(), mask_mode=mask_mode, feather_px=1.0, detail=False)
    out, label = compose_output(_prepared(image, target, part), black, logit, settings, R, patch_design="layered")
    off = part == 0
    assert label.any() and not label[off].any()  # no label pixel on the background
    assert np.array_equal(out[off], image[off])  # no background pixel changed, the feathered band included
    assert np.array_equal(label, target & part) if mask_mode == "target" else label[target & part > 0].all()
    assert (out[erode(label, 1) > 0] < 40).all()  # the defect is there, on the part


def test_a_given_mask_across_the_rim_is_kept_as_given() -> None:
    image, part = disc_image()
    target = _straddling_target(part)
    black = np.full((3, R, R), -1.0, np.float32)
    settings = RunSettings(inversion=InversionConfig(), mask_mode="target", feather_px=1.0, detail=False)
    out, label = compose_output(_prepared(image, target, None), black, np.full((1, R, R), 4.0, np.float32),
                                settings, R, patch_design="layered")
    assert np.array_equal(label, target)  # off-part pixels included: the user's label
    given_off = (target > 0) & (part == 0)
    assert (out[given_off] != image[given_off]).any()  # and the defect is drawn there too


def test_a_drawn_label_wholly_off_the_part_fails_the_job() -> None:
    image, part = disc_image()
    target = np.zeros_like(part)
    target[:6, :6] = 1  # a corner: background only
    settings = RunSettings(inversion=InversionConfig(), mask_mode="target", feather_px=1.0, detail=False)
    with pytest.raises(JobError, match="wholly off the part"):
        compose_output(_prepared(image, target, part), np.zeros((3, R, R), np.float32),
                       np.zeros((1, R, R), np.float32), settings, R, patch_design="layered")


@pytest.fixture(scope="module")
def patch_bundle(tmp_path_factory: pytest.TempPathFactory, toy_model: Callable[..., Any],
                 toy_bundle_factory: Callable[..., Path]) -> Bundle:
    return Bundle.load(toy_bundle_factory(tmp_path_factory.mktemp("rim") / "b", model=toy_model(res=R),
                                          patch_scale=1.0))


@pytest.mark.parametrize("mask_shape", ["procedural", "generated"])
def test_random_targets_on_a_small_part_never_touch_the_background(patch_bundle: Bundle, mask_shape: str) -> None:
    """Random targets on a part no wider than two windows: every window reaches past the rim."""
    image, _ = disc_image(96, 24)
    part = part_mask(image)  # what the run finds (the image is under 512 px: no shrinking)
    settings = resolve_settings(patch_bundle, steps=2, mask_mode="generated", mask_shape=mask_shape)
    with Generator(patch_bundle, settings, backend="ort-cpu", threads=1) as gen:
        done = [d for d in gen.generate(image, None, per_image=8, seed=1) if d.ok]
    assert len(done) >= 6
    off = part == 0
    rim = dilate(part, 1) - part  # background pixels next to the part
    for d in done:
        assert d.mask is not None and d.image is not None
        assert d.mask.any() and not d.mask[off].any() and np.array_equal(d.image[off], image[off])
    if mask_shape == "generated":  # the toy G's masks spill over its windows: cut at the rim
        assert any((dilate(d.mask, 1) & rim).any() for d in done)


def test_a_given_mask_past_the_part_is_the_label_through_the_api(patch_bundle: Bundle) -> None:
    image, part = disc_image(96, 24)
    given = np.zeros(part.shape, np.uint8)
    given[40:56, 14:40] = 1  # across the left rim
    assert (given & (1 - part)).any()
    settings = resolve_settings(patch_bundle, steps=2, mask_mode="target")
    with Generator(patch_bundle, settings, backend="ort-cpu", threads=1) as gen:
        (d,) = gen.generate(image, given, seed=0)
    assert d.ok and np.array_equal(d.mask, given)
