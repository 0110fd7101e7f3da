"""Mask utilities: part estimate, random defect masks, feathering, warping and stitching."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from defectgen.data.colour_match import defect_core, match_colour
from defectgen.data.grain import match_grain, noise_sigma
from defectgen.data.masks import bbox, dilate, feather, part_mask, random_mask, rgb_to_lab8
from defectgen.data.procedural import render_part
from defectgen.data.stitching import fill_from_defect, place_reference, stitch, warp_defect
from defectgen.errors import DataError

TYPES = ["crack", "cut", "hole", "print", "scratch", "squeeze"]  # the last two map by keyword / to a blob


def _disk_mask(h: int, w: int, r: float) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.circle(m, (w // 2, h // 2), int(r), 1, -1)
    return m


@pytest.mark.parametrize("res", [32, 64, 160])
def test_random_mask_nonempty_inside_part(res):
    part = _disk_mask(res, res + 8, res * 0.35)
    for t in TYPES:
        for seed in range(4):
            m = random_mask(t, part, np.random.default_rng(seed))
            assert m.shape == part.shape and m.dtype == np.uint8
            assert m.any(), (t, res, seed)
            assert set(np.unique(m).tolist()) <= {0, 1}
            assert not (m & (1 - dilate(part, 1))).any(), (t, res, seed)


def test_random_mask_deterministic_and_shaped():
    part = _disk_mask(128, 128, 50)
    a = random_mask("crack", part, np.random.default_rng(3))
    np.testing.assert_array_equal(a, random_mask("crack", part, np.random.default_rng(3)))
    assert not np.array_equal(a, random_mask("crack", part, np.random.default_rng(4)))
    hole, crack, cut = (random_mask(t, part, np.random.default_rng(0)) for t in ("hole", "crack", "cut"))
    x0, y0, x1, y1 = bbox(hole)
    assert hole.sum() > 0.6 * (x1 - x0) * (y1 - y0)  # roundish blob fills its box
    def inscribed(m):  # radius of the largest disk inside the mask
        return cv2.distanceTransform(m, cv2.DIST_L2, 5).max()

    assert inscribed(crack) <= 2.5 < 3.0 <= inscribed(hole)  # a crack is thin, a hole is not
    x0, y0, x1, y1 = bbox(crack)
    assert np.hypot(x1 - x0, y1 - y0) > 0.2 * 100  # and long: a fifth of the part's diameter at least
    x0, y0, x1, y1 = bbox(cut)
    assert max(x1 - x0, y1 - y0) > 3 * cut.sum() / max(x1 - x0, y1 - y0)  # elongated: long side >> mean width
    assert random_mask("hole", part, np.random.default_rng(0), scale=2.0).sum() > 2 * hole.sum()
    with pytest.raises(DataError, match="empty"):
        random_mask("hole", np.zeros((8, 8), np.uint8), np.random.default_rng(0))


def test_feather_range_and_monotonic():
    m = np.zeros((41, 41), np.uint8)
    m[20, 20] = 1
    a = feather(m, 6)
    assert a.dtype == np.float32 and a.min() == 0.0 and a.max() == 1.0
    assert a[20, 20] == 1.0
    profile = a[20, 20:]
    assert (np.diff(profile) <= 0).all() and profile[1] > profile[4] > 0
    assert not (a * (1 - dilate(m, 6))).any()  # exactly 0 beyond the dilated band
    np.testing.assert_array_equal(feather(m, 0), m.astype(np.float32))


def test_part_mask_finds_rendered_part_and_falls_back():
    for seed in range(3):
        img, truth = render_part(np.random.default_rng(seed), 96)
        est = part_mask(img)
        assert (est & dilate(truth, 1)).sum() > 0.97 * est.sum()  # on the part, never the background
        assert (est & truth).sum() > 0.75 * truth.sum()  # most of it (the dim base scar may be missed)
    flat = part_mask(np.full((50, 70, 3), 120, np.uint8))  # nothing to find: centred ellipse
    assert flat.shape == (50, 70) and flat[25, 35] == 1 and flat[0, 0] == 0


def test_warp_defect_fills_target_bbox():
    ref = np.zeros((60, 60, 3), np.uint8)
    ref_mask = np.zeros((60, 60), np.uint8)
    ref_mask[10:14, 5:45] = 1  # wide
    ref[ref_mask > 0] = 200
    target = np.zeros((80, 100), np.uint8)
    target[20:70, 40:48] = 1  # tall: the reference gets transposed, not squashed
    img, m = warp_defect(ref, ref_mask, target)
    assert img.shape == (80, 100, 3) and m.shape == (80, 100)
    x0, y0, x1, y1 = bbox(m)
    assert abs(x0 - 40) <= 1 and abs(x1 - 48) <= 1 and abs(y0 - 20) <= 1 and abs(y1 - 70) <= 1
    assert img[45, 44].tolist() == [200, 200, 200]


def test_stitch_changes_only_the_feathered_target():
    rng = np.random.default_rng(0)
    good, part = render_part(rng, 64)
    ref, ref_part = render_part(np.random.default_rng(5), 48)
    ref_mask = random_mask("hole", ref_part, np.random.default_rng(5))
    ref[ref_mask > 0] = 10  # a dark defect
    target = random_mask("crack", part, np.random.default_rng(7))
    out = stitch(good, ref, ref_mask, target, feather_px=3, rng=np.random.default_rng(1))
    assert out.shape == good.shape and out.dtype == np.uint8
    outside = dilate(target, 3) == 0
    np.testing.assert_array_equal(out[outside], good[outside])
    assert (out[target > 0] != good[target > 0]).any()
    # a crack reference in a crack of another shape: the whole target looks like the (dark) crack, not like the
    # reference's intact surface (box-fitting alone leaves the target at the surface's brightness here)
    crack_ref = render_part(np.random.default_rng(5), 48)[0]
    crack_mask = random_mask("crack", ref_part, np.random.default_rng(5))
    crack_ref[crack_mask > 0] = 10
    out = stitch(good, crack_ref, crack_mask, target, feather_px=3, rng=np.random.default_rng(1))
    core = target > 0  # the feather's alpha is 1 on the whole target
    assert out[core].mean() < good[core].mean() - 30
    with pytest.raises(DataError, match="target mask size"):
        stitch(good, ref, ref_mask, target[:10], 3)


def test_colour_match_offsets_when_that_fits_else_scales_toward_black_or_white():
    px = np.float32([[40, 60, 150, 200]]).T.repeat(3, 1)  # a dark core on a 150 surface, a pale edge
    shifted = match_colour(px, np.float32([150] * 3), np.float32([120] * 3))
    np.testing.assert_allclose(shifted[:, 0], [10, 30, 120, 170], atol=1e-3)  # an offset: the contrast stays
    darker = match_colour(px, np.float32([150] * 3), np.float32([90] * 3))  # -60 would put the core below 0
    np.testing.assert_allclose(darker[:, 0], [24, 36, 90, 120], atol=1e-3)  # x 0.6 instead: in range
    brighter = match_colour(px, np.float32([150] * 3), np.float32([215] * 3))  # +65 would put 200 past 255
    np.testing.assert_allclose(brighter[:, 0], [173.095, 180.714, 215, 234.048], atol=1e-2)  # toward white
    where = np.array([False, True, True, False])[:, None]  # only the pixels that matter decide
    np.testing.assert_allclose(match_colour(px[:, None], np.float32([150] * 3), np.float32([90] * 3),
                                            where)[:, 0, 0], [-20, 0, 90, 140], atol=1e-3)
    mixed = match_colour(px, np.float32([150, 150, 150]), np.float32([120, 150, 90]))  # per channel
    np.testing.assert_allclose(mixed[2], [120, 150, 90], atol=1e-3)


def test_a_dark_defect_from_a_brighter_part_is_not_clipped_to_black():
    """A real hole whose core is 50 on a 160 surface, pasted where the surface is 100: shifted by the surfaces'
    difference it went to 0 (flat black); matched by a gain it stays darker than the surface and in range."""
    rng = np.random.default_rng(0)
    good = np.clip(100 + rng.normal(0, 2.0, (64, 64, 3)), 0, 255).astype(np.uint8)
    ref = np.clip(160 + rng.normal(0, 2.0, (24, 24, 3)), 0, 255).astype(np.uint8)
    ref_mask = np.zeros((24, 24), np.uint8)
    ref_mask[6:18, 6:18] = 1
    ref[ref_mask > 0] = 50
    target = np.zeros((64, 64), np.uint8)
    target[20:44, 20:44] = 1
    out = stitch(good, ref, ref_mask, target, feather_px=0, rng=np.random.default_rng(1))
    core = out[target > 0].astype(np.float32)
    assert core.min() > 10  # nothing clipped (the old offset put the whole core at 0)
    assert abs(np.median(core) - 50 * 100 / 160) < 6  # the core keeps its ratio to the surface


def test_noise_sigma_reads_white_noise_and_ignores_shading():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:200, 0:200].astype(np.float32)
    shading = (60 + 0.4 * xx + 0.2 * yy)[:, :, None].repeat(3, 2)  # a ramp: no noise at all
    np.testing.assert_allclose(noise_sigma(shading), 0.0, atol=1e-3)
    noisy = shading + rng.normal(0, [1.0, 2.0, 4.0], shading.shape).astype(np.float32)
    np.testing.assert_allclose(noise_sigma(noisy), [1.0, 2.0, 4.0], rtol=0.08)
    region = np.zeros((200, 200), np.uint8)
    region[50:100, 50:100] = 1
    np.testing.assert_allclose(noise_sigma(noisy, region), [1.0, 2.0, 4.0], rtol=0.15)
    assert np.isnan(noise_sigma(noisy, region[:, ::-1] * 0)).all()  # no pixels: no estimate


def test_an_enlarged_paste_gets_the_grain_of_the_image_it_lands_in():
    """A 16 px reference stitched 4x larger into a grainy image: smooth without grain matching, the image's
    grain with it; inside the target only, and a paste at the same scale gets next to nothing added."""
    rng = np.random.default_rng(0)
    good = np.clip(120 + rng.normal(0, 3.0, (160, 160, 3)), 0, 255).astype(np.uint8)
    ref = np.full((16, 16, 3), 90, np.uint8)
    ref[4:12, 4:12] = 60
    ref_mask = np.zeros((16, 16), np.uint8)
    ref_mask[4:12, 4:12] = 1
    target = np.zeros((160, 160), np.uint8)
    target[40:104, 40:104] = 1
    out = stitch(good, ref, ref_mask, target, feather_px=3, rng=np.random.default_rng(1))
    np.testing.assert_allclose(noise_sigma(out, target), noise_sigma(good), rtol=0.2)
    assert noise_sigma(ref.astype(np.float32).repeat(4, 0).repeat(4, 1))[0] < 0.5  # what it was: smooth
    outside = dilate(target, 3) == 0
    np.testing.assert_array_equal(out[outside], good[outside])
    grainy = good[40:104, 40:104].astype(np.float32) - 30  # already at the image's grain
    same = match_grain(grainy, np.ones((64, 64), np.uint8), good, np.random.default_rng(2))
    assert np.abs(same - grainy).std() < 0.5 * noise_sigma(good).mean()


def test_fill_from_defect_copies_the_nearest_defect_pixel():
    rng = np.random.default_rng(3)
    wmask = (rng.random((30, 40)) < 0.03).astype(np.uint8)
    ys, xs = np.nonzero(wmask)
    warped = np.zeros((30, 40, 3), np.uint8)
    warped[ys, xs, 0] = np.arange(ys.size) % 250 + 1  # each defect pixel identifiable (ids mod 250)
    warped[ys, xs, 1] = np.arange(ys.size) // 250
    target = np.zeros((30, 40), np.uint8)
    target[5:25, 8:35] = 1
    out = fill_from_defect(warped, wmask, target)
    np.testing.assert_array_equal(out[target == 0], warped[target == 0])
    np.testing.assert_array_equal(out[wmask > 0], warped[wmask > 0])
    for y, x in zip(*np.nonzero(target & (wmask == 0)), strict=True):
        src = (out[y, x, 1].astype(int) * 250 + out[y, x, 0] - 1)
        d_src = np.hypot(ys[src] - y, xs[src] - x)
        assert d_src <= np.hypot(ys - y, xs - x).min() + 1.5  # nearest (the 5x5 distance mask is approximate)


def test_defect_core_is_the_stroke_not_its_generous_label():
    """A real crack's label is wider than its dark stroke: the core is the stroke, the margin is surface."""
    rng = np.random.default_rng(7)
    img = np.clip(150 + rng.normal(0, 2.0, (40, 40, 3)), 0, 255).astype(np.float32)
    stroke = np.zeros((40, 40), np.uint8)
    stroke[18:21, 5:35] = 1
    img[stroke > 0] = 40 + rng.normal(0, 2.0, (int(stroke.sum()), 3))
    label = dilate(stroke, 3)
    core = defect_core(img, label, np.median(img[label == 0], axis=0))
    np.testing.assert_array_equal(core, stroke > 0)
    assert not defect_core(img, np.zeros_like(label), np.full(3, 150.0)).any()


def test_target_pixels_the_warp_misses_take_the_defects_core_look():
    """A thin dark crack with a generous label, stitched into a target of the same box that the label's rounded
    ends miss: those pixels copy the stroke (its core), not the label's surface-coloured margin."""
    rng = np.random.default_rng(8)
    good = np.clip(150 + rng.normal(0, 2.0, (40, 40, 3)), 0, 255).astype(np.uint8)
    ref = good.copy()
    stroke = np.zeros((40, 40), np.uint8)
    stroke[19:22, 5:36] = 1
    ref[stroke > 0] = 40
    label = dilate(stroke, 3)
    ys, xs = np.nonzero(label)
    target = np.zeros_like(label)
    target[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = 1  # the label's box: its corners are misses
    missed = (target > 0) & (label == 0)
    assert missed.sum() >= 8
    out = stitch(good, ref, label, target, feather_px=0)
    assert out[missed].astype(float).mean() < 60  # the stroke's 40, not the margin's 150
    assert np.abs(out[label > 0].astype(int) - ref[label > 0]).mean() < 3  # the real defect itself, as it is


def test_place_reference_moves_the_real_mask_onto_the_part():
    good, part = render_part(np.random.default_rng(0), 96)
    ref, ref_part = render_part(np.random.default_rng(5), 48)
    ref_mask = random_mask("cut", ref_part, np.random.default_rng(5))
    ref[ref_mask > 0] = 250  # a bright defect
    for seed in range(5):
        rng = np.random.default_rng(seed)
        moved, target = place_reference(good, part, ref, ref_mask, rng, scale_jitter=(0.8, 1.25))
        assert target.shape == part.shape and target.any()
        assert (target & (part > 0)).sum() >= 0.95 * target.sum()  # on the part
        area = ref_mask.sum() * (96 / 48) ** 2  # rescaled to the image size, then jittered
        assert 0.8**2 * 0.7 * area <= target.sum() <= 1.25**2 * 1.3 * area
        # the defect's own (bright) pixels sit under its own label; only rim pixels mix with the surface (resize)
        under = moved[target > 0].astype(int)
        assert (under.min(axis=1) >= 230).mean() > 0.5 and under.mean() > good[target > 0].mean() + 60
        changed = (moved != good).any(axis=2)
        x0, y0, x1, y1 = bbox(target)
        pad = 12  # the 4 px context margin, rescaled (2x, jitter <= 1.25)
        assert not changed[:max(0, y0 - pad)].any() and not changed[y1 + pad:].any()  # only the crop box


def test_rgb_to_lab8_matches_opencv_to_its_rounding():
    import cv2

    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    diff = np.abs(rgb_to_lab8(rgb) - cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32))
    assert diff.max() <= 2.5 and diff.mean() <= 0.6


def test_bbox():
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:9] = 1
    assert bbox(m) == (3, 2, 9, 5)
    with pytest.raises(DataError):
        bbox(np.zeros((3, 3), np.uint8))


def test_place_reference_at_a_given_scale_ignores_the_crop_size():
    """A native-resolution bank crop (patch bundles) keeps its pixel size at ref_scale 1, and doubles at 2."""
    good, part = render_part(np.random.default_rng(0), 96)
    ref = np.full((30, 30, 3), 200, np.uint8)
    ref_mask = np.zeros((30, 30), np.uint8)
    ref_mask[10:20, 12:18] = 1  # 60 px
    for scale, want in ((1.0, 60), (2.0, 240)):
        _, target = place_reference(good, part, ref, ref_mask, np.random.default_rng(1), ref_scale=scale)
        assert abs(int(target.sum()) - want) <= 0.1 * want


def test_drop_specks_keeps_pieces_of_min_size_or_else_the_largest() -> None:
    from defectgen.data.masks import drop_specks

    m = np.zeros((20, 20), np.uint8)
    m[2:6, 2:6] = 1  # 16 px
    m[10, 10] = 1  # a 1 px speck
    m[15:17, 15:17] = 1  # 4 px
    out = drop_specks(m, 4)
    assert out[2:6, 2:6].all() and out[15:17, 15:17].all() and out.sum() == 20
    small = np.zeros((6, 6), np.uint8)
    small[1, 1] = 1
    small[3:5, 3] = 1  # 1 px and 2 px, both below 4: the larger stays, never empty
    assert drop_specks(small, 4).sum() == 2 and drop_specks(small, 4)[3:5, 3].all()
