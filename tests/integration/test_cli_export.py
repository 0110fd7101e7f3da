"""Export a real bundle from tiny random nets (16 px, all three spaces) once, then prove it right.

Parity (ONNX Runtime vs torch, including the step gradient against `torch.autograd.grad`), finite differences
of the exported step graphs, graph hygiene, the runtime's loader and backend, tampering, `info`.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from defectgen.data.procedural import make_dataset
from defectgen.errors import BundleError
from defectgen.export.bundle import export_bundle
from defectgen.export.graphs import example_inputs, model_dims
from defectgen.export.objective import make_step
from defectgen.export.onnx_tools import FORBIDDEN_OPS, get_metadata
from defectgen.export.testing import TINY_TYPES, tiny_nets
from defectgen.export.torch_backend import TorchBackend
from defectgen.runtime.backends import load_backend
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.bundle.manifest import LOSS_TERMS
from defectgen.runtime.commands.info import info_text

pytestmark = pytest.mark.slow
SPACES = ["wplus", "w", "z"]
BATCH = 2


@pytest.fixture(scope="module")
def nets():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra OpenMP threads only spin on a busy CI box
    yield tiny_nets()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundle_dir(nets, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    make_dataset(data, res=32, n_good=3, n_defect=2, n_test_good=1, seed=0)
    out = root / "bundle"
    out.mkdir()  # an older bundle is already there: the export must replace it whole
    (out / "manifest.json").write_text("{}")
    (out / "stale.onnx").write_bytes(b"old")
    G, E, D = nets
    export_bundle(G, E, D, out=out, spaces=SPACES, batches=[BATCH], data_root=data, types=TINY_TYPES,
                  verify=True, run_defaults={"steps": 5, "guide_weight": 1.0, "mask_mode": "generated",
                                                  "mask_shape": "generated"})
    return out


def _sess(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _rel(got, want):
    want = np.asarray(want)
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_layout_replaces_old_bundle_and_loads(bundle_dir):
    assert not (bundle_dir / "stale.onnx").exists()
    assert not list(bundle_dir.parent.glob("bundle.tmp-*")) and not list(bundle_dir.parent.glob("bundle.old-*"))
    b = Bundle.load(bundle_dir)
    names = set(b.manifest.files)
    assert {"encoder.onnx", "mapping.onnx", "verify.json"} <= names
    assert {f"synthesis_{s}.onnx" for s in SPACES} | {f"step_{s}_b{BATCH}.onnx" for s in SPACES} <= names
    for t in TINY_TYPES[1:]:
        assert b.bank(t), f"no bank crops for {t}"
        img, msk = b.bank(t)[0]
        assert img.is_file() and msk.is_file()
    # the exporter's recommended run settings reach `defectgen run` unless an option overrides them
    from defectgen.runtime.jobs.settings import resolve_settings

    assert b.defaults.steps == 5 and b.defaults.guide_weight == 1.0 and b.defaults.mask_mode == "generated"
    s = resolve_settings(b)
    assert (s.inversion.steps, s.guide_weight, s.mask_mode, s.mask_shape) == (5, 1.0, "generated", "generated")
    s = resolve_settings(b, steps=7, guide_weight=0.25, mask_mode="target", mask_shape="procedural")
    assert (s.inversion.steps, s.guide_weight, s.mask_mode, s.mask_shape) == (7, 0.25, "target", "procedural")


@pytest.mark.parametrize(("kw", "msg"), [({"steps": 0}, "--steps must be >= 1"),
                                         ({"guide_weight": 1.5}, "--guide-weight must be within"),
                                         ({"mask_mode": "generatd"}, "did you mean 'generated'"),
                                         ({"mask_shape": "procedurl"}, "did you mean 'procedural'")])
def test_recommended_run_settings_are_checked_before_export(kw, msg):
    from defectgen.export.bundle import check_run_defaults

    assert check_run_defaults(None, None, None, None) == {}
    with pytest.raises(BundleError, match=msg):
        check_run_defaults(**{"steps": None, "guide_weight": None, "mask_mode": None, "mask_shape": None, **kw})


def test_verify_report_passed_with_real_inputs_and_fd(bundle_dir):
    report = json.loads((bundle_dir / "verify.json").read_text())
    assert report["passed"], report
    labels = {(c["file"], c["inputs"]) for c in report["checks"]}
    assert (f"step_z_b{BATCH}.onnx", "real") in labels and ("encoder.onnx", "random") in labels
    assert all(c["fd"] for c in report["checks"] if c["file"].startswith("step_"))
    assert report["worst"]["grad_rel"] <= 1e-3 and report["worst"]["fd_rel"] <= 1e-2


@pytest.mark.parametrize("space", SPACES)
def test_step_graph_matches_autograd(bundle_dir, nets, space):
    G, E, D = nets
    x = example_inputs("step", model_dims(G), space=space, batch=BATCH, seed=99)
    x["lambdas"] = torch.tensor([1.0, 0.5, 2.0, 1.5, 0.3, 0.01])
    terms_o, grad_o = _sess(bundle_dir / f"step_{space}_b{BATCH}.onnx").run(
        None, {k: v.numpy() for k, v in x.items()})
    terms_t, grad_t = make_step(G, E, D, space)(*x.values())
    assert terms_o.shape == (BATCH, len(LOSS_TERMS))
    assert _rel(terms_o, terms_t) <= 1e-4
    assert _rel(grad_o, grad_t) <= 1e-3


@pytest.mark.parametrize("space", SPACES)
def test_step_graph_gradient_matches_finite_differences(bundle_dir, nets, space, assert_step_gradient):
    x = {k: v.numpy() for k, v in example_inputs("step", model_dims(nets[0]), space=space, batch=BATCH,
                                                 seed=7).items()}
    sess = _sess(bundle_dir / f"step_{space}_b{BATCH}.onnx")
    assert_step_gradient(sess, x)


def test_forward_graphs_match_torch_at_a_new_batch_size(bundle_dir, nets):
    dims = model_dims(nets[0])
    tb = TorchBackend(*nets)
    x = {k: v.numpy() for k, v in example_inputs("encoder", dims, batch=5, seed=4).items()}
    assert _rel(_sess(bundle_dir / "encoder.onnx").run(None, x)[0], tb.encode(x["image"], x["mask"])) <= 1e-4
    x = {k: v.numpy() for k, v in example_inputs("mapping", dims, batch=5, seed=4).items()}
    assert _rel(_sess(bundle_dir / "mapping.onnx").run(None, x)[0], tb.map(x["z"], x["type_onehot"])) <= 1e-4
    for space in SPACES:
        x = {k: v.numpy() for k, v in example_inputs("synthesis", dims, space=space, batch=5, seed=4).items()}
        got = _sess(bundle_dir / f"synthesis_{space}.onnx").run(None, x)
        want = tb.synthesize(space, x["latent"], x.get("type_onehot"))
        assert max(_rel(g, w) for g, w in zip(got, want, strict=True)) <= 1e-4


def test_graph_hygiene(bundle_dir):
    for path in sorted(bundle_dir.glob("*.onnx")):
        model = onnx.load(str(path))
        ops = {n.op_type for n in model.graph.node}
        assert not ops & FORBIDDEN_OPS, (path.name, ops & FORBIDDEN_OPS)
        assert not [n for n in model.graph.node if n.op_type == "Constant"]
        assert {n.domain for n in model.graph.node} <= {""}
        meta = get_metadata(model)
        assert meta["format"] == "defectgen-bundle" and meta["resolution"] == "16"
        if path.name.startswith("step_"):
            assert meta["role"] == "step" and meta["batch"] == str(BATCH)
            assert json.loads(meta["loss_terms"]) == list(LOSS_TERMS)
        onnx.checker.check_model(model, full_check=True)


def test_runtime_backend_matches_torch_backend(bundle_dir, nets):
    """The runtime's ORT backend (with batch padding: 3 samples on b2 graphs) agrees with the torch backend."""
    b = Bundle.load(bundle_dir)
    tb = TorchBackend(*nets)
    x = {k: v.numpy() for k, v in example_inputs("step", model_dims(nets[0]), space="z", batch=3, seed=5).items()}
    with load_backend(b, "ort-cpu") as ob:
        got = ob.step("z", x["latent"], x["good"], x["mask"], x["stitched"], b.lambda_vector(), x["type_onehot"])
        wp = ob.encode(x["good"], x["mask"])
    want = tb.step("z", x["latent"], x["good"], x["mask"], x["stitched"], b.lambda_vector(), x["type_onehot"])
    assert _rel(got[0], want[0]) <= 1e-4 and _rel(got[1], want[1]) <= 1e-3
    assert _rel(wp, tb.encode(x["good"], x["mask"])) <= 1e-4


def test_tampering_is_detected_and_info_reports(bundle_dir, tmp_path):
    text = info_text(bundle_dir)
    assert "valid, checksums ok" in text and "op histogram" in text and "Conv" in text
    assert "verify    PASSED" in text
    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    step = copy / f"step_w_b{BATCH}.onnx"
    data = bytearray(step.read_bytes())
    data[len(data) // 2] ^= 0x01
    step.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"checksum mismatch: step_w_b{BATCH}.onnx"):
        Bundle.load(copy)


@pytest.mark.parametrize("space", SPACES)
def test_whole_inversion_run_ort_matches_torch(bundle_dir, nets, space):
    """The one optimisation loop, driven by ORT and by the torch reference backend, ends at the same latent."""
    from defectgen.runtime.jobs.invert import InversionBatch, InversionConfig, invert

    b = Bundle.load(bundle_dir)
    x = {k: v.numpy() for k, v in example_inputs("step", model_dims(nets[0]), space="wplus", batch=3, seed=7).items()}
    batch = InversionBatch(good=x["good"], mask=x["mask"], stitched=x["stitched"], types=["crack", "hole", "crack"])
    cfg = InversionConfig(space=space, steps=6, lr=0.05, init="encoder", seed=3, early_stop_patience=0)
    tb = TorchBackend(*nets, step_batches=[BATCH])
    want = invert(tb, b, batch, config=cfg)
    with load_backend(b, "ort-cpu") as ob:
        got = invert(ob, b, batch, config=cfg)
    assert not got.failed.any() and not want.failed.any()
    assert _rel(got.latent, want.latent) <= 1e-3
    assert _rel(got.terms_history, want.terms_history) <= 1e-3
    assert _rel(got.image, want.image) <= 1e-3


def test_graphs_share_one_weights_file_and_still_match_torch(nets, tmp_path):
    """Format 2: the step graphs of two batch sizes and the synthesis graph point into one weights file, each
    tensor stored once; parity with torch (verify=True) still holds on the files as shipped."""
    from defectgen.export.shared_weights import WEIGHTS_NAME

    G, E, D = nets
    out = export_bundle(G, E, D, out=tmp_path / "b", spaces=["w"], batches=[1, 2], types=TINY_TYPES, verify=True)
    b = Bundle.load(out)
    assert b.manifest.format_version == 2 and b.manifest.files[WEIGHTS_NAME].role == "weights"
    refs: dict[str, set[tuple[int, int]]] = {}
    for name in ("step_w_b1.onnx", "step_w_b2.onnx", "synthesis_w.onnx"):
        model = onnx.load(str(out / name), load_external_data=False)
        ext = [{e.key: e.value for e in t.external_data} for t in model.graph.initializer
               if t.data_location == onnx.TensorProto.EXTERNAL]
        assert ext and all(e["location"] == WEIGHTS_NAME for e in ext)
        refs[name] = {(int(e["offset"]), int(e["length"])) for e in ext}
        assert (out / name).stat().st_size < 200_000  # the graph only; weights live in the shared file
    b1, b2 = refs["step_w_b1.onnx"], refs["step_w_b2.onnx"]
    assert len(b1 & b2) >= 0.9 * len(b1)  # the same bytes, once (a batch-shaped constant may differ)
    assert refs["synthesis_w.onnx"] & b1  # G's weights shared by synthesis and step
    referenced = sum(length for r in refs.values() for _, length in r)
    assert (out / WEIGHTS_NAME).stat().st_size < 0.7 * referenced
    assert json.loads((out / "verify.json").read_text())["passed"] is True
