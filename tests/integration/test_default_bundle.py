"""The embedded default bundle: it validates, the Adam loop lowers its objective, and `demo` runs on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import invoke

from defectgen.api import Generator
from defectgen.data.imageio import mask_to_model, read_image, read_mask, to_model
from defectgen.data.masks import part_mask, random_mask
from defectgen.data.mvtec import MVTecCategory, list_images
from defectgen.data.part_size import measure_part_size
from defectgen.data.stitching import stitch
from defectgen.runtime.backends import load_backend
from defectgen.runtime.bundle import Bundle, default_bundle_path
from defectgen.runtime.jobs.invert import InversionBatch, InversionConfig, invert

EXAMPLES = default_bundle_path().parent / "examples"


def _batch(bundle: Bundle, types: list[str], seed: int) -> InversionBatch:
    rng = np.random.default_rng(seed)
    res = bundle.resolution
    good, mask, stitched = [], [], []
    for path, t in zip(list_images(EXAMPLES), types, strict=False):
        img = read_image(path)
        m = random_mask(t, part_mask(img), rng)
        ref_img, ref_mask = bundle.bank(t)[0]
        s = stitch(img, read_image(ref_img), read_mask(ref_mask), m, feather_px=2, rng=rng)
        good.append(to_model(img, res))
        mask.append(mask_to_model(m, res))
        stitched.append(to_model(s, res))
    return InversionBatch(good=np.stack(good), mask=np.stack(mask), stitched=np.stack(stitched), types=types)


def test_default_bundle_validates_and_names_its_types():
    b = Bundle.load()
    assert b.defect_types[0] == "good" and set(b.defect_types[1:]) == {"crack", "cut", "hole", "print"}
    assert b.spaces == ["wplus", "w", "z"] and all(b.step_batches(s) == [1, 4, 8] for s in b.spaces)
    assert b.patch is not None and b.has_encoder and b.defaults.init == "encoder"
    assert b.has_critic and b.defaults.mask_shape == "generated"  # D ranks G's proposals
    assert b.defaults.guide_weight == 0.0  # the generator's pixels are the output
    size = sum(p.stat().st_size for p in default_bundle_path().rglob("*") if p.is_file())
    assert size <= 25e6, f"the embedded bundle is {size / 1e6:.1f} MB, over the 25 MB package budget"


def test_every_shipped_graph_passed_parity_and_finite_differences():
    report = json.loads((default_bundle_path() / "verify.json").read_text(encoding="utf-8"))
    checked = {(c["file"], c["inputs"]) for c in report["checks"] if c["passed"]}
    steps = {f"step_{s}_b{n}.onnx" for s in ("wplus", "w", "z") for n in (1, 4, 8)}
    assert report["passed"] and {(f, i) for f in steps for i in ("random", "real")} <= checked
    assert all(c["fd"] and max(c["fd"]) <= report["bounds"]["fd_rel"] for c in report["checks"] if c["file"] in steps)


@pytest.mark.parametrize("space", ["wplus", "w", "z"])
def test_adam_lowers_the_objective_on_the_default_bundle(space):
    b = Bundle.load()
    batch = _batch(b, ["crack", "cut", "hole", "print"], seed=0)
    cfg = InversionConfig(space=space, steps=10, init=b.defaults.init, seed=0, early_stop_patience=0)
    with load_backend(b, "ort-cpu") as backend:
        res = invert(backend, b, batch, config=cfg)
    obj = res.terms_history.sum(-1)  # (steps+1, B)
    assert not res.failed.any()
    assert obj[-1].mean() < obj[0].mean(), obj[[0, -1]]
    # the result is the best latent seen: never worse than the encoder's start, for every sample
    assert np.all(res.final_terms.sum(-1) <= obj[0] + 1e-7), (res.final_terms.sum(-1), obj[0])
    assert res.image.shape == (4, 3, b.resolution, b.resolution)


def test_demo_on_the_default_bundle(tmp_path):
    code, stdout, stderr = invoke("demo", "--out", tmp_path / "demo")
    assert code == 0, stderr
    cat = MVTecCategory(tmp_path / "demo")
    items = cat.defective_items()
    assert len(items) == 4 * len(list_images(EXAMPLES)) and set(cat.defect_types) == {"crack", "cut", "hole", "print"}
    img, mask = items[0].load()
    assert img.shape[:2] == mask.shape and mask.any()
    assert (tmp_path / "demo" / "contact_sheet.png").is_file()


def _relative_size(image: np.ndarray, mask: np.ndarray) -> float:
    """A label's area over its part's (the part measured as `--scale auto` measures it)."""
    return float(mask.sum()) / measure_part_size(image) ** 2


def _against_small_parts(small: dict[str, list[float]], big: list[tuple[str, float]]) -> float:
    """How large the big part's defects are relative to its part, against the 128 px parts' defects of the
    same type: the geometric median over the big part's jobs of (its relative size / the type's median)."""
    return float(np.exp(np.median([np.log(rel / np.median(small[t])) for t, rel in big])))


def test_the_512px_part_gets_defects_sized_like_the_128px_parts(tmp_path):
    """`--scale auto` (the default): the demo's 512 px part (a nut rendered at 4x) gets defects as large, relative
    to the part, as the 128 px parts get; at the bundle's own scale they were a sixteenth of that."""
    code, _, stderr = invoke("demo", "--out", tmp_path / "demo")
    assert code == 0, stderr
    small, big = {}, []
    for line in (tmp_path / "demo" / "jobs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        image = read_image(EXAMPLES / rec["inputs"]["image"])
        rel = _relative_size(image, read_mask(tmp_path / "demo" / rec["outputs"]["mask"]))
        if image.shape[0] == 128:
            small.setdefault(rec["type"], []).append(rel)
        else:
            big.append((rec["type"], rel))
            assert rec["window"]["scale_from"].startswith("auto: part ") and rec["window"]["base_scale"] > 4.5
    part = read_image(EXAMPLES / "part_4_512px.png")
    with Generator.load(backend="ort-cpu") as gen:  # more of the 512 px part's defects: one part, four jobs
        big += [(d.type, _relative_size(part, d.mask)) for d in gen.generate(part, per_image=16, seed=1) if d.ok]
    with Generator.load(backend="ort-cpu", scale=1.5) as gen:  # the bundle's own scale, as before auto
        before = [(d.type, _relative_size(part, d.mask)) for d in gen.generate(part, per_image=4, seed=1) if d.ok]
    assert len(big) >= 18 and len(before) >= 3
    assert 1 / 1.5 <= _against_small_parts(small, big) <= 1.5
    assert _against_small_parts(small, before) < 1 / 4


def test_the_committed_checkpoints_are_the_shipped_bundle():
    """`models/default/patch_gan` + `patch_encoder` (what the benchmarks' torch reference runs) compute what the
    bundle's graphs compute: the same objective and gradient on the same inputs."""
    import common

    found = common.default_model()
    assert found is not None
    path, G, E, D = found
    b = Bundle.load(path)
    batch = _batch(b, ["crack", "hole"], seed=1)
    with load_backend(b, "ort-cpu") as ort_b:
        latent = ort_b.encode(batch.good, batch.mask)
        got = ort_b.step("wplus", latent, batch.good, batch.mask, batch.stitched, b.lambda_vector())
    want = common.torch_backend(G, E, D, threads=1).step("wplus", latent, batch.good, batch.mask, batch.stitched,
                                                           b.lambda_vector())
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-5)
