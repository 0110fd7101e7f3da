"""Bundle writing logic (export/bundle.py) with stand-in graphs: atomicity, replacement, zip, info text.

The real graph export is covered by tests/integration/test_export_bundle.py; here `export_graph` is replaced
by a stub that writes a placeholder file with the contract's I/O, so these tests take a second.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

import defectgen.export.bundle as bundle_mod
from defectgen.errors import BundleError, DefectgenError
from defectgen.export.graphs import GraphResult
from defectgen.export.testing import TINY_TYPES, tiny_nets
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.bundle.manifest import Manifest
from defectgen.runtime.commands.info import info_text


@pytest.fixture(scope="module")
def nets():
    return tiny_nets()


def _stub_export(fail_at: int | None = None):
    calls = []

    def export_graph(kind, G, E, D, *, dims, path, opset, space=None, batch=None):
        calls.append(path.name)
        path.write_bytes(b"not really onnx " + path.name.encode())
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError(f"boom while exporting {path.name}")
        m = Manifest(resolution=dims.resolution, z_dim=dims.z_dim, w_dim=dims.w_dim, num_ws=dims.num_ws,
                     defect_types=list(TINY_TYPES), spaces=["w"], step_batches=[1], opset=opset,
                     default_lambdas={}, w_avg={}, files={})
        ins, outs = m.expected_io(kind, space, batch if kind == "step" else "B")
        return GraphResult(kind=kind, path=path, space=space, batch=batch, ops={"Conv": 3, "Mul": 1}, nodes=4,
                           bytes=path.stat().st_size, inputs=[vars(t) for t in ins], outputs=[vars(t) for t in outs])

    return export_graph, calls


def _stub_share(folder: Path, graphs: list[str]) -> dict[str, int]:
    """The stub graphs are not ONNX: the shared weights file is just written (its own test exports real graphs)."""
    (folder / "weights.bin").write_bytes(b"")
    return {"tensors": 0, "unique": 0, "bytes": 0, "saved": 0}


def _export(nets, out, monkeypatch, fail_at=None, **kw):
    stub, calls = _stub_export(fail_at)
    monkeypatch.setattr(bundle_mod, "export_graph", stub)
    monkeypatch.setattr(bundle_mod, "share_weights", _stub_share)
    G, E, D = nets
    kw = {"spaces": ["wplus", "z"], "batches": [1, 2], "types": TINY_TYPES, "verify": False, **kw}
    return bundle_mod.export_bundle(G, E, D, out=out, **kw), calls


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_writes_a_bundle_the_runtime_loads(nets, tmp_path, monkeypatch):
    out, calls = _export(nets, tmp_path / "b", monkeypatch, zip_=True)
    assert calls == ["encoder.onnx", "mapping.onnx", "synthesis_wplus.onnx", "synthesis_z.onnx",
                     "step_wplus_b1.onnx", "step_wplus_b2.onnx", "step_z_b1.onnx", "step_z_b2.onnx"]
    b = Bundle.load(out)
    m = b.manifest
    assert m.spaces == ["wplus", "z"] and m.step_batches == [1, 2] and m.defect_types == TINY_TYPES
    assert m.defaults.space == "wplus" and m.default_lambdas["prior"] == 0.001
    assert m.extra["export"]["graphs"]["encoder.onnx"]["ops"] == {"Conv": 3, "Mul": 1}
    assert m.configs["generator"]["res"] == 16
    assert b.w_avg("crack").shape == (16,)
    assert oct(out.joinpath("manifest.json").stat().st_mode & 0o777) != oct(0o600)
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        assert "manifest.json" in zf.namelist() and "step_z_b2.onnx" in zf.namelist()
    assert Bundle.load(tmp_path / "b.zip").manifest.spaces == ["wplus", "z"]
    assert _leftovers(tmp_path) == []


def test_failure_midway_leaves_nothing(nets, tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="boom"):
        _export(nets, tmp_path / "b", monkeypatch, fail_at=3)
    assert not (tmp_path / "b").exists()
    assert _leftovers(tmp_path) == []


def test_failure_keeps_previous_bundle_and_success_replaces_it(nets, tmp_path, monkeypatch):
    out, _ = _export(nets, tmp_path / "b", monkeypatch, spaces=["w"], batches=[1])
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        _export(nets, out, monkeypatch, fail_at=5)
    assert (out / "manifest.json").read_bytes() == before
    Bundle.load(out)
    _export(nets, out, monkeypatch)  # replace the old bundle
    assert Bundle.load(out).manifest.spaces == ["wplus", "z"]
    assert not (out / "synthesis_w.onnx").exists()  # nothing of the old bundle survives
    assert _leftovers(tmp_path) == []


def test_refuses_to_overwrite_a_non_bundle_folder(nets, tmp_path, monkeypatch):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "cat.png").write_bytes(b"meow")
    with pytest.raises(DefectgenError, match="not a bundle"):
        _export(nets, precious, monkeypatch)
    assert (precious / "cat.png").read_bytes() == b"meow"


@pytest.mark.parametrize(("kw", "match"), [
    ({"spaces": ["wplsu"]}, "did you mean 'wplus'"),
    ({"batches": [0]}, "batch sizes"),
    ({"opset": 13}, "opset"),
    ({"types": ["good", "crack"]}, "types"),
])
def test_bad_requests_fail_before_any_work(nets, tmp_path, monkeypatch, kw, match):
    with pytest.raises(DefectgenError, match=match):
        _export(nets, tmp_path / "b", monkeypatch, **kw)
    assert not (tmp_path / "b").exists() and _leftovers(tmp_path) == []


def test_info_text_summary_histogram_and_tamper(nets, tmp_path, monkeypatch):
    out, _ = _export(nets, tmp_path / "b", monkeypatch)
    report = {"passed": True, "bounds": {"output_rel": 1e-4, "grad_rel": 1e-3, "fd_rel": 1e-2},
              "worst": {"output_rel": 2e-7, "grad_rel": 5e-7, "fd_rel": 1e-3},
              "checks": [{"file": "step_z_b2.onnx", "inputs": "random", "batch": 2,
                          "errors": {"terms": 1e-7, "grad": 5e-7}, "fd": [1e-3], "passed": True}]}
    (out / "verify.json").write_text(json.dumps(report))
    m = Bundle.load(out).manifest
    from defectgen.runtime.bundle.manifest import FileEntry, finalize_manifest

    m.files["verify.json"] = FileEntry(role="report")
    finalize_manifest(out, m)
    text = info_text(out)
    assert "valid, checksums ok" in text and "16 px" in text and "crack" in text
    assert "op histogram" in text and "Conv 3, Mul 1" in text
    assert "verify    PASSED" in text and "fd 1.0e-03" in text
    data = bytearray((out / "step_z_b2.onnx").read_bytes())
    data[3] ^= 0xFF
    (out / "step_z_b2.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch: step_z_b2.onnx"):
        Bundle.load(out)
    assert "INVALID: checksum mismatch: step_z_b2.onnx" in info_text(out)


def test_info_text_without_a_bundle(tmp_path):
    with pytest.raises(BundleError):
        info_text(tmp_path / "nothing")


def _checkpoints(nets, tmp_path, data, enc_types=None):
    from dataclasses import asdict

    from defectgen.training.checkpoint import save_checkpoint

    G, E, D = nets
    configs = {"generator": asdict(G.cfg), "discriminator": asdict(D.cfg), "train_gan": {"data": str(data)}}
    gan = save_checkpoint(tmp_path / "gan" / "checkpoint.safetensors", kind="gan", step=1,
                          modules={"G": G, "G_ema": G, "D": D}, optimizers={}, configs=configs,
                          extra={"defect_types": TINY_TYPES}, with_rng=False)
    enc = save_checkpoint(tmp_path / "enc" / "checkpoint.safetensors", kind="encoder", step=1,
                          modules={"E": E, "D": D}, optimizers={},
                          configs={**configs, "encoder": asdict(E.cfg), "train_encoder": {"steps": 1}},
                          extra={"defect_types": enc_types or TINY_TYPES}, with_rng=False)
    return gan.parent, enc.parent


def test_cli_export_from_checkpoints(nets, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from defectgen.cli import app
    from defectgen.data.procedural import make_dataset

    data = tmp_path / "data"
    make_dataset(data, res=32, n_good=2, n_defect=1, n_test_good=1, seed=0)
    gan, enc = _checkpoints(nets, tmp_path, data)
    stub, _ = _stub_export()
    monkeypatch.setattr(bundle_mod, "export_graph", stub)
    monkeypatch.setattr(bundle_mod, "share_weights", _stub_share)
    out = tmp_path / "bundle"
    res = CliRunner().invoke(app, ["export", "--gan", str(gan), "--encoder", str(enc), "--out", str(out),
                                   "--spaces", "w", "--batch", "1,2", "--no-verify", "--zip"])
    assert res.exit_code == 0, res.output
    b = Bundle.load(out)
    assert b.manifest.step_batches == [1, 2] and b.manifest.spaces == ["w"]
    assert set(b.manifest.configs) >= {"generator", "discriminator", "encoder", "train_gan", "train_encoder"}
    assert sorted(b.manifest.defect_bank) == list(TINY_TYPES[1:])  # bank from the GAN's training data
    assert (tmp_path / "bundle.zip").is_file()


def test_cli_refuses_mismatched_encoder(nets, tmp_path):
    from typer.testing import CliRunner

    from defectgen.cli import app

    gan, enc = _checkpoints(nets, tmp_path, tmp_path / "nowhere", enc_types=["good", "a", "b", "c", "d"])
    res = CliRunner().invoke(app, ["export", "--gan", str(gan), "--encoder", str(enc), "--out",
                                   str(tmp_path / "b"), "--no-verify"])
    assert res.exit_code == 2 and "trained with types" in res.output
    assert not (tmp_path / "b").exists()


def test_failed_verification_leaves_nothing(nets, tmp_path, monkeypatch):
    from defectgen.export.verify import Bounds, Check, VerifyError, VerifyReport

    def failing(G, E, D, graphs, dims, *, real=None, bounds=None):
        check = Check(file="step_z_b1.onnx", inputs="random", batch=1, errors={"grad": 0.5}, passed=False,
                      notes=["grad rel error 5.00e-01 > 1e-03"])
        return VerifyReport(passed=False, bounds=Bounds(), checks=[check], worst={"grad_rel": 0.5}, environment={})

    monkeypatch.setattr(bundle_mod, "verify_graphs", failing)
    with pytest.raises(VerifyError, match=r"step_z_b1.onnx \(random\): grad rel error"):
        _export(nets, tmp_path / "b", monkeypatch, verify=True)
    assert not (tmp_path / "b").exists() and _leftovers(tmp_path) == []
