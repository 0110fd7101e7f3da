"""`run --scale auto` (the default) on a toy patch bundle: each image's window is sized by how large its part is
against the training parts the bundle records, a given `--scale` overrides, `jobs.jsonl` says which, a bundle
without the training part size keeps its own scale, and "auto" is part of the run's identity."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from defectgen.api import Generator
from defectgen.data.part_size import measure_part_size
from defectgen.errors import JobError
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.jobs import prepare
from defectgen.runtime.jobs.invert import InversionConfig
from defectgen.runtime.jobs.settings import RunSettings, resolve_settings

RES, SCALE = 16, 1.5  # the toy G's window and the bundle's pixel scale


def disc(side: int, radius: float) -> np.ndarray:
    """A bright, grainy disc (the part) of `radius` px centred on a dark `side` x `side` background."""
    rng = np.random.default_rng(side)
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    on = np.hypot(yy - side / 2, xx - side / 2) <= radius
    img = np.where(on[..., None], [170.0, 120.0, 70.0], [32.0, 32.0, 30.0]) + rng.normal(0, 4, (side, side, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def centre_mask(side: int, half: int = 3) -> np.ndarray:
    """A small given target in the middle of the part: it fits every window, so none is enlarged."""
    m = np.zeros((side, side), np.uint8)
    m[side // 2 - half:side // 2 + half, side // 2 - half:side // 2 + half] = 1
    return m


TRAIN_PART = measure_part_size(disc(128, 30))  # the toy bundle was "trained" on 128 px discs of radius 30


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, toy_model: Callable[..., Any],
            toy_bundle_factory: Callable[..., Path]) -> dict[str, Bundle]:
    root = tmp_path_factory.mktemp("scale")
    model = toy_model(res=RES)
    return {"auto": Bundle.load(toy_bundle_factory(root / "auto", model=model, patch_scale=SCALE,
                                                   part_size_px=TRAIN_PART)),
            "old": Bundle.load(toy_bundle_factory(root / "old", model=model, patch_scale=SCALE)),
            "whole": Bundle.load(toy_bundle_factory(root / "whole", model=model))}


def windows(bundle: Bundle, images: list[np.ndarray], masks: list[np.ndarray | None], **options: Any,
            ) -> list[dict[str, Any]]:
    """Each job's `window` record (`jobs.jsonl`), through the Python API with 1 step."""
    with Generator(bundle, resolve_settings(bundle, steps=1, **options), backend="ort-cpu", threads=1) as gen:
        out = gen.generate(images, masks, types="crack", seed=0)
    assert all(d.ok for d in out), [d.error for d in out]
    return [d.record["window"] for d in out]


def side(window: dict[str, Any]) -> int:
    y0, x0, y1, x1 = window["box"]
    return max(y1 - y0, x1 - x0)


def test_auto_sizes_each_window_by_the_part_against_the_training_parts(bundles: dict[str, Bundle]) -> None:
    images = [disc(128, 30), disc(512, 120), disc(256, 30), disc(256, 90)]
    got = windows(bundles["auto"], images, [centre_mask(im.shape[0]) for im in images])
    for im, w in zip(images, got, strict=True):
        part = measure_part_size(im)
        assert w["base_scale"] == pytest.approx(SCALE * part / TRAIN_PART, rel=1e-3)
        assert w["scale_from"] == f"auto: part {part:.0f} px vs {TRAIN_PART:.0f} px in training"
        assert not w["enlarged"] and side(w) == round(RES * SCALE * part / TRAIN_PART)
    assert got[0]["base_scale"] == pytest.approx(SCALE, rel=0.01)  # a part like the training parts
    assert side(got[1]) / side(got[0]) == pytest.approx(4.0, rel=0.03)  # the same part at 4x: a 4x window
    assert side(got[2]) == pytest.approx(side(got[0]), abs=1)  # a larger image of the same part: the same
    assert side(got[3]) / side(got[0]) == pytest.approx(3.0, rel=0.03)  # the part, not the image, decides


def test_a_given_scale_overrides_auto(bundles: dict[str, Bundle]) -> None:
    images = [disc(128, 30), disc(512, 120)]
    masks: list[np.ndarray | None] = [centre_mask(128), centre_mask(512)]
    for given in (3.0, "3"):  # Python and the CLI's text
        for w in windows(bundles["auto"], images, masks, scale=given):
            assert w["base_scale"] == 3.0 and w["scale_from"] == "given" and side(w) == RES * 3
    assert windows(bundles["auto"], images, masks, scale="auto") == windows(bundles["auto"], images, masks)


def test_a_bundle_without_the_training_part_size_keeps_its_scale_and_says_so(bundles: dict[str, Bundle]) -> None:
    for w in windows(bundles["old"], [disc(128, 30), disc(512, 120)], [centre_mask(128), centre_mask(512)]):
        assert w["base_scale"] == SCALE and w["scale_from"] == "bundle: it records no training part size"
        assert side(w) == round(RES * SCALE)


def test_the_reference_defect_is_placed_at_the_same_relative_scale(bundles: dict[str, Bundle],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A random target with the reference's own shape: the bank's native-resolution crop is shown at the
    job's scale relative to the bundle's, so on a part 4x the training parts it is 4x as large."""
    seen: list[float | None] = []
    real = prepare._reference_target

    def spy(spec: Any, image: np.ndarray, ref_img: np.ndarray, ref_mask: np.ndarray,
            ref_scale: float | None) -> Any:
        seen.append(ref_scale)
        return real(spec, image, ref_img, ref_mask, ref_scale)

    monkeypatch.setattr(prepare, "_reference_target", spy)
    images = [disc(128, 30), disc(512, 120)]
    got = windows(bundles["auto"], images, [None, None], mask_shape="reference")
    assert seen == [pytest.approx(w["base_scale"] / SCALE, rel=1e-3) for w in got]
    assert seen[1] / seen[0] == pytest.approx(4.0, rel=0.03)


def settings(bundle: Bundle, **options: Any) -> RunSettings:
    return resolve_settings(bundle, steps=1, **options)


def test_auto_is_the_default_and_part_of_the_run_identity(bundles: dict[str, Bundle]) -> None:
    auto = settings(bundles["auto"])
    assert auto.scale == "auto" and auto.identity()["scale"] == "auto"
    assert settings(bundles["auto"], scale="AUTO").identity() == auto.identity()  # a rerun resumes
    assert settings(bundles["auto"], scale=2).identity()["scale"] == 2.0  # a given scale is another run
    whole = settings(bundles["whole"], scale="auto")  # auto means nothing for a whole-part model
    assert whole.scale is None and "scale" not in whole.identity()


@pytest.mark.parametrize(("bundle", "scale", "match"), [
    ("auto", "big", "--scale big: needs a number > 0"),
    ("auto", 0, "--scale 0: needs a number > 0"),
    ("auto", "nan", "needs a number > 0"),
    ("whole", 2, "patch-mode bundles only"),
])
def test_bad_scales_are_refused(bundles: dict[str, Bundle], bundle: str, scale: object, match: str) -> None:
    with pytest.raises(JobError, match=match):
        settings(bundles[bundle], scale=scale)


def test_settings_built_in_python_check_the_scale() -> None:
    with pytest.raises(JobError, match="needs a number > 0"):
        RunSettings(inversion=InversionConfig(), scale=-1.0)
    with pytest.raises(JobError, match="needs a number > 0"):
        RunSettings(inversion=InversionConfig(), scale="half")
