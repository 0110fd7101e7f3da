"""The plate and fabric families of `make-data`: MVTec layout, exact on-part masks, determinism, and defect types
that together span faint to strong contrast, 0.2 % to 40 % of the part, thin strokes, pits and bright glints."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from defectgen.cli import app
from defectgen.data.imageio import read_image
from defectgen.data.masks import dilate
from defectgen.data.mvtec import MVTecCategory
from defectgen.data.procedural import FAMILIES, MARKER, family, make_dataset
from defectgen.errors import DataError

NEW = ["plate", "fabric"]
SMALL = {"res": 64, "n_good": 2, "n_defect": 3, "n_test_good": 1, "seed": 5}


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", params=NEW)
def dataset(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param) / request.param
    sheet = make_dataset(root, **SMALL, category=request.param)
    return request.param, root, sheet


def test_layout_marker_and_reader(dataset):
    category, root, sheet = dataset
    types = FAMILIES[category].defect_types
    assert sheet == root / "contact_sheet.png" and read_image(sheet).shape[0] > (1 + len(types)) * 96
    assert json.loads((root / MARKER).read_text())["category"] == category
    cat = MVTecCategory(root, check_files=True)
    assert cat.defect_types == sorted(types)
    assert len(cat.train_good()) == 2 and len(cat.test_items(["good"])) == 1
    assert all(len(cat.defective_items([t])) == 3 for t in types)


def test_every_mask_is_exactly_the_change_and_on_the_part(dataset):
    """Re-render each defect image's good part from its child seed: the mask is binary, non-empty, inside the part
    region the family defines, and is exactly the set of pixels that differ from the good part."""
    category, root, _ = dataset
    fam = family(category)
    for gi, kind in enumerate(fam.defect_types, start=2):  # groups 0 and 1 are train/good and test/good
        for i in range(SMALL["n_defect"]):
            good, part = fam.render_part(np.random.default_rng([SMALL["seed"], gi, i]), SMALL["res"])
            image = read_image(root / "test" / kind / f"{i:03d}.png")
            raw = cv2.imread(str(root / "ground_truth" / kind / f"{i:03d}_mask.png"), cv2.IMREAD_UNCHANGED)
            assert raw.shape == image.shape[:2] == (64, 64) and set(np.unique(raw).tolist()) == {0, 255}, kind
            mask = raw > 0
            assert not (mask & (part == 0)).any(), f"{kind} {i}: label off the part"
            assert np.array_equal((image != good).any(axis=2), mask), f"{kind} {i}: mask is not the change"


@pytest.mark.parametrize("category", NEW)
def test_part_region_is_the_bright_object(category):
    """The part mask the tests rely on is the object: a sizeable region, clearly brighter than the table."""
    img, part = family(category).render_part(np.random.default_rng(3), 96)
    grey = img.mean(axis=2)
    assert 0.25 < part.mean() < 0.7
    assert grey[part > 0].mean() > grey[dilate(part, 3) == 0].mean() + 50


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    category, root, _ = dataset
    again = tmp_path / "again"
    make_dataset(again, **SMALL, category=category)
    assert _files(again) == _files(root)
    other = tmp_path / "other"
    make_dataset(other, **{**SMALL, "seed": 6}, category=category)
    a, b = _files(root), _files(other)
    assert a.keys() == b.keys()
    kind = FAMILIES[category].defect_types[0]
    assert a["train/good/000.png"] != b["train/good/000.png"]
    assert a[f"ground_truth/{kind}/000_mask.png"] != b[f"ground_truth/{kind}/000_mask.png"]


def test_counts_are_independent(dataset, tmp_path):
    category, root, _ = dataset
    more = tmp_path / "more"
    make_dataset(more, **{**SMALL, "n_good": 4, "n_defect": 1}, category=category)
    kind = FAMILIES[category].defect_types[-1]
    for name in (f"test/{kind}/000.png", f"ground_truth/{kind}/000_mask.png", "train/good/001.png"):
        assert (more / name).read_bytes() == (root / name).read_bytes(), name


def _draws(category: str, kind: str, n: int = 8, res: int = 96):
    """(good image, defective image, mask, part) for n parts of the family."""
    fam = family(category)
    out = []
    for i in range(n):
        rng = np.random.default_rng([11, i])
        good, part = fam.render_part(rng, res)
        image, mask = fam.draw_defect(good, part, kind, rng)
        out.append((good, image, mask > 0, part > 0))
    return out


def _area(draw) -> float:
    _, _, mask, part = draw
    return mask.sum() / part.sum()


def _contrast(draw) -> float:
    """Mean grey change inside the mask against the same surface without the defect."""
    good, image, mask, _ = draw
    return float(np.abs(image.mean(axis=2) - good.mean(axis=2))[mask].mean())


def _lighter_than_surround(draw) -> float:
    """Mean grey inside the mask minus the mean of a 3 px ring around it on the part."""
    _, image, mask, part = draw
    grey = image.mean(axis=2)
    ring = (dilate(mask.astype(np.uint8), 3) > 0) & ~mask & part
    return float(grey[mask].mean() - grey[ring].mean())


def test_sizes_span_pits_to_large_stains():
    stains = [_area(d) for d in _draws("plate", "stain")]
    assert max(stains) >= 0.15 and min(stains) > 0.02
    pits = [_area(d) for d in _draws("plate", "pit")]
    assert max(pits) < 0.02 and min(pits) > 0.001
    spots = [_area(d) for d in _draws("fabric", "spot")]
    assert 0.01 < np.median(spots) < 0.15


def test_contrast_spans_faint_to_strong_and_bright():
    assert np.mean([_contrast(d) for d in _draws("plate", "stain")]) <= 8  # a few grey levels
    assert np.mean([_contrast(d) for d in _draws("fabric", "fold")]) <= 10
    assert min(_contrast(d) for d in _draws("plate", "pit")) >= 15
    assert min(_contrast(d) for d in _draws("fabric", "tear")) >= 20
    assert min(_lighter_than_surround(d) for d in _draws("plate", "burr")) > 10  # a glint, lighter than the plate


@pytest.mark.parametrize(("category", "kind"), [("plate", "scratch"), ("fabric", "thread")])
def test_strokes_are_thin(category, kind):
    """At 96 px a scratch or loose thread is a line a few pixels wide, not a blob."""
    for _, _, mask, _ in _draws(category, kind, n=4):
        depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
        assert depth.max() <= 3.0 and mask.sum() > 8 * depth.max() ** 2


@pytest.mark.parametrize("category", NEW)
def test_defects_scale_with_the_resolution(category):
    """Each type covers a similar share of the part at 64 and 192 px (sizes are fractions of the part; a defect of
    fixed pixel size would cover 9x less at 192)."""
    for kind in FAMILIES[category].defect_types:
        small, large = (np.mean([_area(d) for d in _draws(category, kind, n=6, res=r)]) for r in (64, 192))
        assert 1 / 3 < large / small < 3, kind


def test_nuts_is_the_default(tmp_path):
    make_dataset(tmp_path / "a", res=32, n_good=2, n_defect=1, n_test_good=1, seed=3)
    make_dataset(tmp_path / "b", res=32, n_good=2, n_defect=1, n_test_good=1, seed=3, category="nuts")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert json.loads((tmp_path / "a" / MARKER).read_text())["category"] == "nuts"


def test_bad_category_and_resolution(tmp_path):
    with pytest.raises(DataError, match=r"unknown category 'plat' \(did you mean 'plate'\?\)"):
        make_dataset(tmp_path / "x", category="plat")
    with pytest.raises(DataError, match="res must be an integer between 32 and 1024 for category fabric"):
        make_dataset(tmp_path / "x", res=16, category="fabric")
    with pytest.raises(DataError, match=r"unknown defect type 'crack'.*scratch"):
        family("plate").draw_defect(*family("plate").render_part(np.random.default_rng(0), 32), "crack",
                                    np.random.default_rng(0))


def test_cli_category(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cloth"
    result = runner.invoke(app, ["make-data", str(out), "--res", "32", "--n-good", "1", "--n-defect", "1",
                                 "--n-test-good", "0", "--category", "fabric"])
    assert result.exit_code == 0, result.output
    assert "fabric" in result.output and sorted(p.name for p in (out / "test").iterdir()) == sorted(
        FAMILIES["fabric"].defect_types)
    bad = runner.invoke(app, ["make-data", str(tmp_path / "y"), "--category", "wood"])
    assert bad.exit_code == 2 and "unknown category 'wood'" in bad.output
