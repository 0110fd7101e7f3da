"""Downstream benchmark: the few-shot split (first third by sorted name) and the validation split inside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from downstream.split import split_category, validation_split

from defectgen.data.mvtec import MVTecCategory
from defectgen.data.procedural import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nuts")
    make_dataset(root, res=32, n_good=3, n_defect=7, n_test_good=2, seed=3)
    return root


def test_split_holds_in_the_first_third_by_sorted_name(data: Path) -> None:
    cat = MVTecCategory(data)
    split = split_category(cat)
    assert split.types == ["crack", "cut", "hole", "print"]
    for t in split.types:
        names = sorted(i.image_path.name for i in cat.defective_items([t]))
        assert [i.image_path.name for i in split.held_in[t]] == names[:3]  # ceil(7 / 3)
        assert [i.image_path.name for i in split.held_out[t]] == names[3:]
    assert len(split.test_good) == 2 and len(split.train_good) == 3


def test_split_of_eighteen_holds_in_six(tmp_path: Path) -> None:
    make_dataset(tmp_path, res=16, n_good=1, n_defect=18, n_test_good=1, seed=0)
    split = split_category(MVTecCategory(tmp_path))
    assert {t: len(v) for t, v in split.held_in.items()} == dict.fromkeys(split.types, 6)
    assert {t: len(v) for t, v in split.held_out.items()} == dict.fromkeys(split.types, 12)
    assert [i.image_path.stem for i in split.held_in["hole"]] == [f"{k:03d}" for k in range(6)]


def test_split_ignores_listing_order(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = MVTecCategory(data)
    first = split_category(cat)
    original = MVTecCategory.defective_items
    monkeypatch.setattr(MVTecCategory, "defective_items", lambda self, types=None: original(self, types)[::-1])
    again = split_category(cat)
    assert {t: [i.image_path for i in v] for t, v in again.held_in.items()} == {
        t: [i.image_path for i in v] for t, v in first.held_in.items()}


def test_validation_split_never_touches_held_out_or_test_images(data: Path) -> None:
    full = split_category(MVTecCategory(data))
    val = validation_split(full)
    forbidden = {i.image_path for v in full.held_out.values() for i in v} | {i.image_path for i in full.test_good}
    used = {i.image_path for s in (val.held_in, val.held_out) for v in s.values() for i in v}
    used |= {i.image_path for i in val.train_good + val.test_good}
    assert not used & forbidden
    for t in full.types:
        assert val.held_in[t] and val.held_out[t]
        assert not {i.image_path for i in val.held_in[t]} & {i.image_path for i in val.held_out[t]}
    assert not {i.image_path for i in val.train_good} & {i.image_path for i in val.test_good}
