"""The procedural dataset: deterministic, readable back as MVTec, masks exactly where the defect was painted."""

from __future__ import annotations

import numpy as np
import pytest

from defectgen import DEFAULT_DEFECT_TYPES
from defectgen.data.contact import contact_sheet
from defectgen.data.imageio import read_image
from defectgen.data.mvtec import MVTecCategory
from defectgen.data.procedural import draw_defect, make_dataset, render_part
from defectgen.errors import DataError

SMALL = {"res": 32, "n_good": 3, "n_defect": 2, "n_test_good": 1}


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("set") / "nuts"
    sheet = make_dataset(root, **SMALL, seed=7)
    return root, sheet


def test_layout_and_reader_round_trip(dataset):
    root, sheet = dataset
    assert sheet == root / "contact_sheet.png" and sheet.is_file()
    cat = MVTecCategory(root, check_files=True)
    assert cat.defect_types == sorted(DEFAULT_DEFECT_TYPES)
    assert [p.image_path.name for p in cat.train_good()] == ["000.png", "001.png", "002.png"]
    assert len(cat.test_items(["good"])) == 1
    for t in DEFAULT_DEFECT_TYPES:
        items = cat.defective_items([t])
        assert [i.image_path.stem for i in items] == ["000", "001"]
        for item in items:
            img, mask = item.load()
            assert img.shape == (32, 32, 3) and mask.shape == (32, 32)
            assert mask.any() and set(np.unique(mask).tolist()) == {0, 1}
    sheet_img = read_image(sheet)  # a row of good parts + one row per type
    assert sheet_img.shape[0] > 5 * 96 and sheet_img.shape[1] > 3 * 96


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    root, _ = dataset
    again = tmp_path / "again"
    make_dataset(again, **SMALL, seed=7)
    assert _files(again) == _files(root)
    other = tmp_path / "other"
    make_dataset(other, **SMALL, seed=8)
    a, b = _files(root), _files(other)
    assert a.keys() == b.keys()
    assert a["train/good/000.png"] != b["train/good/000.png"]
    assert a["ground_truth/crack/000_mask.png"] != b["ground_truth/crack/000_mask.png"]


def test_counts_are_independent(dataset, tmp_path):
    """Per-item child seeds: more good images do not change the defect images."""
    root, _ = dataset
    more = tmp_path / "more"
    make_dataset(more, **{**SMALL, "n_good": 4}, seed=7)
    assert (more / "test/hole/001.png").read_bytes() == (root / "test/hole/001.png").read_bytes()


@pytest.mark.parametrize("res", [32, 64, 128])
def test_draw_defect_mask_is_exactly_the_change(res):
    for i, t in enumerate(DEFAULT_DEFECT_TYPES):
        rng = np.random.default_rng(100 + i)
        img, part = render_part(rng, res)
        assert img.shape == (res, res, 3) and img.dtype == np.uint8
        assert 0.15 < part.mean() < 0.6
        out, mask = draw_defect(img, part, t, rng)
        changed = (out != img).any(axis=2)
        assert mask.any() and not (changed & (mask == 0)).any(), t  # nothing changed outside the mask
        assert changed[mask > 0].mean() > 0.9, t  # and the mask is (almost) all visible change
        assert not (mask & (1 - part)).any(), t  # on the part


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_defects_look_like_their_type(seed):
    img, part = render_part(np.random.default_rng(seed), 96)
    gray = img.mean(axis=2)
    p5, p50 = np.percentile(gray[part > 0], [5, 50])
    looks = {}
    for t in DEFAULT_DEFECT_TYPES:
        out, mask = draw_defect(img, part, t, np.random.default_rng(seed + 1))
        looks[t] = out.mean(axis=2)[mask > 0]
    assert looks["hole"].min() < p5 - 8 and looks["crack"].min() < p5 - 8  # pits and fissures: darkest spots
    assert looks["cut"].max() > p50 + 40  # a cut exposes the pale kernel


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="res"):
        make_dataset(tmp_path / "a", res=8)
    with pytest.raises(DataError, match="n_good"):
        make_dataset(tmp_path / "a", n_good=0)
    with pytest.raises(DataError, match="n_defect"):
        make_dataset(tmp_path / "a", n_defect=-1)
    with pytest.raises(DataError, match=r"unknown defect type 'crak' \(did you mean 'crack'\?\)"):
        draw_defect(*render_part(np.random.default_rng(0), 32), "crak", np.random.default_rng(0))
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty.*precious"):
        make_dataset(tmp_path / "precious", **SMALL)
    assert (tmp_path / "precious" / "data.txt").read_text() == "mine"


def test_rerun_replaces_its_own_output(tmp_path):
    make_dataset(tmp_path / "d", **{**SMALL, "n_good": 4})
    make_dataset(tmp_path / "d", **SMALL)
    assert sorted(p.name for p in (tmp_path / "d" / "train" / "good").iterdir()) == ["000.png", "001.png", "002.png"]


def test_contact_sheet_outlines_masks(tmp_path):
    img = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 1
    p = contact_sheet([[(img, mask, "with mask"), (img, None, "plain")], [(img, None, "x")]], tmp_path / "s.png",
                      tile=60)
    sheet = read_image(p)
    assert sheet.shape[1] == 2 + 2 * 62
    red = (sheet[..., 0] > 200) & (sheet[..., 1] < 80)
    assert red[:, :62].any() and not red[:, 62:].any()  # the outline only where a mask was given
