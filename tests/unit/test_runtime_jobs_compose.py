"""Crop -> model -> paste: bit-exact background outside the feathered band, at full resolution."""

from __future__ import annotations

import numpy as np
import pytest

from defectgen.data.masks import dilate
from defectgen.errors import JobError
from defectgen.runtime.jobs.compose import (
    DETAIL_KNEE,
    Crop,
    Detail,
    alpha_for,
    composite,
    detail_layer,
    feather_px,
    generated_mask,
    model_inputs,
    model_pixels,
    to_model,
    upsample,
    upsample_mask,
    visible_label,
)


def _case(h: int = 100, w: int = 140) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[40:55, 60:90] = 1
    return image, mask


def test_background_bit_exact_outside_feather_band() -> None:
    image, mask = _case()
    res, crop = 16, Crop.full(image.shape)
    good_m, mask_m = model_inputs(image, mask, crop, res)
    assert good_m.shape == (3, 16, 16) and mask_m.shape == (1, 16, 16) and mask_m.any()
    generated = np.random.default_rng(1).uniform(-1, 1, (3, res, res)).astype(np.float32)
    alpha = alpha_for(mask, crop, res, model_px=1)
    out = composite(image, model_pixels(generated, crop), alpha, crop)
    assert out.shape == image.shape and out.dtype == np.uint8
    band = dilate(mask, feather_px(crop, res, 1)).astype(bool)
    assert np.array_equal(out[~band], image[~band])  # bit-exact outside the band
    assert (alpha[mask > 0] == 1).all()
    assert not np.array_equal(out[mask > 0], image[mask > 0])  # the defect region did change


def test_composite_inside_the_mask_is_the_upsampled_generation() -> None:
    image, mask = _case(32, 32)
    generated = np.full((3, 8, 8), 0.5, np.float32)  # flat: upsampling is exact
    full = Crop.full(image.shape)
    out = composite(image, model_pixels(generated, full), alpha_for(mask, full, 8, 1), full)
    assert (out[mask > 0] == 191).all()  # (0.5 + 1) * 127.5 = 191.25


def test_crop_general_paste_stays_inside_crop() -> None:
    image, mask = _case()
    crop = Crop(30, 50, 70, 110)  # patch mode: only this box goes through the model
    alpha = alpha_for(mask, crop, 16, 1)
    out = composite(image, model_pixels(np.zeros((3, 16, 16), np.float32), crop), alpha, crop)
    outside = np.ones(mask.shape, bool)
    outside[30:70, 50:110] = False
    assert np.array_equal(out[outside], image[outside]) and crop.size == (40, 60)


@pytest.mark.parametrize(("h", "w", "res"), [(100, 140, 16), (1024, 1024, 64), (300, 200, 8)])
def test_model_mask_covers_every_target_pixel(h: int, w: int, res: int) -> None:
    """A 1-px crack must not vanish or fragment: each target pixel's model cell is on."""
    mask = np.zeros((h, w), np.uint8)
    ys = np.linspace(5, h - 6, 4 * h).astype(int)
    mask[ys, np.linspace(7, w - 9, ys.size).astype(int)] = 1  # thin diagonal line
    mask[h // 2, w // 3] = 1  # an isolated pixel
    image = np.zeros((h, w, 3), np.uint8)
    _, mask_m = model_inputs(image, mask, Crop.full(image.shape), res)
    yy, xx = np.nonzero(mask)
    cells = mask_m[0][(yy * res) // h, (xx * res) // w]
    assert cells.all()
    assert mask_m.mean() < 0.6  # a margin of about one model pixel, not the whole image


def test_empty_mask_is_a_job_error() -> None:
    image, _ = _case()
    with pytest.raises(JobError, match="empty"):
        model_inputs(image, np.zeros(image.shape[:2], np.uint8), Crop.full(image.shape), 16)


def test_generated_mask_within_dilated_target() -> None:
    image, mask = _case()
    crop = Crop.full(image.shape)
    logit = np.ones((1, 16, 16), np.float32)  # "defect everywhere"
    m = generated_mask(logit, mask, crop, 16, 1)
    assert m.any() and not (m & (1 - dilate(mask, feather_px(crop, 16, 1)))).any()
    with pytest.raises(JobError, match="generated mask is empty"):
        generated_mask(-logit, mask, crop, 16, 1)


@pytest.mark.parametrize("size", [(48, 48), (192, 192), (40, 56)])
def test_upsampled_mask_adds_nothing_where_every_logit_is_negative(size: tuple[int, int]) -> None:
    # G's mask logit hovers just below 0 over the background and falls steeply on the part's surface
    logit = np.full((1, 32, 32), -0.1, np.float32)
    logit[:, :, 16:] = -30.0
    assert not upsample_mask(logit, size).any()
    assert (upsample(logit, size)[:, :, 0] > 0).any()  # a bicubic resize overshoots across 0 beside the edge


@pytest.mark.parametrize("size", [(32, 32), (48, 48), (192, 192), (20, 20)])
def test_upsampled_mask_keeps_the_drawn_shape(size: tuple[int, int]) -> None:
    yy, xx = np.mgrid[:32, :32]
    logit = (6.0 - np.hypot(yy - 15.5, xx - 15.5)).astype(np.float32)[None]  # a disc of radius 6 model px
    got = upsample_mask(logit, size)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    want = np.hypot((yy + 0.5) * 32 / h - 16, (xx + 0.5) * 32 / w - 16) < 6.0
    assert got.shape == size and got.dtype == bool
    assert (got & want).sum() / (got | want).sum() > 0.9


@pytest.mark.parametrize("scale", [1.5, 2.0, 2.5, 3.0])
def test_upsampled_mask_keeps_a_thin_strokes_width(scale: float) -> None:
    # strokes one model pixel wide (print marks, cracks): their label covers G's drawn area, scaled, not less
    # (a bilinear resize keeps 0.67 of it at scale 1.5)
    logit = np.full((32, 32), -4.0, np.float32)
    logit[5:30:5, 4:28] = 4.0
    size = (round(32 * scale),) * 2
    area = upsample_mask(logit, size).sum() / ((logit > 0).sum() * scale**2)
    assert 0.95 < area < 1.4


def test_upsampled_mask_stays_near_what_g_drew() -> None:
    # a drawn disc next to the part's rim: label only within one model pixel of a drawn pixel
    logit = np.full((32, 32), -0.1, np.float32)
    logit[:, 16:] = -30.0
    logit[8:12, 4:8] = 5.0
    got = upsample_mask(logit, (96, 96))
    near = np.zeros((32, 32), bool)
    near[7:13, 3:9] = True
    assert got.any() and not (got & ~np.kron(near, np.ones((3, 3), bool))).any()


def test_detail_layer_is_zero_when_the_crop_is_the_model_size() -> None:
    guide = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.abs(detail_layer(guide, to_model(guide, 16)).delta).max() < 1e-3


def test_model_image_plus_detail_gives_the_guide_back_inside_the_mask() -> None:
    """A model that reproduced its downsized guide exactly, plus the detail layer, is the full-res guide."""
    image, mask = _case()
    guide = np.random.default_rng(3).integers(0, 256, image.shape, dtype=np.uint8)  # all fine detail
    res, crop = 16, Crop.full(image.shape)
    alpha = alpha_for(mask, crop, res, model_px=1)
    with_detail = composite(image, model_pixels(to_model(guide, res), crop, detail_layer(guide, to_model(guide, res))),
                            alpha, crop)
    smooth = composite(image, model_pixels(to_model(guide, res), crop), alpha, crop)
    inside = mask > 0
    assert np.abs(with_detail[inside].astype(int) - guide[inside]).max() <= 1  # rounding only
    assert np.abs(smooth[inside].astype(int) - guide[inside]).mean() > 20  # the model's resolution alone blurs
    outside = ~dilate(mask, feather_px(crop, res, 1)).astype(bool)
    assert np.array_equal(with_detail[outside], image[outside])  # still bit-exact outside the band


def test_detail_over_a_darker_generator_stays_in_range_and_keeps_its_texture() -> None:
    """A real defect's dark, grainy core over a G that draws the core darker still: plain addition would push
    pixels below 0 and clip them to flat black; the scaled detail stays in range and keeps the grain."""
    rng = np.random.default_rng(4)
    guide = rng.integers(10, 40, (64, 64, 3), dtype=np.uint8)  # dark core with grain
    d = detail_layer(guide, to_model(guide, 8))
    gen = np.full(guide.shape, 6.0, np.float32)  # G's core: darker than the guide's coarse copy (~25)
    assert (gen + d.delta).min() < 0  # what plain addition did
    out = d.add_to(gen)
    assert out.min() >= 0 and np.rint(out).std() > 0.5
    gen = rng.uniform(0, 255, guide.shape).astype(np.float32)  # any G in range stays in range
    out = d.add_to(gen)
    assert out.min() >= 0 and out.max() <= 255
    assert np.abs(d.add_to(d.low) - guide).max() < 1e-3  # a G equal to the coarse guide gets the guide back


def test_grain_stays_nearly_whole_on_a_dark_generated_core() -> None:
    """A grainy guide over a G that draws its core far darker: the grain keeps nearly its full spread, so the
    enlarged core does not quantise into flat 8-bit blocks (scaled by gen / low it fell under one grey level)."""
    rng = np.random.default_rng(5)
    guide = np.clip(50 + rng.normal(0, 3, (64, 64, 3)), 0, 255).astype(np.uint8)
    d = detail_layer(guide, to_model(guide, 8))
    gen = np.full(guide.shape, DETAIL_KNEE + 14.0, np.float32)
    out = d.add_to(gen)
    plain = gen + d.delta
    assert 0.9 < out.std() / plain.std() <= 1.0
    small = np.abs(d.delta) <= 3.0  # a shallow detail on G's level is added nearly as it is
    assert np.abs(out[small] - plain[small]).max() < 0.2
    assert np.rint(out).std() > 2.0 and out.min() >= 0


def test_detail_short_of_room_keeps_its_order_instead_of_flattening() -> None:
    """A real crack's deep detail (-20 .. -30 grey levels) over a G that draws the crack at 35: shrunk to fit G's
    room, every such pixel came out at gen / 2, one flat level; bent, the sum keeps the detail's order and
    spread."""
    rng = np.random.default_rng(6)
    delta = rng.uniform(-30.0, -20.0, (32, 32, 3)).astype(np.float32)
    d = Detail(delta=delta, low=np.full_like(delta, 130.0))
    out = d.add_to(np.full_like(delta, 35.0))
    assert out.min() > 0
    assert (np.diff(out.ravel()[np.argsort(delta.ravel())]) >= 0).all()  # a darker detail, a darker pixel
    assert len(np.unique(np.rint(out))) >= 5


def test_a_thin_real_stroke_over_a_dark_generated_crack_keeps_its_grain() -> None:
    """A thin real crack's detail is as deep as its coarse copy is light (-48 .. -72 under a coarse 175); over a
    G that already draws the crack at 38, bent at a fixed knee it came out at 1-3 grey levels, flat 2x2 blocks
    on the 512 px part. Bent at G's own level it stays a dark stroke with its spread."""
    rng = np.random.default_rng(7)
    delta = rng.uniform(-72.0, -48.0, (32, 32, 3)).astype(np.float32)
    out = Detail(delta=delta, low=np.full_like(delta, 175.0)).add_to(np.full_like(delta, 38.0))
    assert 3.0 < out.min() and out.max() < 38.0 * 0.5
    assert len(np.unique(np.rint(out))) >= 5
    assert (np.diff(out.ravel()[np.argsort(delta.ravel())]) >= 0).all()


def test_a_black_generated_core_is_lifted_to_keep_the_grain() -> None:
    """G draws a hole core at pure black where the real one is grey (60): its colour is lifted a few levels
    first, so more than half of the guide's grain survives there (a third did with the sum bent alone, and
    the core rounded to flat blocks)."""
    rng = np.random.default_rng(8)
    grain = rng.normal(0.0, 3.0, (32, 32, 3)).astype(np.float32)
    d = Detail(delta=grain, low=np.full_like(grain, 60.0))
    at_black = d.add_to(np.zeros_like(grain))
    assert 0 < at_black.min() and at_black.max() < DETAIL_KNEE + 2.0
    assert 0.45 < at_black.std() / grain.std() < 0.8
    dark_guide = Detail(delta=grain * 0.0, low=np.full_like(grain, 2.0))  # a guide as black as G: no lift
    assert np.abs(dark_guide.add_to(np.full_like(grain, 2.0)) - 2.0).max() < 1e-4


def test_patch_window_is_centred_on_the_target_and_inside_the_image() -> None:
    mask = np.zeros((100, 140), np.uint8)
    mask[40:50, 60:66] = 1
    crop, enlarged = Crop.around(mask, 32)
    assert not enlarged and crop.size == (32, 32)
    assert crop.y0 <= 40 and crop.y1 >= 50 and crop.x0 <= 60 and crop.x1 >= 66
    assert abs((crop.y0 + crop.y1) / 2 - 45) <= 1 and abs((crop.x0 + crop.x1) / 2 - 63) <= 1
    corner = np.zeros((100, 140), np.uint8)
    corner[0:4, 136:140] = 1  # at the image's corner: the window moves inside, it is not cut
    crop, _ = Crop.around(corner, 32)
    assert crop == Crop(0, 108, 32, 140)


def test_patch_window_grows_for_a_large_target_and_is_cut_to_a_small_image() -> None:
    mask = np.zeros((200, 200), np.uint8)
    mask[20:110, 30:90] = 1  # 90 px tall: more than 75 % of a 32 px window
    crop, enlarged = Crop.around(mask, 32)
    assert enlarged and crop.size == (120, 120) and crop.of(mask).sum() == mask.sum()
    small = np.zeros((20, 50), np.uint8)
    small[5:10, 20:30] = 1
    crop, _ = Crop.around(small, 32)
    assert crop.size == (20, 32) and crop.of(small).sum() == small.sum()


def test_hard_composite_recovers_the_layer_where_the_mask_is_on() -> None:
    from defectgen.runtime.jobs.compose import hard_composite

    rng = np.random.default_rng(0)
    good, colour = rng.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    logit = rng.normal(0, 3, (1, 8, 8)).astype(np.float32)
    a = 1 / (1 + np.exp(-logit))
    soft = a * colour + (1 - a) * good  # what the synthesis graph returns
    hard = hard_composite(soft, logit, good)
    on = np.broadcast_to(logit > 0, hard.shape)
    assert on.any() and (~on).any()
    np.testing.assert_allclose(hard[on], colour[on], atol=1e-5)
    assert np.array_equal(hard[~on], good[~on])


def test_hard_composite_of_a_full_g_takes_its_window_where_the_mask_is_on() -> None:
    from defectgen.runtime.jobs.compose import hard_composite

    rng = np.random.default_rng(0)
    good, window = rng.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    logit = rng.normal(0, 3, (1, 8, 8)).astype(np.float32)
    hard = hard_composite(window, logit, good, layered=False)  # a full G's synthesis returns its own window
    on = np.broadcast_to(logit > 0, hard.shape)
    assert on.any() and (~on).any()
    assert np.array_equal(hard[on], window[on]) and np.array_equal(hard[~on], good[~on])
    assert not np.allclose(hard_composite(window, logit, good)[on], window[on])  # not a layer to un-blend


@pytest.mark.parametrize("layered", [True, False])
def test_generated_labels_say_where_pixels_changed(layered: bool) -> None:
    """`--mask-mode generated`: the composite follows G's label, not the larger target; a layered G's pixels
    are its hard composite, so target pixels away from the label keep the input."""
    from pathlib import Path

    from defectgen.runtime.jobs.compose import Crop
    from defectgen.runtime.jobs.invert import InversionConfig
    from defectgen.runtime.jobs.output import compose_output
    from defectgen.runtime.jobs.prepare import Prepared
    from defectgen.runtime.jobs.settings import RunSettings
    from defectgen.runtime.jobs.sources import JobSpec

    r, rng = 16, np.random.default_rng(1)
    image = rng.integers(40, 200, (r, r, 3), dtype=np.uint8)
    target = np.zeros((r, r), np.uint8)
    target[2:14, 2:14] = 1
    logit = np.full((1, r, r), -4.0, np.float32)
    logit[0, 6:9, 6:9] = 4.0  # G's mask: a 3x3 core of the 12x12 target
    good = (image.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0)
    a = 1 / (1 + np.exp(-logit))
    soft = (a * -1.0 + (1 - a) * good).astype(np.float32)  # a black layer, smoothly composited
    spec = JobSpec(index=0, key="k", id="0" * 16, seed=0, image=Path("x.png"), mask=None, defect_type="crack")
    p = Prepared(spec=spec, image=image, mask=target, crop=Crop.full(target.shape), good=good, mask_m=target[None],
                 stitched=good, guide=image, reference=None)
    settings = RunSettings(inversion=InversionConfig(), mask_mode="generated", feather_px=1.0, detail=False)
    out, label = compose_output(p, soft, logit, settings, r, patch_design="layered" if layered else None)
    assert np.array_equal(label, (logit[0] > 0).astype(np.uint8))
    away = dilate(label, 1) == 0
    if layered:
        assert np.array_equal(out[away], image[away])  # only the label (and its 1 px feather) changed
        assert (out[label > 0] == 0).all()  # the layer at full strength: black
    else:  # a whole-part G's image is used as it is, but only around the label
        assert np.array_equal(out[dilate(label, 2) == 0], image[dilate(label, 2) == 0])


def test_a_layered_defect_enlarged_6x_has_its_colour_on_every_label_pixel_and_nothing_outside() -> None:
    """An 8 px window shown at 6x: every pixel of G's (smoothly resized) label gets G's colour at full strength
    and every other pixel stays the input's. Upsampled together with the good window, the hard composite's
    edge followed the model's pixel grid: label pixels there were blends of red and grey, in 6 px steps."""
    from pathlib import Path

    from defectgen.runtime.jobs.invert import InversionConfig
    from defectgen.runtime.jobs.output import compose_output
    from defectgen.runtime.jobs.prepare import Prepared
    from defectgen.runtime.jobs.settings import RunSettings
    from defectgen.runtime.jobs.sources import JobSpec

    r, zoom = 8, 6
    image = np.full((r * zoom, r * zoom, 3), 128, np.uint8)
    yy, xx = np.mgrid[0:r, 0:r]
    logit = (2.0 - np.abs(yy - xx + 0.5))[None].astype(np.float32)  # a diagonal stroke, about 3 px wide
    good = np.zeros((3, r, r), np.float32) + (128 / 127.5 - 1.0)
    colour = np.stack([np.ones((r, r)), -np.ones((r, r)), -np.ones((r, r))]).astype(np.float32)  # pure red
    a = 1 / (1 + np.exp(-logit))
    soft = (a * colour + (1 - a) * good).astype(np.float32)
    target = np.ones(image.shape[:2], np.uint8)
    spec = JobSpec(index=0, key="k", id="0" * 16, seed=0, image=Path("x.png"), mask=None, defect_type="crack")
    p = Prepared(spec=spec, image=image, mask=target, crop=Crop.full(target.shape), good=good,
                 mask_m=target[None, :r, :r], stitched=good, guide=image, reference=None)
    settings = RunSettings(inversion=InversionConfig(), mask_mode="generated", feather_px=1.0, detail=False)
    out, label = compose_output(p, soft, logit, settings, r, patch_design="layered")
    on = label > 0
    assert 0.2 < on.mean() < 0.8
    assert np.array_equal(out[~on], image[~on])  # nothing changes outside the label
    assert (out[on, 0] >= 250).all() and (out[on, 1:] <= 5).all()  # every label pixel is G's red


def test_visible_label_keeps_only_pixels_that_changed() -> None:
    """A label pixel whose colour stays within `min_change` levels of the surface is dropped, specks with it."""
    image = np.full((40, 40, 3), 120, np.uint8)
    label = np.zeros((40, 40), np.uint8)
    label[10:30, 10:30] = 1
    pixels = np.full((20, 20, 3), 120.0, np.float32)  # the crop [10:30, 10:30]: unchanged ...
    pixels[:, :8] = 60.0  # ... but for a dark 20x8 stroke
    pixels[15, 15, 1] = 133.0  # and one green speck
    crop = Crop(10, 10, 30, 30)
    out = visible_label(label, pixels, image, crop, min_change=10, min_piece_px=4)
    want = np.zeros_like(label)
    want[10:30, 10:18] = 1
    assert np.array_equal(out, want)
    assert visible_label(label, pixels, image, crop, min_change=10, min_piece_px=0)[25, 25] == 1  # the speck
    with pytest.raises(JobError, match="invisible"):
        visible_label(label, np.full((20, 20, 3), 125.0, np.float32), image, crop, min_change=10, min_piece_px=4)


def test_generated_label_drops_faint_pixels_and_leaves_them_unchanged() -> None:
    """`min_change`: G's mask covers a faint ring around a dark core; the label keeps the core, the ring keeps
    the input's pixels (the composite follows the label)."""
    from pathlib import Path

    from defectgen.runtime.jobs.invert import InversionConfig
    from defectgen.runtime.jobs.output import compose_output
    from defectgen.runtime.jobs.prepare import Prepared
    from defectgen.runtime.jobs.settings import RunSettings
    from defectgen.runtime.jobs.sources import JobSpec

    r = 16
    image = np.full((r, r, 3), 128, np.uint8)
    target = np.zeros((r, r), np.uint8)
    target[2:14, 2:14] = 1
    logit = np.full((1, r, r), -4.0, np.float32)
    logit[0, 4:12, 4:12] = 4.0  # G's mask: 8x8
    good = np.zeros((3, r, r), np.float32) + (128 / 127.5 - 1.0)
    colour = good.copy() + 3 / 127.5  # faint: 3 levels brighter ...
    colour[:, 6:10, 6:10] = -1.0  # ... around a black 4x4 core
    a = 1 / (1 + np.exp(-logit))
    soft = (a * colour + (1 - a) * good).astype(np.float32)
    spec = JobSpec(index=0, key="k", id="0" * 16, seed=0, image=Path("x.png"), mask=None, defect_type="hole")
    p = Prepared(spec=spec, image=image, mask=target, crop=Crop.full(target.shape), good=good, mask_m=target[None],
                 stitched=good, guide=image, reference=None)
    for min_change, side in ((0.0, 8), (10.0, 4)):
        settings = RunSettings(inversion=InversionConfig(), mask_mode="generated", feather_px=1.0, detail=False,
                               min_change=min_change)
        out, label = compose_output(p, soft, logit, settings, r, patch_design="layered")
        assert label.sum() == side * side and label[8, 8] == 1
        assert np.array_equal(out[dilate(label, 1) == 0], image[dilate(label, 1) == 0])
        assert (out[label > 0] == 0).all() == (side == 4)  # the kept label is the black core
