"""`defectgen run` with a patch-mode bundle: a window around each target at the bundle's pixel scale (or
`--scale`; auto keeps it for a bundle that records no training part size), recorded per job; the background
stays bit-exact; `--variants K` gives K defects per target."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke, jobs_log, make_images

from defectgen.data.imageio import read_image, read_mask
from defectgen.runtime.bundle import Bundle


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, toy_model: Callable[..., object],
          toy_bundle_factory: Callable[..., Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("patch")
    make_images(root / "images", 2, h=100, w=140, seed=3, masks=root / "masks")
    bundle = toy_bundle_factory(root / "bundle", model=toy_model(res=16), patch_scale=1.0)
    return {"root": root, "bundle": bundle}


def _run(s: dict[str, Path], out: Path, *extra: object) -> tuple[int, str, str]:
    return invoke("run", "--bundle", s["bundle"], "--images", s["root"] / "images", "--masks", s["root"] / "masks",
                  "--out", out, "--steps", 2, "--backend", "ort-cpu", *extra)


def test_patch_window_around_each_target(setup: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = _run(setup, tmp_path / "out")
    assert code == 0, err
    for rec in jobs_log(tmp_path / "out"):
        mask = read_mask(setup["root"] / "masks" / rec["inputs"]["mask"])
        y0, x0, y1, x1 = rec["window"]["box"]
        ys, xs = np.nonzero(mask)
        assert y0 <= ys.min() and ys.max() < y1 and x0 <= xs.min() and xs.max() < x1  # the target is inside
        assert rec["window"]["scale"] == (max(y1 - y0, x1 - x0) / 16) and rec["init"] == "wavg"
        src = read_image(setup["root"] / "images" / rec["inputs"]["image"])
        out = read_image(tmp_path / "out" / rec["outputs"]["image"])
        outside = np.ones(mask.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(out[outside], src[outside])  # nothing changes outside the window


def test_scale_option_sets_the_window(setup: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = _run(setup, tmp_path / "out", "--scale", 4)  # the toy targets are about 40 px wide
    assert code == 0, err
    for w in (r["window"] for r in jobs_log(tmp_path / "out")):
        assert (w["box"][2] - w["box"][0], w["box"][3] - w["box"][1]) == (64, 64)
        assert w["scale"] == 4.0 and not w["enlarged"]
    code, _, err = _run(setup, tmp_path / "small", "--scale", 1)  # a 16 px window cannot hold them: enlarged
    assert code == 0, err
    assert all(r["window"]["enlarged"] and r["window"]["scale"] > 1 for r in jobs_log(tmp_path / "small"))
    code, _, err = _run(setup, tmp_path / "auto", "--scale", "auto")  # the default, by name
    assert code == 0, err
    assert all(r["window"]["scale_from"] == "bundle: it records no training part size"  # an older bundle
               and r["window"]["base_scale"] == 1.0 for r in jobs_log(tmp_path / "auto"))
    code, _, err = _run(setup, tmp_path / "bad", "--scale", "x4")
    assert code == 2 and "--scale x4: needs a number > 0" in err and not (tmp_path / "bad").exists()


def test_variants_give_different_defects_for_one_target(setup: dict[str, Path], tmp_path: Path) -> None:
    code, stdout, err = _run(setup, tmp_path / "out", "--variants", 3)
    assert code == 0, err
    recs = jobs_log(tmp_path / "out")
    assert len(recs) == 6 and sorted(r["variant"] for r in recs) == [0, 0, 1, 1, 2, 2]
    first = sorted((r for r in recs if r["inputs"]["image"] == recs[0]["inputs"]["image"]), key=lambda r: r["variant"])
    images = [read_image(tmp_path / "out" / r["outputs"]["image"]).astype(int) for r in first]
    masks = [read_mask(tmp_path / "out" / r["outputs"]["mask"]) for r in first]
    assert all(np.array_equal(m, masks[0]) for m in masks)  # one target
    inside = masks[0] > 0
    assert all(np.abs(a[inside] - b[inside]).mean() > 1 for a, b in [(images[0], images[1]), (images[1], images[2])])


def test_scale_is_refused_for_a_whole_part_bundle(tmp_path: Path, run_bundle: Callable[..., Path]) -> None:
    make_images(tmp_path / "images", 1)
    code, _, err = invoke("run", "--bundle", run_bundle(tmp_path / "b"), "--images", tmp_path / "images",
                          "--random-masks", 1, "--out", tmp_path / "out", "--scale", 2)
    assert code == 2 and "patch-mode bundles only" in err and not (tmp_path / "out").exists()


def test_generated_targets_are_the_generators_own_proposals(setup: dict[str, Path], tmp_path: Path) -> None:
    def run(out: Path, *extra: object) -> list[dict]:
        code, _, err = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images",
                              "--random-masks", 1, "--mask-shape", "generated", "--out", out, "--steps", 2,
                              "--backend", "ort-cpu", *extra)
        assert code == 0, err
        return sorted(jobs_log(out), key=lambda r: r["index"])

    recs = run(tmp_path / "a", "--variants", 2, "--proposals", 6)
    assert len(recs) == 4 and all(r["mask_shape"] == "generated" for r in recs)
    for r in recs:  # the kept draw of 6, and the toy critic's score of it (none when no draw was whole)
        score = r["proposal"]["score"]
        assert 0 <= r["proposal"]["draw"] < 6 and r["proposal"]["draws"] == 6 and (score is None or np.isfinite(score))
    masks = [read_mask(tmp_path / "a" / r["outputs"]["mask"]) for r in recs]
    for rec, mask in zip(recs, masks, strict=True):
        y0, x0, y1, x1 = rec["window"]["box"]
        inside = np.zeros(mask.shape, bool)
        inside[y0:y1, x0:x1] = True
        assert mask[inside].any() and not mask[~inside].any()  # G's mask, within its window
        src = read_image(setup["root"] / "images" / rec["inputs"]["image"])
        out = read_image(tmp_path / "a" / rec["outputs"]["image"])
        assert np.array_equal(out[~inside], src[~inside])
    assert not np.array_equal(masks[0], masks[1])  # variants: two proposals, two targets
    code, _, err = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images",
                          "--random-masks", 1, "--mask-shape", "generated", "--out", tmp_path / "a", "--steps", 2,
                          "--variants", 2, "--proposals", 5)
    assert code == 2 and "proposals" in err  # run.json pins the number of proposals
    again = run(tmp_path / "b", "--variants", 2, "--proposals", 6)
    assert all(np.array_equal(m, read_mask(tmp_path / "b" / r["outputs"]["mask"]))
               for m, r in zip(masks, again, strict=True))  # seeded
    code, _, err = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images",
                          "--random-masks", 1, "--out", tmp_path / "ref", "--steps", 2, "--backend", "ort-cpu")
    assert code == 0, err
    assert all(r["proposal"] is None for r in jobs_log(tmp_path / "ref"))
    lr, proposal_lr = Bundle.load(setup["bundle"]).defaults.lr, Bundle.load(setup["bundle"]).defaults.proposal_lr
    assert proposal_lr < lr and all(r["lr"] == lr for r in jobs_log(tmp_path / "ref"))
    assert all(r["lr"] == proposal_lr for r in recs)  # G proposed these targets: the gentler steps
    assert json.loads((tmp_path / "a" / "run.json").read_text())["identity"]["proposal_lr"] == proposal_lr
    given = run(tmp_path / "lr", "--lr", 0.02)  # a given --lr applies to every job
    assert all(r["lr"] == 0.02 for r in given)
    d = Bundle.load(setup["bundle"]).defaults  # without --steps a proposed job takes the bundle's proposal steps
    code, _, err = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images",
                          "--random-masks", 1, "--mask-shape", "generated", "--out", tmp_path / "k",
                          "--backend", "ort-cpu")
    assert code == 0, err
    assert d.proposal_steps < d.steps
    assert all(r["steps"] == d.proposal_steps and r["steps_run"] <= d.proposal_steps for r in jobs_log(tmp_path / "k"))
    assert json.loads((tmp_path / "k" / "run.json").read_text())["identity"]["proposal_steps"] == d.proposal_steps
    assert all(r["steps"] == 2 for r in given)  # ... and a given --steps applies to every job
    code, _, err = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images",
                          "--random-masks", 1, "--mask-shape", "generated", "--out", tmp_path / "bad", "--proposals", 0)
    assert code == 2 and "--proposals must be within [1, 1024]" in err and not (tmp_path / "bad").exists()
    code, _, err = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images",
                          "--random-masks", 1, "--mask-shape", "reference", "--out", tmp_path / "bad", "--proposals", 8)
    assert code == 2 and "--mask-shape generated only" in err and not (tmp_path / "bad").exists()

