"""Manifest schema and bundle loading: round trips, validation, tampering, zips (toy bundle, no torch)."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from defectgen.errors import BundleError, DefectgenError
from defectgen.runtime.bundle import Bundle, default_bundle_path
from defectgen.runtime.bundle import loader as bundle_mod
from defectgen.runtime.bundle.manifest import (
    FORMAT,
    FORMAT_VERSION,
    LOSS_TERMS,
    SPACES,
    FileEntry,
    Manifest,
    TensorSpec,
    finalize_manifest,
    sha256_file,
)

if TYPE_CHECKING:
    from toy_bundle import ToyModel



@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory, toy_bundle_factory: Callable[..., Path]) -> Path:
    return toy_bundle_factory(tmp_path_factory.mktemp("toy") / "bundle")


@pytest.fixture
def toy_copy(toy_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(toy_dir, dst)
    return dst


def _manifest_dict(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def _write_manifest(d: Path, data: dict) -> None:
    (d / "manifest.json").write_text(json.dumps(data))


def test_constants() -> None:
    assert FORMAT == "defectgen-bundle" and FORMAT_VERSION == 2
    assert LOSS_TERMS == ("mask", "bg", "def", "pix", "dom", "prior")
    assert SPACES == ("wplus", "w", "z")


def test_manifest_round_trip(toy_dir: Path) -> None:
    data = _manifest_dict(toy_dir)
    m = Manifest.from_dict(data)
    assert json.loads(m.to_json()) == data
    assert Manifest.from_dict(json.loads(m.to_json())) == m
    assert m.files["step_wplus_b4.onnx"].batch == 4
    assert m.files["step_wplus_b4.onnx"].inputs[0] == TensorSpec("latent", [4, 3, 4], "float32")


@pytest.mark.parametrize("patch", [
    {"scale": 1.5, "design": "layered"},  # an older bundle: no training part size
    {"scale": 1.5, "design": "layered", "part_size_px": 70.23, "part_size_rule": "sqrt_part_area"},
])
def test_patch_section_round_trip_with_and_without_the_part_size(toy_dir: Path, patch: dict) -> None:
    data = _manifest_dict(toy_dir)
    patch = {"window": data["resolution"], **patch}
    data["patch"] = patch
    m = Manifest.from_dict(data)
    assert m.patch is not None and json.loads(m.to_json())["patch"] == patch
    assert m.patch.part_size_px == patch.get("part_size_px") and m.patch.part_size_rule == patch.get("part_size_rule")


def test_manifest_keeps_unknown_fields(toy_dir: Path) -> None:
    data = _manifest_dict(toy_dir) | {"future_field": {"x": 1}}
    assert json.loads(Manifest.from_dict(data).to_json())["future_field"] == {"x": 1}


@pytest.mark.parametrize(("field", "value", "match"), [
    ("resolution", None, "missing required field resolution"),
    ("resolution", "64", "resolution must be an int"),
    ("resolution", True, "resolution must be an int"),
    ("defect_types", ["crack", "good"], "must start with 'good'"),
    ("defect_types", "good", "defect_types must be a list"),
    ("spaces", ["wplsu"], "spaces"),
    ("step_batches", [0], "step_batches"),
    ("default_lambdas", {"mask": 1.0}, "default_lambdas must have exactly"),
    ("default_lambdas", {"mask": "x"}, r"default_lambdas\['mask'\] must be a number"),
    ("loss_terms", ["mask"], "loss_terms"),
    ("w_avg", {"good": [0.0]}, "w_avg"),
    ("files", [], "files must be an object"),
    ("format", "something-else", "not a defectgen bundle"),
    ("format_version", 3, "unsupported bundle format_version 3"),
    ("patch", {"window": 16, "design": "stacked"}, "patch.design must be 'layered' or 'full'"),
    ("patch", {"window": 16, "part_size_px": 70.0}, "part_size_px must be > 0 and come with part_size_rule"),
    ("patch", {"window": 16, "part_size_px": 0, "part_size_rule": "sqrt_part_area"}, "part_size_px must be > 0"),
    ("patch", {"window": 16, "part_size_px": "70", "part_size_rule": "x"}, "patch.part_size_px must be a number"),
    ("defaults", {"proposal_lr": "small"}, "defaults.proposal_lr must be float"),
    ("defaults", {"proposal_steps": 2.5}, "defaults.proposal_steps must be int"),
])
def test_manifest_field_validation(toy_dir: Path, field: str, value: object, match: str) -> None:
    data = _manifest_dict(toy_dir)
    if value is None:
        del data[field]
    else:
        data[field] = value
    with pytest.raises(BundleError, match=match):
        Manifest.from_dict(data)


def test_manifest_file_entry_validation(toy_dir: Path) -> None:
    data = _manifest_dict(toy_dir)
    data["files"]["step_w_b1.onnx"]["batch"] = "one"
    with pytest.raises(BundleError, match=r"files\['step_w_b1.onnx'\].batch must be an int"):
        Manifest.from_dict(data)
    data = _manifest_dict(toy_dir)
    data["files"]["../evil.onnx"] = {"role": "other", "sha256": "", "bytes": 0}
    with pytest.raises(BundleError, match="must be relative"):
        Manifest.from_dict(data)


def test_file_entry_accepts_io_dicts() -> None:
    e = FileEntry(role="encoder", inputs=[{"name": "image", "shape": ["B", 3, 8, 8], "dtype": "float32"}])
    assert e.inputs == [TensorSpec("image", ["B", 3, 8, 8])]
    with pytest.raises(BundleError, match=r"inputs\[0\] is missing required field|inputs\[0\].shape"):
        FileEntry(role="encoder", inputs=[{"name": "image"}])


def test_finalize_manifest_hashes_and_adds_bank(tmp_path: Path) -> None:
    (tmp_path / "defect_bank").mkdir()
    for name in ("encoder.onnx", "defect_bank/crack_000.png", "defect_bank/crack_000_mask.png"):
        (tmp_path / name).write_bytes(name.encode())
    m = Manifest(resolution=8, z_dim=4, w_dim=2, num_ws=3, defect_types=["good", "crack"], spaces=["w"],
                 step_batches=[1], opset=18, default_lambdas=dict.fromkeys(LOSS_TERMS, 1.0),
                 w_avg={"good": [0, 0], "crack": [1, 1]}, files={"encoder.onnx": FileEntry(role="encoder")},
                 defect_bank={"crack": [{"image": "defect_bank/crack_000.png",
                                         "mask": "defect_bank/crack_000_mask.png"}]})
    out = finalize_manifest(tmp_path, m)
    data = json.loads(out.read_text())
    assert data["files"]["encoder.onnx"]["sha256"] == sha256_file(tmp_path / "encoder.onnx")
    assert data["files"]["encoder.onnx"]["bytes"] == len(b"encoder.onnx")
    assert data["files"]["defect_bank/crack_000_mask.png"]["role"] == "bank"
    assert not list(tmp_path.glob(".manifest.json.*"))  # no temp left behind
    m.files["missing.onnx"] = FileEntry(role="other")
    with pytest.raises(BundleError, match="missing.onnx does not exist"):
        finalize_manifest(tmp_path, m)


def test_bundle_load_ok(toy_dir: Path, toy_model: type[ToyModel]) -> None:
    b = Bundle.load(toy_dir)
    m = toy_model()
    assert (b.resolution, b.z_dim, b.w_dim, b.num_ws) == (8, 4, 4, 3)
    assert b.step_batches("wplus") == [1, 4]
    assert b.step_file("z", 4) == "step_z_b4.onnx"
    assert b.path_of("encoder.onnx") == toy_dir / "encoder.onnx"
    assert b.graph_file("synthesis", "w") == "synthesis_w.onnx"
    assert b.latent_shape("wplus") == (3, 4)
    np.testing.assert_allclose(b.w_avg("crack"), m.w_avg["crack"], rtol=1e-6)
    assert b.bank("hole")[0][0] == toy_dir / "defect_bank/hole_000.png"
    assert b.bank("good") == []
    assert Bundle.load(toy_dir / "manifest.json").root == toy_dir


def test_lambda_vector_and_onehot(toy_dir: Path) -> None:
    b = Bundle.load(toy_dir)
    v = b.lambda_vector({"def": 3.0})
    assert v.dtype == np.float32 and v.shape == (6,)
    np.testing.assert_allclose(v, [1.0, 1.0, 3.0, 0.25, 0.1, 0.01])
    with pytest.raises(BundleError, match="did you mean 'prior'"):
        b.lambda_vector({"prio": 1.0})
    with pytest.raises(BundleError, match=">= 0"):
        b.lambda_vector({"bg": -1.0})
    oh = b.type_onehot(["hole", "good", "crack"])
    np.testing.assert_array_equal(oh, np.eye(3, dtype=np.float32)[[2, 0, 1]])
    with pytest.raises(BundleError, match="did you mean 'crack'"):
        b.type_onehot(["crak"])


def test_unknown_space_and_batch(toy_dir: Path) -> None:
    b = Bundle.load(toy_dir)
    with pytest.raises(BundleError, match="did you mean 'wplus'"):
        b.step_batches("wplsu")
    with pytest.raises(BundleError, match="no step graph for space 'w' with batch 8"):
        b.step_file("w", 8)


def test_tampered_file(toy_copy: Path) -> None:
    p = toy_copy / "step_w_b4.onnx"
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch: step_w_b4.onnx"):
        Bundle.load(toy_copy)
    Bundle.load(toy_copy, verify=False)  # explicitly skipped


def test_missing_file(toy_copy: Path) -> None:
    (toy_copy / "defect_bank" / "crack_000.png").unlink()
    with pytest.raises(BundleError, match="listed file defect_bank/crack_000.png is missing"):
        Bundle.load(toy_copy)


def test_wrong_format_version(toy_copy: Path) -> None:
    data = _manifest_dict(toy_copy)
    data["format_version"] = 99
    _write_manifest(toy_copy, data)
    with pytest.raises(BundleError, match="format_version 99.*reads versions 1, 2; re-export"):
        Bundle.load(toy_copy)


def test_io_shape_mismatch(toy_copy: Path) -> None:
    data = _manifest_dict(toy_copy)
    data["resolution"] = 16  # graphs are 8 px
    _write_manifest(toy_copy, data)
    with pytest.raises(BundleError, match=r"encoder.onnx: input 'image' is float32\['B', 3, 8, 8\]"):
        Bundle.load(toy_copy)


def test_step_batches_mismatch(toy_copy: Path) -> None:
    data = _manifest_dict(toy_copy)
    data["step_batches"] = [1, 4, 8]
    _write_manifest(toy_copy, data)
    with pytest.raises(BundleError, match="step_batches"):
        Bundle.load(toy_copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.load(tmp_path / "nope")
    with pytest.raises(BundleError, match="has no manifest.json"):
        Bundle.load(tmp_path)
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(BundleError, match="not a .zip"):
        Bundle.load(tmp_path / "x.zip")
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(tmp_path)
    assert issubclass(BundleError, DefectgenError)


@pytest.mark.parametrize("nested", [False, True])
def test_zip_bundle(toy_dir: Path, tmp_path: Path, nested: bool, _private_cache: Path) -> None:
    zpath = tmp_path / "toy.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(toy_dir.rglob("*")):
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(toy_dir).parts):
                zf.write(p, ("bundle/" if nested else "") + p.relative_to(toy_dir).as_posix())
    b = Bundle.load(zpath)
    assert b.source == zpath and b.root.is_relative_to(_private_cache / "zips")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.zip"]  # nothing written beside the zip
    assert b.step_batches("w") == [1, 4]
    mtime = (b.root / "manifest.json").stat().st_mtime_ns
    b2 = Bundle.load(zpath)  # extracted once, reused
    assert b2.root == b.root and (b2.root / "manifest.json").stat().st_mtime_ns == mtime
    assert not list((_private_cache / "zips").glob(".tmp-*"))


def test_zip_rejects_unsafe_paths(tmp_path: Path) -> None:
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../manifest.json", "{}")
    with pytest.raises(BundleError, match="unsafe member path"):
        Bundle.load(zpath)


def test_default_bundle_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bundle_mod, "default_bundle_path", lambda: tmp_path / "default_bundle")
    with pytest.raises(BundleError, match="default bundle is not shipped in this install"):
        Bundle.load()
    assert default_bundle_path().parts[-2:] == ("assets", "default_bundle")


def test_cache_dir(toy_copy: Path, _private_cache: Path) -> None:
    b = Bundle.load(toy_copy)
    before = sorted(p.name for p in toy_copy.iterdir())
    ort_cache = b.cache_dir("ort")
    assert ort_cache.is_dir() and ort_cache.is_relative_to(_private_cache / "bundles") and ort_cache.name == "ort"
    assert b.cache_dir("trt").parent == ort_cache.parent  # one folder per bundle, keyed by its manifest
    assert sorted(p.name for p in toy_copy.iterdir()) == before  # nothing beside the bundle


def test_format_1_bundles_still_load(toy_copy: Path) -> None:
    data = _manifest_dict(toy_copy)
    data["format_version"] = 1  # graphs with their weights inside: the same layout otherwise
    _write_manifest(toy_copy, data)
    assert Bundle.load(toy_copy).manifest.format_version == 1
