"""Patch-mode export (export/patch.py): a tiny random layered patch G (window 16) exported once, then proved.

The bundle must load in the runtime with its patch section and without an encoder, its synthesis graphs must
take the good window, ONNX Runtime must match the torch reference (synthesis, step, and the runtime's own
backend), the step gradient must match finite differences, the `dom` column must stay and be zero, and the
defect bank must hold native-resolution crops of the held-in images only.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from defectgen.data.imageio import read_image, read_mask
from defectgen.data.mvtec import MVTecCategory, list_images
from defectgen.data.part_size import PART_SIZE_RULE, median_part_size
from defectgen.data.procedural import make_dataset
from defectgen.errors import DataError, DefectgenError
from defectgen.export.bank import build_defect_bank, crop_defect
from defectgen.export.bundle import export_bundle
from defectgen.export.graphs import example_inputs, model_dims
from defectgen.export.objective import make_step, to_wplus
from defectgen.export.onnx_tools import FORBIDDEN_OPS
from defectgen.export.testing import TINY_TYPES, tiny_nets, tiny_patch_nets
from defectgen.export.torch_backend import TorchBackend
from defectgen.nets.patch import composite
from defectgen.runtime.backends import load_backend
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.bundle.manifest import LOSS_TERMS, PatchInfo

pytestmark = pytest.mark.slow  # exports two tiny bundles with the parity check (about 40 s)
P, BATCH, SPACES = 16, 2, ["wplus", "z"]
HELD_IN = {t: ["001.png", "002.png"] for t in TINY_TYPES[1:]}  # not the first files: the filter must work
DOM = LOSS_TERMS.index("dom")


@pytest.fixture(scope="module")
def nets():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_patch_nets(P)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("patch_data") / "nuts"
    make_dataset(root, res=96, n_good=3, n_defect=3, n_test_good=1, seed=0)
    return root


@pytest.fixture(scope="module")
def bundle_dir(nets, data, tmp_path_factory):
    G, D = nets
    out = tmp_path_factory.mktemp("patch_export") / "bundle"
    export_bundle(G, None, D, out=out, spaces=SPACES, batches=[BATCH], data_root=data, types=TINY_TYPES,
                  verify=True, patch=PatchInfo(window=P, scale=1.0), held_in=HELD_IN, run_defaults={"steps": 3})
    return out


def _rel(got, want):
    want = np.asarray(want)
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def _sess(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _feeds(kind, nets, space, batch, seed):
    return {k: v.numpy() for k, v in example_inputs(kind, model_dims(nets[0]), space=space, batch=batch,
                                                    seed=seed).items()}


def test_bundle_loads_with_patch_info_no_encoder_and_good_input(bundle_dir, data):
    b = Bundle.load(bundle_dir)
    m = b.manifest
    # the training parts' size, measured as `run --scale auto` measures each image (the median of train/good)
    part = median_part_size(list_images(data / "train" / "good"))
    assert m.patch == PatchInfo(window=P, scale=1.0, part_size_px=round(part, 2), part_size_rule=PART_SIZE_RULE)
    assert b.patch == m.patch and m.resolution == P and 20 < part < 96  # the 96 px parts' size, not the image's
    assert not b.has_encoder and "encoder.onnx" not in m.files and not (bundle_dir / "encoder.onnx").exists()
    assert m.defaults.init == "wavg" and m.defaults.steps == 3 and m.defaults.guide_weight == 0.0
    assert m.default_lambdas["dom"] == 0.0 and m.default_lambdas["mask"] == 1.0
    assert m.defect_types == TINY_TYPES and set(m.w_avg) == set(TINY_TYPES)
    assert np.allclose(m.w_avg["good"], np.mean([m.w_avg[t] for t in TINY_TYPES[1:]], 0), atol=1e-6)
    for space in SPACES:
        names = [t.name for t in m.files[f"synthesis_{space}.onnx"].inputs]
        assert names == ["latent", "good", *(["type_onehot"] if space == "z" else [])]
        assert [i.name for i in _sess(bundle_dir / f"synthesis_{space}.onnx").get_inputs()] == names
    raw = json.loads((bundle_dir / "manifest.json").read_text())
    assert raw["patch"] == {"window": P, "scale": 1.0, "design": "layered", "part_size_px": round(part, 2),
                            "part_size_rule": PART_SIZE_RULE}


def test_verify_report_passed_on_random_and_real_windows(bundle_dir):
    report = json.loads((bundle_dir / "verify.json").read_text())
    assert report["passed"], report
    labels = {(c["file"], c["inputs"]) for c in report["checks"]}
    assert {(f"synthesis_{s}.onnx", k) for s in SPACES for k in ("random", "real")} <= labels
    assert (f"step_wplus_b{BATCH}.onnx", "real") in labels
    assert report["worst"]["grad_rel"] <= 1e-3 and report["worst"]["fd_rel"] <= 1e-2


@pytest.mark.parametrize("space", SPACES)
def test_synthesis_matches_torch_and_is_the_smooth_composite(bundle_dir, nets, space):
    G, D = nets
    x = _feeds("synthesis", nets, space, 5, seed=4)  # a batch size the graph was not exported with
    image, logit = _sess(bundle_dir / f"synthesis_{space}.onnx").run(None, x)
    want = TorchBackend(G, None, D).synthesize(space, x["latent"], x.get("type_onehot"), good=x["good"])
    assert _rel(image, want[0]) <= 1e-3 and _rel(logit, want[1]) <= 1e-3
    # the image is the patch G's colour layer σ(logit)-blended over the good window, not the hard composite
    good = torch.from_numpy(x["good"])
    onehot = torch.from_numpy(x["type_onehot"]) if space == "z" else None
    with torch.no_grad():
        colour, logit_t = G.G.synthesis(to_wplus(G, torch.from_numpy(x["latent"]), space, onehot), good)
        smooth, hard = (composite(good, colour, logit_t, hard=h)[0].numpy() for h in (False, True))
    assert _rel(image, smooth) <= 1e-3 and _rel(image, hard) > 1e-2


@pytest.mark.parametrize("space", SPACES)
def test_step_matches_torch_and_dom_column_is_zero(bundle_dir, nets, space):
    G, D = nets
    x = _feeds("step", nets, space, BATCH, seed=9)
    x["lambdas"] = np.array([1.0, 0.5, 2.0, 1.5, 1.0, 0.01], np.float32)  # λ_dom = 1: still zero
    terms_o, grad_o = _sess(bundle_dir / f"step_{space}_b{BATCH}.onnx").run(None, x)
    terms_t, grad_t = make_step(G, None, D, space)(*(torch.from_numpy(v) for v in x.values()))
    assert terms_o.shape == (BATCH, len(LOSS_TERMS))
    assert np.all(terms_o[:, DOM] == 0) and np.all(terms_t[:, DOM].numpy() == 0)
    assert np.all(np.delete(terms_o, DOM, 1) > 0)  # every other term is live
    assert _rel(terms_o, terms_t) <= 1e-3 and _rel(grad_o, grad_t) <= 1e-3


@pytest.mark.parametrize("space", SPACES)
def test_step_gradient_matches_finite_differences(bundle_dir, nets, space, assert_step_gradient):
    x = _feeds("step", nets, space, BATCH, seed=7)
    sess = _sess(bundle_dir / f"step_{space}_b{BATCH}.onnx")
    assert_step_gradient(sess, x)


def test_runtime_backend_feeds_good_and_matches_torch(bundle_dir, nets):
    b = Bundle.load(bundle_dir)
    tb = TorchBackend(*(nets[0], None, nets[1]), step_batches=[BATCH])
    x = _feeds("step", nets, "wplus", 3, seed=5)  # 3 samples on a b2 graph: padded and chunked
    with load_backend(b, "ort-cpu") as ob:
        got = ob.step("wplus", x["latent"], x["good"], x["mask"], x["stitched"], b.lambda_vector())
        img = ob.synthesize("wplus", x["latent"], good=x["good"])
    want = tb.step("wplus", x["latent"], x["good"], x["mask"], x["stitched"], b.lambda_vector())
    assert _rel(got[0], want[0]) <= 1e-3 and _rel(got[1], want[1]) <= 1e-3
    assert _rel(img[0], tb.synthesize("wplus", x["latent"], good=x["good"])[0]) <= 1e-3
    with pytest.raises(ValueError, match="no encoder"):
        tb.encode(x["good"], x["mask"])


def test_critic_is_ds_per_sample_score_on_the_defect_types(bundle_dir, nets):
    G, D = nets
    b = Bundle.load(bundle_dir)
    assert b.has_critic and b.entry("critic.onnx").role == "critic"
    report = json.loads((bundle_dir / "verify.json").read_text())
    assert {("critic.onnx", "random"), ("critic.onnx", "real")} <= {(c["file"], c["inputs"]) for c in report["checks"]}
    x = _feeds("critic", nets, None, 6, seed=2)
    x["type_onehot"] = np.eye(len(TINY_TYPES), dtype=np.float32)[[1, 2, 1, 2, 1, 2]]  # defect types only
    got = _sess(bundle_dir / "critic.onnx").run(None, x)[0][:, 0]
    with torch.no_grad():  # the patch D sees the defect columns; each sample scored on its own
        want = torch.cat([D(*(torch.from_numpy(v[i:i + 1]) for v in (x["image"], x["mask"])),
                            torch.from_numpy(x["type_onehot"][i:i + 1, 1:])) for i in range(6)])[:, 0].numpy()
    assert _rel(got, want) <= 1e-4
    with load_backend(b, "ort-cpu") as ob:  # the runtime's call: order-independent scores
        order = np.array([3, 0, 5, 1, 4, 2])
        shuffled = ob.critic(*(v[order] for v in x.values()))
    assert _rel(shuffled, got[order]) <= 1e-5


def test_graphs_are_policy_clean(bundle_dir):
    for path in sorted(bundle_dir.glob("*.onnx")):
        model = onnx.load(str(path))
        ops = {n.op_type for n in model.graph.node}
        assert not ops & FORBIDDEN_OPS and "Constant" not in ops, (path.name, ops)


def test_bank_holds_native_resolution_crops_of_held_in_images(bundle_dir, data):
    b = Bundle.load(bundle_dir)
    cat = MVTecCategory(data)
    sides = []
    for t in TINY_TYPES[1:]:
        items = [it for it in cat.defective_items([t]) if it.image_path.name in HELD_IN[t]]
        bank = b.bank(t)
        assert len(bank) == len(items) == 2
        assert [e["source"] for e in b.manifest.defect_bank[t]] == [f"test/{t}/{n}" for n in HELD_IN[t]]
        for (img_path, mask_path), item in zip(bank, items, strict=True):
            want_img, want_mask = crop_defect(*item.load(), max_side=None)  # cut from the data, not resized
            got = read_image(img_path)
            assert got.shape == want_img.shape and np.array_equal(got, want_img)
            assert np.array_equal(read_mask(mask_path, got.shape[:2]), want_mask)
            sides.append(max(got.shape[:2]))
    assert max(sides) > 2 * P  # the whole-part rule would have shrunk these to 2 x resolution


def test_held_in_names_missing_from_the_data_are_refused(data, tmp_path):
    with pytest.raises(DataError, match="held-in crack images 999.png"):
        build_defect_bank(data, TINY_TYPES, tmp_path, max_side=None, held_in={"crack": ["999.png"]})


def test_patch_info_must_fit_the_generator(nets, tmp_path):
    G, D = nets
    with pytest.raises(DefectgenError, match="layered"):
        export_bundle(G, None, D, out=tmp_path / "b", spaces=["wplus"], batches=[1], types=TINY_TYPES,
                      verify=False)  # a layered G without patch info
    Gw, Ew, Dw = tiny_nets()
    with pytest.raises(DefectgenError, match="layered"):
        export_bundle(Gw, Ew, Dw, out=tmp_path / "b", spaces=["wplus"], batches=[1], types=TINY_TYPES,
                      verify=False, patch=PatchInfo(window=16))
    assert not (tmp_path / "b").exists()
