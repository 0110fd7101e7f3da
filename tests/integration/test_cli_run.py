"""`defectgen run` end to end on the toy bundle: layout, read-back, resolution, resume, shards, determinism."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke, jobs_log, make_images, pngs

from defectgen.data.imageio import read_image, read_mask
from defectgen.data.masks import dilate
from defectgen.data.mvtec import MVTecCategory
from defectgen.runtime.jobs.compose import Crop, feather_px


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, run_bundle: Callable[..., Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("run")
    make_images(root / "images", 3, masks=root / "masks")
    make_images(root / "big", 2, h=100, w=140, seed=1, masks=root / "big_masks")
    return {"root": root, "bundle": run_bundle(root / "bundle"), "bundle16": run_bundle(root / "bundle16", res=16)}


def _run(s: dict[str, Path], out: Path, *extra: object, images: str = "images") -> tuple[int, str, str]:
    return invoke("run", "--bundle", s["bundle"], "--images", s["root"] / images, "--out", out, *extra)


def test_random_masks_write_an_mvtec_category(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = _run(setup, out, "--random-masks", 2)
    assert code == 0, stderr
    assert "6 generated" in stdout and "contact_sheet.png" in stdout
    log = jobs_log(out)
    assert len(log) == 6 and {r["status"] for r in log} == {"ok"}
    assert {r["type"] for r in log} == {"crack", "hole"}  # random masks cycle through the bundle's types
    rec = log[0]
    assert len(rec["objective"]) == rec["steps_run"] + 1 and set(rec["final_terms"]) >= {"mask", "bg", "prior"}
    assert rec["inputs"]["mask"] == "random" and rec["inputs"]["reference"].startswith("defect_bank/")
    cat = MVTecCategory(out, check_files=True)  # the reader takes the output back as a category
    assert cat.defect_types == ["crack", "hole"] and len(cat.defective_items()) == 6
    assert len(cat.train_good()) == 3  # each source part once, under train/good
    for item in cat.defective_items():
        image, mask = item.load()
        assert image.shape == (40, 56, 3) and mask.any()
    assert read_image(out / "contact_sheet.png").ndim == 3
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["steps"] == 10 and run["info"]["backend"] == "ort-cpu"
    code, stdout, _ = _run(setup, out, "--random-masks", 2)  # resume: nothing left to do
    assert code == 0 and "0 generated, 6 already done" in stdout and len(jobs_log(out)) == 6


def test_full_resolution_background_bit_exact(setup: dict[str, Path], tmp_path: Path) -> None:
    """100x140 parts through a 16 px model: same size out, untouched outside the feathered band."""
    out = tmp_path / "out"
    code, _, stderr = invoke("run", "--bundle", setup["bundle16"], "--images", setup["root"] / "big",
                             "--masks", setup["root"] / "big_masks", "--out", out, "--types", "hole")
    assert code == 0, stderr
    px = feather_px(Crop(0, 0, 100, 140), 16, 1.0)  # the toy's feather_px is 1 model pixel
    for rec in jobs_log(out):
        src = setup["root"] / "big" / rec["inputs"]["image"]
        good, result = read_image(src), read_image(out / rec["outputs"]["image"])
        target = read_mask(setup["root"] / "big_masks" / rec["inputs"]["mask"])
        assert result.shape == good.shape == (100, 140, 3)
        outside = dilate(target, px) == 0
        assert np.array_equal(result[outside], good[outside])
        assert not np.array_equal(result[target > 0], good[target > 0])
        assert np.array_equal(read_mask(out / rec["outputs"]["mask"]), target)  # --mask-mode target


def test_mask_mode_generated_stays_near_target(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, stderr = invoke("run", "--bundle", setup["bundle16"], "--images", setup["root"] / "big",
                             "--masks", setup["root"] / "big_masks", "--out", out, "--mask-mode", "generated")
    records = jobs_log(out)
    ok = [r for r in records if r["status"] == "ok"]
    assert ok, f"every job failed: {stderr}"  # the toy's mask head may draw nothing near *some* targets
    assert code == (0 if len(ok) == len(records) else 1), stderr  # and those fail cleanly, with exit 1
    for rec in records:
        if rec["status"] == "ok":
            target = read_mask(setup["root"] / "big_masks" / rec["inputs"]["mask"])
            got = read_mask(out / rec["outputs"]["mask"])
            assert got.any() and not (got & (1 - dilate(target, feather_px(Crop(0, 0, 100, 140), 16, 1)))).any()
        else:
            assert "generated mask is empty" in rec["error"]


def test_shards_cover_the_set_exactly_once(setup: dict[str, Path], tmp_path: Path) -> None:
    code, _, _ = _run(setup, tmp_path / "all", "--random-masks", 3, "--batch", 1)
    assert code == 0
    every = {r["id"]: r for r in jobs_log(tmp_path / "all")}
    shared = tmp_path / "shared"
    seen: list[str] = []
    for k in range(3):
        code, _, stderr = _run(setup, tmp_path / f"s{k}", "--random-masks", 3, "--shard", f"{k}/3")
        assert code == 0, stderr
        ids = [r["id"] for r in jobs_log(tmp_path / f"s{k}")]
        assert all(every[i]["index"] % 3 == k for i in ids)
        seen += ids
        assert _run(setup, shared, "--random-masks", 3, "--shard", f"{k}/3")[0] == 0  # shards may share OUT
    assert sorted(seen) == sorted(every)  # a partition: each job in exactly one shard
    assert sorted(r["id"] for r in jobs_log(shared)) == sorted(every)
    assert [p.relative_to(shared) for p in pngs(shared) if "test" in p.parts] == \
        [p.relative_to(tmp_path / "all") for p in pngs(tmp_path / "all") if "test" in p.parts]


def test_same_seed_same_bytes_other_seed_differs(setup: dict[str, Path], tmp_path: Path) -> None:
    outs = [tmp_path / n for n in ("a", "b", "c")]
    for out, seed in zip(outs, (5, 5, 6), strict=True):
        assert _run(setup, out, "--random-masks", 2, "--seed", seed, "--init", "random")[0] == 0

    def files(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in pngs(out) if p.name != "contact_sheet.png"}

    assert files(outs[0]) == files(outs[1])
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in jobs_log(outs[0])]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in jobs_log(outs[1])]
    assert files(outs[0]) != files(outs[2])


def test_jsonl_jobs_with_reference_and_mvtec_source(setup: dict[str, Path], tmp_path: Path) -> None:
    root = setup["root"]
    lines = [{"image": "images/part_00.png", "mask": "masks/part_00.png", "type": "hole"},
             {"image": "images/part_01.png", "mask": None, "type": "crack", "seed": 3,
              "reference": ["images/part_02.png", "masks/part_02.png"]}]
    jobs = root / "list.jsonl"
    jobs.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    code, _, stderr = invoke("run", "--bundle", setup["bundle"], "--jobs", jobs, "--out", out)
    assert code == 0, stderr
    log = jobs_log(out)
    assert [r["type"] for r in log] == ["hole", "crack"] and log[1]["seed"] == 3
    assert log[1]["inputs"]["reference"].endswith("part_02.png") and log[0]["inputs"]["mask"] == "masks/part_00.png"
    cat = root / "cat"
    make_images(cat / "train" / "good", 2)
    make_images(cat / "test" / "good", 1, seed=4)
    code, _, stderr = invoke("run", "--bundle", setup["bundle"], "--mvtec", cat, "--out", tmp_path / "mv",
                             "--random-masks", 1, "--types", "crack")
    assert code == 0, stderr
    assert [r["inputs"]["image"] for r in jobs_log(tmp_path / "mv")] == [
        "train/good/part_00.png", "train/good/part_01.png", "test/good/part_00.png"]
    assert len(MVTecCategory(tmp_path / "mv").train_good()) == 3  # distinct names for equal stems


def test_demo_on_the_toy_bundle(setup: dict[str, Path], tmp_path: Path) -> None:
    code, stdout, stderr = invoke("demo", "--bundle", setup["bundle"], "--out", tmp_path / "demo")
    assert code == 0, stderr
    assert "contact sheet" in stdout
    cat = MVTecCategory(tmp_path / "demo", check_files=True)
    n_examples = len(list((Path(__file__).resolve().parents[2] / "defectgen/assets/examples").glob("*.png")))
    assert 1 <= n_examples <= 6
    assert len(cat.defective_items(["crack"])) == len(cat.defective_items(["hole"])) == n_examples


def test_guide_weight_one_with_detail_pastes_the_stitched_guide(setup: dict[str, Path], tmp_path: Path) -> None:
    """`--guide-weight 1` + detail = the full-resolution stitched reference inside the mask (warped copy-paste);
    without detail it is that guide through the model's resolution (smooth); both recorded per job."""
    from defectgen.runtime.bundle import Bundle
    from defectgen.runtime.jobs.folder_run import Source, make_request
    from defectgen.runtime.jobs.prepare import prepare

    root = setup["root"]
    line = {"image": "big/part_00.png", "mask": "big_masks/part_00.png", "type": "hole",
            "reference": ["big/part_01.png", "big_masks/part_01.png"]}
    jobs = root / "guide.jsonl"
    jobs.write_text(json.dumps(line) + "\n")
    results = {}
    for name, flag in (("detail", "--detail"), ("smooth", "--no-detail")):
        out = tmp_path / name
        code, _, stderr = invoke("run", "--bundle", setup["bundle16"], "--jobs", jobs, "--out", out,
                                 "--guide-weight", 1, flag, "--threads", 1)
        assert code == 0, stderr
        (rec,) = jobs_log(out)
        assert rec["guide_weight"] == 1.0 and rec["detail"] is (name == "detail")
        results[name] = read_image(out / rec["outputs"]["image"])
    request = make_request(bundle=Bundle.load(setup["bundle16"]), source=Source("jobs", jobs), types=None, seed=0,
                           guide_weight=1.0)
    guide = prepare(next(iter(request.jobs())), request.bundle, request.settings).guide
    inside = read_mask(root / "big_masks" / "part_00.png") > 0
    err = {k: np.abs(v[inside].astype(int) - guide[inside]).mean() for k, v in results.items()}
    assert err["detail"] <= 0.5 < err["smooth"]


def test_surface_detail_adds_the_good_parts_grain_not_the_reference(setup: dict[str, Path], tmp_path: Path) -> None:
    """`--detail-from surface`: what the output gains over `--no-detail` inside the mask is the good part's own
    detail above the model's resolution, not the stitched reference's (the reference source's gain); recorded."""
    from defectgen.data.imageio import to_model
    from defectgen.runtime.jobs.compose import upsample

    root = setup["root"]
    line = {"image": "big/part_00.png", "mask": "big_masks/part_00.png", "type": "hole",
            "reference": ["big/part_01.png", "big_masks/part_01.png"]}
    jobs = root / "detail_from.jsonl"
    jobs.write_text(json.dumps(line) + "\n")
    out: dict[str, np.ndarray] = {}
    for name, flags in (("smooth", ["--no-detail"]), ("surface", ["--detail-from", "surface"]),
                        ("reference", ["--detail-from", "reference"])):
        code, _, stderr = invoke("run", "--bundle", setup["bundle16"], "--jobs", jobs, "--out", tmp_path / name,
                                 "--guide-weight", 1, "--threads", 1, *flags)
        assert code == 0, stderr
        (rec,) = jobs_log(tmp_path / name)
        assert rec["detail_from"] == (None if name == "smooth" else name) and rec["detail"] is (name != "smooth")
        out[name] = read_image(tmp_path / name / rec["outputs"]["image"]).astype(float)
    good = read_image(root / "big" / "part_00.png")
    grain = good - np.clip((upsample(to_model(good, 16), good.shape[:2]) + 1.0) * 127.5, 0, 255)  # what 16 px drops
    inside = read_mask(root / "big_masks" / "part_00.png") > 0

    def gain_vs_grain(name: str) -> float:
        return float(np.corrcoef((out[name] - out["smooth"])[inside].ravel(), grain[inside].ravel())[0, 1])

    assert gain_vs_grain("surface") > 0.9
    assert gain_vs_grain("reference") < 0.5


def test_random_masks_take_the_reference_shape_unless_procedural(setup: dict[str, Path], tmp_path: Path) -> None:
    """`--mask-shape reference` (default): a random target is the reference's own mask, moved (same-size images:
    not rescaled); `procedural` draws the type's shape family instead."""
    root = setup["root"]
    line = {"image": "big/part_00.png", "mask": None, "type": "hole",
            "reference": ["big/part_01.png", "big_masks/part_01.png"]}
    jobs = root / "shape.jsonl"
    jobs.write_text(json.dumps(line) + "\n")
    ref_area = int(read_mask(root / "big_masks" / "part_01.png").sum())
    masks = {}
    for shape in ("reference", "procedural"):
        out = tmp_path / shape
        code, _, stderr = invoke("run", "--bundle", setup["bundle16"], "--jobs", jobs, "--out", out,
                                 "--mask-shape", shape, "--guide-weight", 1)
        assert code == 0, stderr
        (rec,) = jobs_log(out)
        assert rec["mask_shape"] == shape
        masks[shape] = read_mask(out / rec["outputs"]["mask"])
    assert 0.9 * ref_area <= masks["reference"].sum() <= ref_area  # clipped to the part at most
    assert not np.array_equal(masks["reference"], masks["procedural"])


def test_one_job_runs_the_batch_1_graph_and_many_the_largest(setup: dict[str, Path], tmp_path: Path) -> None:
    for name, n, want in (("one", 1, 1), ("many", 3, 4)):
        out = tmp_path / name
        code, _, err = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images",
                              "--random-masks", 1, "--types", "crack", "--shard", f"0/{4 - n}", "--out", out)
        assert code == 0, err
        assert json.loads((out / "run.json").read_text())["info"]["batch"] == want
    code, _, err = invoke("run", "--bundle", setup["bundle"], "--images", setup["root"] / "images",
                          "--random-masks", 1, "--batch", 4, "--shard", "0/3", "--out", tmp_path / "forced")
    assert code == 0 and json.loads((tmp_path / "forced" / "run.json").read_text())["info"]["batch"] == 4
